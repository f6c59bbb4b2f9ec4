"""The Go reference model (model/README.md) as a PyTorch model file for the
Stagecoach PyTorch backend: token embedding + learned positions, pre-norm
blocks (RMSNorm, causal multi-head attention, RMSNorm, tanh-GELU MLP, each
residual), final RMSNorm, head, mean cross-entropy; no biases.

Tensor names and shapes are the Go model's (tok_emb [V,D], pos_emb [C,D],
blocks.<l>.{norm1 [D], wqkv [D,3D], wo [D,D], norm2 [D], w1 [D,H],
w2 [H,D]}, norm_f [D], head [D,V]; matrices multiply from the right,
x @ W), so checkpoints load across the two backends by name. The initial
values differ (Go draws from PCG, this from torch's generator), with the
same distributions: N(0, init_std), wo and w2 scaled by 1/sqrt(2·layers),
norm gains 1.

    python3 -m stagecoach_torch --model examples/torch/gpt.py
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

RMS_EPS = 1e-5


def rmsnorm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * g


def _param(*shape):
    # Uninitialised: the backend fills every parameter from (seed, name).
    return nn.Parameter(torch.empty(*shape))


class Embed(nn.Module):
    def __init__(self, vocab, dim, ctx):
        super().__init__()
        self.tok_emb = _param(vocab, dim)
        self.pos_emb = _param(ctx, dim)

    def forward(self, ids):
        return F.embedding(ids, self.tok_emb) + self.pos_emb[: ids.shape[1]]


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.heads = heads
        self.norm1 = _param(dim)
        self.wqkv = _param(dim, 3 * dim)
        self.wo = _param(dim, dim)
        self.norm2 = _param(dim)
        self.w1 = _param(dim, hidden)
        self.w2 = _param(hidden, dim)

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = (rmsnorm(x, self.norm1) @ self.wqkv).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, hd).transpose(1, 2) for z in (q, k, v))
        s = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(hd))
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        p = s.masked_fill(causal, float("-inf")).softmax(-1)
        a = (p @ v).transpose(1, 2).reshape(b, t, d)
        x = x + a @ self.wo
        u = rmsnorm(x, self.norm2) @ self.w1
        return x + F.gelu(u, approximate="tanh") @ self.w2


class Head(nn.Module):
    def __init__(self, dim, vocab):
        super().__init__()
        self.norm_f = _param(dim)
        self.head = _param(dim, vocab)

    def forward(self, x):
        return rmsnorm(x, self.norm_f) @ self.head


class GPT:
    """The parts of the model; each is built only when a stage needs it."""

    def __init__(self, vocab, layers, dim, heads, ctx, hidden, init_std):
        self.vocab, self.ctx, self.width = vocab, ctx, dim
        self.layers, self.hidden, self.init_std = layers, hidden, init_std
        self.embed = functools.partial(Embed, vocab, dim, ctx)
        self.blocks = [functools.partial(Block, dim, heads, hidden) for _ in range(layers)]
        self.head = functools.partial(Head, dim, vocab)

    def num_params(self):
        d, h, v = self.width, self.hidden, self.vocab
        return v * d + self.ctx * d + self.layers * (2 * d + 4 * d * d + 2 * d * h) + d + d * v

    def loss(self, logits, targets):
        # per-token losses in float32, their mean in float64 (as the Go
        # model): the reported loss then carries no float32 summation error
        per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        return per.double().mean()

    def init_param(self, name, p, gen):
        last = name.rsplit(".", 1)[-1]
        if last.startswith("norm"):
            p.fill_(1.0)
            return
        std = self.init_std
        if last in ("wo", "w2"):
            std /= math.sqrt(2 * max(self.layers, 1))  # residual outputs, as GPT-2
        p.normal_(0.0, std, generator=gen)


# Caps on single fields (the Go model's, model/limits.go).
_CAPS = {"vocab": 1 << 24, "layers": 1 << 14, "dim": 1 << 16, "heads": 1 << 16, "ctx": 1 << 20, "hidden": 1 << 20}


def build(config):
    c = {"vocab": 256, "layers": 4, "dim": 128, "heads": 4, "ctx": 64, "hidden": 0, "init_std": 0.02}
    # Missing fields take the Go defaults; as in Go, zero vocab, hidden and
    # init_std mean the default too.
    c.update({k: v for k, v in config.items() if v or k not in ("vocab", "hidden", "init_std")})
    if not c["hidden"]:
        c["hidden"] = 4 * c["dim"]
    for k, cap in _CAPS.items():
        v = c[k]
        if isinstance(v, bool) or not isinstance(v, int) or not (0 <= v <= cap) or (v == 0 and k != "layers"):
            raise ValueError("gpt: %s must be an integer in %d..%d, got %r" % (k, 0 if k == "layers" else 1, cap, v))
    if c["dim"] % c["heads"]:
        raise ValueError("gpt: dim %d is not divisible by heads %d" % (c["dim"], c["heads"]))
    std = float(c["init_std"])
    if not (std > 0 and math.isfinite(std)):
        raise ValueError("gpt: init_std must be positive and finite, got %r" % c["init_std"])
    return GPT(c["vocab"], c["layers"], c["dim"], c["heads"], c["ctx"], c["hidden"], std)
