"""The PyTorch backend over the compute protocol: gradients, state,
refusals, and split-versus-whole exactness."""

import math
import unittest

import torch

from harness import GPT, MIXER, TINY, Backend, batch, bits
from stagecoach_torch import compute_pb2 as pb
from stagecoach_torch.client import CallError, RemoteStage
from stagecoach_torch.server import Limits
from stagecoach_torch.stage import Stage, load_model_file


class ProtocolTest(unittest.TestCase):
    def setUp(self):
        self.be = Backend(GPT, Limits(max_tensor_bytes=1 << 20))
        self.c = self.be.client

    def tearDown(self):
        self.be.close()

    def test_hello(self):
        resp, _ = self.c.call(pb.OP_HELLO)
        self.assertEqual(resp.hello.version, pb.VERSION_1)
        self.assertEqual(resp.hello.backend, "torch")
        self.assertIn("torch", resp.hello.version_info)

    def test_compute_time_is_reported_within_the_call(self):
        import time

        st = RemoteStage(self.c, TINY, lo=0, hi=2)
        x = torch.randn(2, 8, 16)
        began = time.perf_counter_ns()
        resp, _ = st._call(pb.OP_FORWARD, 0, [("x", x)])
        took = time.perf_counter_ns() - began
        self.assertGreater(resp.compute_nanos, 0)
        self.assertLessEqual(resp.compute_nanos, took)

    def test_wrong_version_is_refused_naming_both(self):
        req = pb.Request(version=2, op=pb.OP_HELLO)
        resp, _ = self.c.raw([pb.Frame(request=req)])
        self.assertIn("version 2", resp.error)
        self.assertIn("version 1", resp.error)

    def test_describe(self):
        st = RemoteStage(self.c, TINY, lo=2, hi=4, head=True)
        names = [p.name for p in st.desc.params]
        self.assertEqual(names[:6], ["blocks.2.norm1", "blocks.2.wqkv", "blocks.2.wo", "blocks.2.norm2", "blocks.2.w1", "blocks.2.w2"])
        self.assertEqual(names[-2:], ["norm_f", "head"])
        # canonical index: tok_emb, pos_emb, 6 per block, then norm_f, head
        self.assertEqual([p.index for p in st.desc.params], list(range(14, 28)))
        self.assertEqual(list(st.desc.params[1].shape), [16, 48])
        self.assertEqual(list(st.desc.params[-1].shape), [16, 256])
        self.assertEqual([p.decay for p in st.desc.params[:3]], [False, True, True])
        self.assertEqual(st.desc.width, 16)
        self.assertFalse(st.desc.split_backward)

    def test_wrong_shapes_are_refused(self):
        st = RemoteStage(self.c, TINY, lo=2, hi=4, head=True)
        with self.assertRaisesRegex(CallError, r"shape \[2, 8, 12\], want \[B, T, 16\]"):
            st.forward(0, torch.zeros(2, 8, 12))
        with self.assertRaisesRegex(CallError, "9 positions, the model's context is 8"):
            st.forward(0, torch.zeros(2, 9, 16))
        y = st.forward(0, torch.randn(2, 8, 16))
        with self.assertRaisesRegex(CallError, r"gradient shape \[2, 7, 16\], the output's is \[2, 8, 16\]"):
            st.backward(0, torch.zeros(2, 7, 16))
        with self.assertRaisesRegex(CallError, "no forward of it"):
            st.backward(5, torch.zeros_like(y))
        with self.assertRaisesRegex(CallError, "already has a forward waiting"):
            st.forward(0, torch.randn(2, 8, 16))
        self.assertEqual(list(st.backward(0, torch.ones_like(y)).shape), [2, 8, 16])  # the refusals left mb 0 intact
        y = st.forward(0, torch.randn(2, 8, 16))
        with self.assertRaisesRegex(CallError, r"targets: shape \[2, 7\], want \[2, 8\]"):
            st.loss(0, y, torch.zeros(2, 7, dtype=torch.int32))
        with self.assertRaisesRegex(CallError, "target 256 outside the 256 logits"):
            st.loss(0, y, torch.full((2, 8), 256, dtype=torch.int32))
        with self.assertRaisesRegex(CallError, "gradient elements"):
            st.set_grads(torch.zeros(5))
        emb = RemoteStage(self.c, TINY, lo=0, hi=1, embed=True)
        with self.assertRaisesRegex(CallError, "non-negative integers"):
            emb.forward(0, torch.full((1, 4), 1.5))
        with self.assertRaisesRegex(CallError, "outside the vocabulary"):
            emb.forward(0, torch.full((1, 4), 300.0))
        with self.assertRaisesRegex(CallError, "without the head"):
            emb.loss(0, torch.zeros(1, 4, 16), torch.zeros(1, 4, dtype=torch.int32))
        with self.assertRaisesRegex(CallError, "outside the model's 0..4"):
            RemoteStage(self.c, TINY, lo=3, hi=5)
        with self.assertRaisesRegex(CallError, "no stage 999"):
            self.c.call(pb.OP_ZERO_GRAD, stage=999)

    def test_num_params_is_the_parameter_count_and_bounds_a_load(self):
        for f in (GPT, MIXER):
            build = load_model_file(f)
            st = Stage(build, TINY, {}, 0, 4, True, True, 1 << 28)
            self.assertEqual(build(TINY).num_params(), sum(p.p.numel() for p in st.params), f)
        huge = dict(TINY, layers=16000, dim=4096, heads=4)
        with self.assertRaisesRegex(CallError, r"parameters, more than the 268435456 allowed"):
            RemoteStage(self.c, huge, lo=0, hi=1)

    def test_oversized_tensor_is_refused_before_its_bytes(self):
        st = RemoteStage(self.c, TINY, lo=0, hi=1)
        req = pb.Request(version=pb.VERSION_1, op=pb.OP_FORWARD, stage=st.handle)
        req.inputs.add(name="x", shape=[1 << 20, 8, 16], dtype=pb.DTYPE_FLOAT32)
        # no chunks follow: the refusal must not wait for them
        resp, chunks = self.c.raw([pb.Frame(request=req)])
        self.assertIn("more than the 1048576-byte tensor limit", resp.error)
        self.assertEqual(chunks, [])

    def test_short_and_long_inputs_are_refused(self):
        st = RemoteStage(self.c, TINY, lo=0, hi=1)
        req = pb.Request(version=pb.VERSION_1, op=pb.OP_FORWARD, stage=st.handle)
        req.inputs.add(name="x", shape=[1, 2, 16], dtype=pb.DTYPE_FLOAT32)
        resp, _ = self.c.raw([pb.Frame(request=req), pb.Frame(chunk=bytes(100))])
        self.assertIn("stream ended after 100 of the 128 input bytes", resp.error)
        resp, _ = self.c.raw([pb.Frame(request=req), pb.Frame(chunk=bytes(100)), pb.Frame(chunk=bytes(100))])
        self.assertIn("more input bytes than the 128", resp.error)

    def test_outputs_are_chunked_within_one_mib(self):
        big = dict(TINY, dim=256, heads=2, vocab=2048, layers=1)
        st = RemoteStage(self.c, big, lo=0, hi=1, embed=True, head=True)
        resp, chunks = self.c.raw([pb.Frame(request=pb.Request(version=pb.VERSION_1, op=pb.OP_STATE, stage=st.handle))])
        self.assertEqual(resp.error, "")
        self.assertGreater(len(chunks), 1)
        self.assertTrue(all(len(c) <= 1 << 20 for c in chunks))
        want = sum(3 * 4 * math.prod(m.shape) for m in st.desc.params)
        self.assertEqual(sum(len(c) for c in chunks), want)
        self.assertEqual(len(resp.outputs), 3 * len(st.desc.params))
        self.assertEqual(resp.outputs[1].name, "optim.m.tok_emb")

    def test_state_round_trip_is_exact(self):
        a = RemoteStage(self.c, TINY, {"kind": "adamw"}, lo=0, hi=2, embed=True, head=True)
        x, y = batch(1, 2, 8)
        a.zero_grad()
        h = a.forward(0, x)
        _, g = a.loss(0, h, y)
        a.backward(0, g)
        a.step(1, 1e-2)
        sa = a.state()
        self.assertTrue(any(n.startswith("optim.v.") and t.abs().sum() > 0 for n, t in sa))
        b = RemoteStage(self.c, dict(TINY, seed=99), lo=0, hi=2, embed=True, head=True)
        self.assertNotEqual(bits(b.state()[0][1]).tolist(), bits(sa[0][1]).tolist())
        b.set_state(sa)
        sb = b.state()
        self.assertEqual([n for n, _ in sa], [n for n, _ in sb])
        for (n, ta), (_, tb) in zip(sa, sb):
            self.assertTrue(torch.equal(bits(ta), bits(tb)), n)
        wrong = [(n, t) for n, t in sa]
        wrong[6] = ("blocks.0.norm1", torch.zeros(3))
        with self.assertRaisesRegex(CallError, r"'blocks.0.norm1' \[3\] where the stage has 'blocks.0.norm1' \[16\]"):
            b.set_state(wrong)

    def test_init_depends_only_on_seed_and_name(self):
        whole = dict(RemoteStage(self.c, TINY, lo=0, hi=4, embed=True, head=True).state())
        part = dict(RemoteStage(self.c, TINY, lo=2, hi=3).state())
        for n in ("blocks.2.wqkv", "blocks.2.w2", "blocks.2.norm1"):
            self.assertTrue(torch.equal(bits(whole[n]), bits(part[n])), n)
        self.assertTrue(bool((whole["blocks.2.norm1"] == 1).all()))
        other = dict(RemoteStage(self.c, dict(TINY, seed=8), lo=2, hi=3).state())
        self.assertFalse(torch.equal(whole["blocks.2.wqkv"], other["blocks.2.wqkv"]))

    def test_contributions_kept_apart_sum_to_the_gradient(self):
        a = RemoteStage(self.c, TINY, lo=0, hi=4, embed=True, head=True)
        k = RemoteStage(self.c, TINY, lo=0, hi=4, embed=True, head=True)
        k.keep_contributions(True)
        for st in (a, k):
            st.zero_grad()
            for mb in range(3):
                x, y = batch(10 + mb, 2, 8)
                _, g = st.loss(mb, st.forward(mb, x), y)
                self.assertIsNone(st.backward(mb, g))
        self.assertEqual(k.grads().abs().sum().item(), 0.0)
        total = torch.zeros_like(a.grads())
        for mb in range(3):
            total += k.contribution(mb)
        self.assertTrue(torch.equal(bits(total), bits(a.grads())))
        with self.assertRaisesRegex(CallError, "no gradient contribution of microbatch 3"):
            k.contribution(3)

    def test_sum_squares_and_scale(self):
        st = RemoteStage(self.c, TINY, lo=0, hi=1, embed=True)
        g = torch.randn(sum(math.prod(p.shape) for p in st.desc.params))
        st.set_grads(g)
        st.scale_grads(0.5)
        got = st.grads()
        self.assertTrue(torch.equal(bits(got), bits(g * torch.tensor(0.5))))
        o = 0
        for p, ss in zip(st.desc.params, st.sum_squares()):
            n = math.prod(p.shape)
            want = 0.0
            for v in got[o : o + n].tolist():  # float64, in element order
                want += v * v
            self.assertEqual(ss, want, p.name)
            o += n


