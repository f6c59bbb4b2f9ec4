"""A second model for the Stagecoach PyTorch backend, unlike the
transformer: a causal MLP-mixer. Each block mixes tokens (every position
takes a learned, causally masked combination of the positions up to it,
per channel group) and then channels (an MLP), each behind a LayerNorm and
inside the residual. It uses stock nn modules (Embedding, LayerNorm,
Linear), whose parameter names become the global names (tok.weight,
blocks.<l>.tokens, blocks.<l>.mlp.0.weight, ..., out.weight), and the
backend's default initialisation (no init_param).

    python3 -m stagecoach_torch --model examples/torch/mixer.py

Config: vocab (256), layers, dim, ctx, hidden (2·dim), groups (4: the
token-mixing matrices, one per group of dim/groups channels).
"""

import torch
import torch.nn.functional as F
from torch import nn


class Embed(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)

    def forward(self, ids):
        return self.tok(ids)


class MixerBlock(nn.Module):
    def __init__(self, dim, ctx, hidden, groups):
        super().__init__()
        self.groups = groups
        self.norm1 = nn.LayerNorm(dim)
        # tokens[g, i, j]: how much position i takes from position j <= i
        self.tokens = nn.Parameter(torch.empty(groups, ctx, ctx))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False))

    def forward(self, x):
        b, t, d = x.shape
        g = self.groups
        w = self.tokens[:, :t, :t].tril()  # causal: nothing from later positions
        h = self.norm1(x).reshape(b, t, g, d // g).permute(0, 2, 1, 3)  # [b, g, t, d/g]
        mixed = (w @ h).permute(0, 2, 1, 3).reshape(b, t, d)
        x = x + mixed
        return x + self.mlp(self.norm2(x))


class Head(nn.Module):
    def __init__(self, dim, vocab):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)

    def forward(self, x):
        return self.out(self.norm(x))


class Mixer:
    def __init__(self, vocab, layers, dim, ctx, hidden, groups):
        self.vocab, self.ctx, self.width = vocab, ctx, dim
        self.layers, self.hidden, self.groups = layers, hidden, groups
        self.embed = lambda: Embed(vocab, dim)
        self.blocks = [lambda: MixerBlock(dim, ctx, hidden, groups) for _ in range(layers)]
        self.head = lambda: Head(dim, vocab)

    def num_params(self):
        d, h = self.width, self.hidden
        block = self.groups * self.ctx * self.ctx + 4 * d + 2 * d * h
        return self.vocab * d + self.layers * block + 2 * d + d * self.vocab

    def loss(self, logits, targets):
        # per-token losses in float32, their mean in float64 (as the Go
        # model): the reported loss then carries no float32 summation error
        per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        return per.double().mean()


def build(config):
    c = {"vocab": 256, "layers": 4, "dim": 128, "ctx": 64, "hidden": 0, "groups": 4}
    c.update({k: v for k, v in config.items() if k in c and (v or k not in ("vocab", "hidden", "groups"))})
    if not c["hidden"]:
        c["hidden"] = 2 * c["dim"]
    for k, cap in (("vocab", 1 << 24), ("layers", 1 << 14), ("dim", 1 << 16), ("ctx", 1 << 14), ("hidden", 1 << 20), ("groups", 1 << 16)):
        v = c[k]
        if isinstance(v, bool) or not isinstance(v, int) or not (0 <= v <= cap) or (v == 0 and k != "layers"):
            raise ValueError("mixer: %s must be an integer up to %d, got %r" % (k, cap, v))
    if c["dim"] % c["groups"]:
        raise ValueError("mixer: dim %d is not divisible by groups %d" % (c["dim"], c["groups"]))
    return Mixer(c["vocab"], c["layers"], c["dim"], c["ctx"], c["hidden"], c["groups"])
