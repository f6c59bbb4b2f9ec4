"""Shared test harness: a backend served in-process on a temporary Unix
socket, driven by the protocol client."""

import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

from stagecoach_torch.client import Client  # noqa: E402
from stagecoach_torch.server import serve  # noqa: E402
from stagecoach_torch.stage import load_model_file  # noqa: E402

GPT = os.path.join(ROOT, "examples", "torch", "gpt.py")
MIXER = os.path.join(ROOT, "examples", "torch", "mixer.py")

TINY = {"layers": 4, "dim": 16, "heads": 2, "ctx": 8, "seed": 7}


class Backend:
    """A server for one model file on a fresh socket, and a client of it."""

    def __init__(self, model_file, limits=None):
        self.dir = tempfile.mkdtemp(prefix="sc-torch-")
        self.socket = os.path.join(self.dir, "compute.sock")
        self.server = serve(load_model_file(model_file), self.socket, limits)
        self.client = Client(self.socket)

    def close(self):
        self.client.close()
        self.server.stop(None).wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def batch(seed, b, t, vocab=256):
    """Token ids (float32, as the embedding stage takes them) and targets."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, vocab, (b, t + 1), generator=g)
    return w[:, :-1].to(torch.float32), w[:, 1:].to(torch.int32)


def bits(t):
    """The tensor's float32 values as int32 bit patterns, for exact equality."""
    return t.detach().contiguous().view(torch.int32)