def reference_loss(build, cfg, weights, x, y):
    """The model's loss in float64, with the given weights."""
    spec = build(cfg)
    part = lambda v: v if isinstance(v, torch.nn.Module) else v()  # noqa: E731
    mods = [part(spec.embed)] + [part(b) for b in spec.blocks] + [part(spec.head)]
    named = list(mods[0].named_parameters())
    for l, m in enumerate(mods[1:-1]):
        named += [("blocks.%d.%s" % (l, n), p) for n, p in m.named_parameters()]
    named += list(mods[-1].named_parameters())
    params = {}
    with torch.no_grad():
        for n, p in named:
            p.data = weights[n].double().clone()
            params[n] = p
    for m in mods:
        m.double()

    def loss():
        h = mods[0](x.long())
        for m in mods[1:-1]:
            h = m(h)
        return spec.loss(mods[-1](h), y.long())

    return loss, params, mods


class GradientTest(unittest.TestCase):
    """The backend's gradients against central differences of the model's
    loss in float64, and each part's autograd against gradcheck."""

    def check(self, model_file, cfg):
        be = Backend(model_file)
        try:
            st = RemoteStage(be.client, cfg, lo=0, hi=cfg["layers"], embed=True, head=True)
            x, y = batch(3, 2, cfg["ctx"])
            st.zero_grad()
            loss, g = st.loss(0, st.forward(0, x), y)
            st.backward(0, g)
            grads = st.grads()
            weights = {n: t for n, t in st.state() if not n.startswith("optim.")}
        finally:
            be.close()
        lossf, params, mods = reference_loss(load_model_file(model_file), cfg, weights, x, y)
        with torch.no_grad():
            self.assertAlmostEqual(float(lossf()), loss, delta=1e-5)
        o = 0
        gen = torch.Generator().manual_seed(0)
        for p in st.desc.params:
            n = math.prod(p.shape)
            w = params[p.name].data.view(-1)
            for i in torch.randint(0, n, (4,), generator=gen).tolist():
                h = 1e-5
                with torch.no_grad():
                    w0 = w[i].item()
                    w[i] = w0 + h
                    up = float(lossf())
                    w[i] = w0 - h
                    down = float(lossf())
                    w[i] = w0
                num = (up - down) / (2 * h)
                got = grads[o + i].item()
                self.assertLessEqual(abs(got - num), 1e-5 + 1e-3 * abs(num), "%s[%d]: backend %g, differences %g" % (p.name, i, got, num))
            o += n
        # each part's own autograd, in float64
        hx = torch.randn(1, 4, cfg["dim"], dtype=torch.float64, requires_grad=True)
        for m in mods[1:-1] + [mods[-1]]:
            self.assertTrue(torch.autograd.gradcheck(lambda z: m(z), (hx,)))
        ps = tuple(mods[1].parameters())
        self.assertTrue(torch.autograd.gradcheck(lambda *w: _with_params(mods[1], w, hx.detach()), ps))

    def test_gpt(self):
        self.check(GPT, dict(TINY, layers=2))

    def test_mixer(self):
        self.check(MIXER, dict(TINY, layers=2))


