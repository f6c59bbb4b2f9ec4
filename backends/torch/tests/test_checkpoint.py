"""Safetensors files and loading checkpoints into torch models."""

import os
import shutil
import struct
import tempfile
import unittest

import torch

from harness import GPT, TINY, bits
from stagecoach_torch import SafetensorsError, load_checkpoint, read_safetensors, write_safetensors
from stagecoach_torch.stage import Stage, load_model_file


def built(cfg):
    spec = load_model_file(GPT)(cfg)

    class M:
        pass

    m = M()
    m.embed, m.blocks, m.head = spec.embed(), [b() for b in spec.blocks], spec.head()
    return m


class CheckpointTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="sc-ckpt-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_round_trip_and_metadata(self):
        p = os.path.join(self.dir, "a.safetensors")
        t = {"w": torch.randn(3, 4), "b": torch.randn(5), "empty": torch.zeros(0, 2), "i": torch.arange(6, dtype=torch.int32)}
        write_safetensors(p, t, {"step": "3"})
        got, meta = read_safetensors(p)
        self.assertEqual(meta, {"step": "3"})
        self.assertEqual(list(got), ["w", "b", "empty", "i"])
        for n in ("w", "b"):
            self.assertTrue(torch.equal(bits(got[n]), bits(t[n])))
        self.assertEqual(got["i"].tolist(), list(range(6)))
        self.assertEqual(list(got["empty"].shape), [0, 2])
        with open(p, "rb") as f:
            (hl,) = struct.unpack("<Q", f.read(8))
        self.assertEqual(hl % 8, 0)

    def test_malformed_files_are_refused(self):
        p = os.path.join(self.dir, "bad.safetensors")

        def hdr(j):
            return struct.pack("<Q", len(j)) + j

        cases = [
            (b"\x01\x00", "shorter than the 8-byte header"),
            (struct.pack("<Q", 1 << 40), "exceeds"),
            (struct.pack("<Q", 100) + b"{}", "truncated"),
            (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
            (hdr(b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'), "outside the 0 data bytes"),
            (hdr(b'{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}') + bytes(16), "needs 12 bytes"),
            (hdr(b'{"w":{"dtype":"Q99","shape":[4],"data_offsets":[0,16]}}') + bytes(16), "not supported"),
        ]
        for data, msg in cases:
            with open(p, "wb") as f:
                f.write(data)
            with self.assertRaisesRegex(SafetensorsError, msg):
                read_safetensors(p)

    def test_stage_state_loads_into_the_model_by_global_name(self):
        # a checkpoint directory as the worker writes one: a file per stage
        build = load_model_file(GPT)
        parts = [Stage(build, TINY, {}, 0, 2, True, False, 1 << 28), Stage(build, TINY, {}, 2, 4, False, True, 1 << 28)]
        for i, st in enumerate(parts):
            write_safetensors(os.path.join(self.dir, "shard-%d.safetensors" % i), st.state())
        m = built(TINY)
        names = load_checkpoint(m, self.dir)
        self.assertEqual(len(names), 2 + 6 * 4 + 2)
        self.assertTrue(torch.equal(m.blocks[3].w1, dict(parts[1].state())["blocks.3.w1"]))
        self.assertTrue(torch.equal(m.embed.tok_emb, dict(parts[0].state())["tok_emb"]))
        os.remove(os.path.join(self.dir, "shard-1.safetensors"))
        with self.assertRaisesRegex(KeyError, "no tensor 'blocks.2.norm1'"):
            load_checkpoint(built(TINY), self.dir)
        self.assertEqual(len(load_checkpoint(built(TINY), self.dir, strict=False)), 2 + 6 * 2)
        with self.assertRaisesRegex(ValueError, r"'tok_emb' is \[256, 16\], the model's is \[256, 32\]"):
            load_checkpoint(built(dict(TINY, dim=32)), self.dir, strict=False)

    def test_plain_module_by_parameter_names(self):
        m = torch.nn.Linear(3, 2, bias=False)
        p = os.path.join(self.dir, "m.safetensors")
        w = torch.randn(2, 3)
        write_safetensors(p, {"weight": w})
        self.assertEqual(load_checkpoint(m, p), ["weight"])
        self.assertTrue(torch.equal(m.weight.detach(), w))


if __name__ == "__main__":
    unittest.main()