def _with_params(m, ws, x):
    saved = [p.data for p in m.parameters()]
    try:
        for p, w in zip(m.parameters(), ws):
            p.data = w
        return m(x)
    finally:
        for p, s in zip(m.parameters(), saved):
            p.data = s


class SplitTest(unittest.TestCase):
    """A model split into stages [embed + blocks 0..1], [blocks 2..3 +
    head], driven microbatch by microbatch over the protocol, gives the
    same losses and weights, bit for bit, as the whole model in one stage,
    over three AdamW steps (and LAMB, and with the head on stage 0)."""

    def train(self, c, model, optim, layout, steps=3, mbs=3):
        if layout == "whole":
            stages = [RemoteStage(c, model, optim, lo=0, hi=4, embed=True, head=True)]
            route = [0]
        elif layout == "head-last":
            stages = [RemoteStage(c, model, optim, lo=0, hi=2, embed=True), RemoteStage(c, model, optim, lo=2, hi=4, head=True)]
            route = [0, 1]
        else:  # head-first: stage 0 holds the embedding, blocks 0..1 and the head
            stages = [RemoteStage(c, model, optim, lo=0, hi=2, embed=True, head=True), RemoteStage(c, model, optim, lo=2, hi=4)]
            route = [0, 1]
        head = stages[0] if layout == "head-first" else stages[-1]
        losses = []
        for step in range(1, steps + 1):
            for s in stages:
                s.zero_grad()
            data = [batch(100 * step + mb, 2, model["ctx"]) for mb in range(mbs)]
            hidden = []
            for mb, (x, _) in enumerate(data):  # all forwards, then all backwards (GPipe)
                h = x
                for i in route:
                    h = stages[i].forward(mb, h)
                hidden.append(h)
            for mb, (_, y) in enumerate(data):
                loss, g = head.loss(mb, hidden[mb], y)
                losses.append(loss)
                for i in reversed(route):
                    g = stages[i].backward(mb, g)
                self.assertIsNone(g)
            for s in stages:
                s.scale_grads(1 / mbs)
            sq = {}
            for s in stages:
                for p, v in zip(s.desc.params, s.sum_squares()):
                    sq[p.index] = v
            norm = math.sqrt(sum(sq[i] for i in sorted(sq)))
            clip = min(1.0, 0.5 / norm) if norm > 0 else 1.0  # a small cap, so clipping happens
            for s in stages:
                s.step(step, 3e-3 * step, clip)
        state = {}
        for s in stages:
            state.update(dict(s.state()))
        return losses, state

    def check(self, model_file, optim, layouts=("head-last", "head-first")):
        be = Backend(model_file)
        try:
            model = dict(TINY)
            ref_losses, ref = self.train(be.client, model, optim, "whole")
            self.assertEqual(sum(n.startswith("optim.m.") for n in ref), len(ref) // 3)
            for layout in layouts:
                losses, got = self.train(be.client, model, optim, layout)
                self.assertEqual(losses, ref_losses, layout)
                self.assertEqual(sorted(got), sorted(ref), layout)
                for n in ref:
                    self.assertTrue(torch.equal(bits(got[n]), bits(ref[n])), "%s: %s differs" % (layout, n))
            self.assertLess(ref_losses[-1], ref_losses[0])
        finally:
            be.close()

    def test_gpt_adamw(self):
        self.check(GPT, {"kind": "adamw"})

    def test_gpt_lamb(self):
        self.check(GPT, {"kind": "lamb"}, layouts=("head-last",))

    def test_mixer_adamw(self):
        self.check(MIXER, {"kind": "adamw"})


if __name__ == "__main__":
    unittest.main()
