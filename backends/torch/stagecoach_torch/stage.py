"""One loaded shard of a user's PyTorch model, driven through a training
step as compute.Stage (compute/compute.go) and the model's exactness
contract (model/README.md) require.

A model file defines build(config) returning an object with .embed,
.blocks, .head and .loss (see docs/backends.md, "PyTorch backend"). Parts
may be modules or functions of no arguments returning modules; a stage
builds only its own parts, and constructs (without initialising) the other
parts only to count their parameters for the canonical Index.
"""

import hashlib
import importlib.util
import math
import sys

import torch
from torch import nn

# CHUNK bounds the elements one float64 temporary of the optimizer and of
# SumSquares holds (8 MiB), whatever the tensor's size.
CHUNK = 1 << 20


class StageError(Exception):
    """Bad input or a model that breaks the contract: reported to the
    worker in Response.error, never fatal to the backend."""


def load_model_file(path):
    """Import the user's model file and return its build function."""
    spec = importlib.util.spec_from_file_location("stagecoach_user_model", path)
    if spec is None or spec.loader is None:
        raise StageError("model file %s: cannot be imported (not a .py file?)" % path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["stagecoach_user_model"] = mod
    spec.loader.exec_module(mod)
    build = getattr(mod, "build", None)
    if not callable(build):
        raise StageError("model file %s defines no build(config) function" % path)
    return build


def init_seed(seed, name):
    """The generator seed of tensor `name` in a model seeded `seed`: a
    stable hash of both, so a tensor's initial value does not depend on
    which stage builds it."""
    h = hashlib.sha256(("%d\x00%s" % (seed, name)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def default_init(name, p, gen, std):
    """Tensors of two or more dimensions from N(0, std); vectors keep the
    module's own value when it is a constant (norm gains 1, biases 0),
    otherwise drawn like matrices."""
    if p.dim() < 2 and p.numel() > 0 and bool((p == p.reshape(-1)[0]).all()):
        return
    p.normal_(0.0, std, generator=gen)


def _module(v, what):
    if isinstance(v, nn.Module):
        return v
    if callable(v):
        m = v()
        if isinstance(m, nn.Module):
            return m
        raise StageError("model: %s factory returned %s, not an nn.Module" % (what, type(m).__name__))
    raise StageError("model: %s is %s, neither an nn.Module nor a function returning one" % (what, type(v).__name__))


def _params(m):
    """Named parameters in the module's own order, each once."""
    return [(n, p) for n, p in m.named_parameters()]


class Param:
    __slots__ = ("name", "index", "p", "decay", "grad", "m", "v")

    def __init__(self, name, index, p):
        self.name, self.index, self.p = name, index, p
        self.decay = p.dim() >= 2
        self.grad = torch.zeros_like(p)
        self.m = torch.zeros_like(p)
        self.v = torch.zeros_like(p)


class Stage:
    """Blocks [lo, hi) of the model, with the embedding and/or the head."""

    def __init__(self, build, config, optim, lo, hi, embed, head, max_params):
        if not isinstance(config, dict):
            raise StageError("model config must be a JSON object, got %s" % type(config).__name__)
        self.config = config
        self.optim = _optim_config(optim)
        seed = config.get("seed", 0)
        if not isinstance(seed, int) or seed < 0:
            raise StageError("model config: seed must be a non-negative integer, got %r" % (seed,))
        spec = build(config)
        for attr in ("embed", "blocks", "head", "loss"):
            if not hasattr(spec, attr):
                raise StageError("model: build(config) returned an object without .%s" % attr)
        # A model that can count its parameters is refused before anything
        # is allocated; the others when the count passes the limit.
        declared = getattr(spec, "num_params", None)
        if callable(declared):
            declared = declared()
        if isinstance(declared, int) and declared > max_params:
            raise StageError("model: %d parameters, more than the %d allowed (the backend's --max-params)" % (declared, max_params))
        blocks = spec.blocks
        layers = len(blocks)
        if not (0 <= lo <= hi <= layers):
            raise StageError("shard blocks [%d,%d) outside the model's 0..%d" % (lo, hi, layers))
        self.spec, self.lo, self.hi, self.has_embed, self.has_head = spec, lo, hi, embed, head
        width = getattr(spec, "width", None)
        if width is None:
            width = config.get("dim")
        if not isinstance(width, int) or width < 1:
            raise StageError("model: no width (set .width on the built object or \"dim\" in the config), got %r" % (width,))
        self.width = width
        self.vocab = getattr(spec, "vocab", config.get("vocab"))
        self.ctx = getattr(spec, "ctx", config.get("ctx"))
        std = float(config.get("init_std", 0.02) or 0.02)
        init = getattr(spec, "init_param", None)

        # Build this stage's parts; count the others' parameters for Index.
        total = 0
        index = 0
        self.params = []
        body, headp = [], []

        def count(m):
            nonlocal total
            n = sum(p.numel() for _, p in _params(m))
            total += n
            if total > max_params:
                raise StageError("model: more than %d parameters (the backend's --max-params)" % max_params)
            return len(_params(m))

        def take(m, prefix, into):
            nonlocal index
            for n, p in _params(m):
                if p.dtype != torch.float32:
                    raise StageError("model: parameter %s%s is %s, the backend trains float32" % (prefix, n, p.dtype))
                name = prefix + n
                with torch.no_grad():
                    gen = torch.Generator().manual_seed(init_seed(seed, name))
                    if init is not None:
                        init(name, p, gen)
                    else:
                        default_init(name, p, gen, std)
                prm = Param(name, index, p)
                index += 1
                self.params.append(prm)
                into.append(prm)

        em = _module(spec.embed, "embed")
        if embed:
            count(em)
            self.embed = em
            take(em, "", body)
        else:
            index += count(em)
            self.embed = None
        del em
        self.blocks = []
        for l in range(layers):
            bm = _module(blocks[l], "blocks[%d]" % l)
            if lo <= l < hi:
                count(bm)
                self.blocks.append(bm)
                take(bm, "blocks.%d." % l, body)
            else:
                index += count(bm)
            del bm
        if head:
            self.head = _module(spec.head, "head")
            count(self.head)
            take(self.head, "", headp)
        else:
            self.head = None
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise StageError("model: parameter names repeat within the stage: %s" % names)
        self.body, self.headp = body, headp
        for m in [self.embed, self.head] + self.blocks:
            if m is not None:
                m.train()
        self.elems = sum(p.p.numel() for p in self.params)
        self.saved = {}  # microbatch -> (input leaf or None, output)
        self.keep = False
        self.kept = {}  # microbatch -> {param position: contribution}
        self.pos = {id(p): i for i, p in enumerate(self.params)}

    # --- description

    def describe(self):
        return [(p.name, p.index, list(p.p.shape), p.decay) for p in self.params]

    # --- one training step

    def zero_grad(self):
        for p in self.params:
            p.grad.zero_()
        self.saved.clear()
        self.kept.clear()

    def forward(self, mb, x):
        if mb in self.saved:
            raise StageError("forward of microbatch %d: it already has a forward waiting for its backward" % mb)
        if self.has_embed:
            b, t = _shape(x, 2, "forward input (token ids)")
            ids = x.to(torch.int64)
            if not bool((ids.to(torch.float32) == x).all()) or bool((ids < 0).any()):
                raise StageError("forward input: token ids must be non-negative integers")
            if isinstance(self.vocab, int) and ids.numel() and int(ids.max()) >= self.vocab:
                raise StageError("forward input: token id %d outside the vocabulary of %d" % (int(ids.max()), self.vocab))
            self._check_ctx(t, "forward input")
            leaf = None
            with torch.enable_grad():
                h = self.embed(ids)
                h = self._run_blocks(h)
        else:
            b, t, w = _shape(x, 3, "forward input (hidden state)")
            if w != self.width:
                raise StageError("forward input: shape %s, want [B, T, %d]" % (list(x.shape), self.width))
            self._check_ctx(t, "forward input")
            leaf = x.detach().requires_grad_(True)
            with torch.enable_grad():
                h = self._run_blocks(leaf)
        if not isinstance(h, torch.Tensor) or list(h.shape) != [b, t, self.width] or h.dtype != torch.float32:
            raise StageError("model: stage output is %s, want float32 [%d, %d, %d]" % (_desc(h), b, t, self.width))
        self.saved[mb] = (leaf, h)
        return h.detach().clone()

    def _run_blocks(self, h):
        for m in self.blocks:
            h = m(h)
        return h

    def _check_ctx(self, t, what):
        if isinstance(self.ctx, int) and t > self.ctx:
            raise StageError("%s: %d positions, the model's context is %d" % (what, t, self.ctx))

    def loss(self, mb, hidden, targets):
        if not self.has_head:
            raise StageError("loss on a stage without the head")
        b, t, w = _shape(hidden, 3, "loss input (hidden state)")
        if w != self.width:
            raise StageError("loss input: shape %s, want [B, T, %d]" % (list(hidden.shape), self.width))
        if list(targets.shape) != [b, t]:
            raise StageError("loss targets: shape %s, want [%d, %d]" % (list(targets.shape), b, t))
        if targets.numel() and int(targets.min()) < 0:
            raise StageError("loss targets: negative target %d" % int(targets.min()))
        leaf = hidden.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.head(leaf)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or list(logits.shape[:2]) != [b, t]:
                raise StageError("model: head output is %s, want [%d, %d, V]" % (_desc(logits), b, t))
            if targets.numel() and int(targets.max()) >= logits.shape[2]:
                raise StageError("loss targets: target %d outside the %d logits" % (int(targets.max()), logits.shape[2]))
            loss = self.spec.loss(logits, targets.to(torch.int64))
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise StageError("model: loss returned %s, want a scalar tensor" % _desc(loss))
            loss = loss.reshape(())
            inputs = [p.p for p in self.headp] + [leaf]
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        self._contribute(mb, self.headp, grads[:-1])
        g = grads[-1]
        if g is None:
            g = torch.zeros_like(hidden)
        return float(loss.detach().double()), g.detach().contiguous()

    def backward(self, mb, grad):
        got = self.saved.get(mb)
        if got is None:
            raise StageError("backward of microbatch %d: no forward of it since the last zero_grad" % mb)
        leaf, out = got
        if list(grad.shape) != list(out.shape):
            # refused without harm: the forward stays for a good backward
            raise StageError("backward of microbatch %d: gradient shape %s, the output's is %s" % (mb, list(grad.shape), list(out.shape)))
        del self.saved[mb]
        inputs = [p.p for p in self.body]
        if leaf is not None:
            inputs.append(leaf)
        if out is leaf:  # no blocks: the stage is the identity
            return grad.clone()
        with torch.enable_grad():
            grads = torch.autograd.grad(out, inputs, grad_outputs=grad, allow_unused=True) if inputs else []
        if leaf is None:
            self._contribute(mb, self.body, grads)
            return None
        self._contribute(mb, self.body, grads[:-1])
        g = grads[-1]
        return torch.zeros_like(grad) if g is None else g.detach().contiguous()

    def _contribute(self, mb, params, grads):
        """Add one call's parameter-gradient contribution to the gradient
        with one float32 addition per element, or keep it apart."""
        if self.keep:
            kept = self.kept.setdefault(mb, {})
            for p, g in zip(params, grads):
                kept[self.pos[id(p)]] = torch.zeros_like(p.p) if g is None else g.detach().clone()
            return
        for p, g in zip(params, grads):
            if g is not None:
                p.grad.add_(g)

    def keep_contributions(self, on):
        self.keep = bool(on)
        self.kept.clear()

    def contribution(self, mb):
        kept = self.kept.get(mb)
        if not self.keep or kept is None:
            raise StageError("no gradient contribution of microbatch %d kept" % mb)
        return torch.cat([kept[i].reshape(-1) if i in kept else torch.zeros(p.p.numel()) for i, p in enumerate(self.params)])

    def grads(self):
        if not self.params:
            return torch.zeros(0)
        return torch.cat([p.grad.reshape(-1) for p in self.params])

    def set_grads(self, flat):
        if flat.dim() != 1 or flat.numel() != self.elems:
            raise StageError("set_grads: %s gradient elements, the stage has %d" % (list(flat.shape), self.elems))
        o = 0
        for p in self.params:
            n = p.p.numel()
            p.grad.copy_(flat[o : o + n].reshape(p.p.shape))
            o += n

    def scale_grads(self, f):
        f = torch.tensor(f, dtype=torch.float32)  # multiply in float32
        for p in self.params:
            p.grad.mul_(f)

    def sum_squares(self):
        # float64, in element order: cumsum adds one element at a time; a
        # chunk's first element carries the sum so far.
        return [_seq_sum_squares(p.grad.reshape(-1)) for p in self.params]

    def step(self, step, lr, clip):
        if step < 1:
            raise StageError("step %d: steps are 1-based" % step)
        if not (math.isfinite(lr) and lr >= 0):
            raise StageError("step: learning rate %r must be finite and non-negative" % lr)
        if not (math.isfinite(clip) and clip >= 0):  # 0 when the norm is infinite
            raise StageError("step: clip factor %r must be finite and non-negative" % clip)
        if clip != 1:
            self.scale_grads(clip)
        c = self.optim
        b1, b2, eps = c["beta1"], c["beta2"], c["eps"]
        bc1 = 1 - b1**step
        bc2 = 1 - b2**step
        with torch.no_grad():
            for p in self.params:
                wd = c["weight_decay"] if p.decay else 0.0
                w, g, m, v = (t.reshape(-1) for t in (p.p, p.grad, p.m, p.v))
                n = w.numel()
                # moments first (float64, stored float32), as model/optim.go
                for a in range(0, n, CHUNK):
                    gd = g[a : a + CHUNK].double()
                    m[a : a + CHUNK] = (b1 * m[a : a + CHUNK].double() + (1 - b1) * gd).float()
                    v[a : a + CHUNK] = (b2 * v[a : a + CHUNK].double() + (1 - b2) * gd * gd).float()

                def direction(a):
                    mh = m[a : a + CHUNK].double() / bc1
                    vh = v[a : a + CHUNK].double() / bc2
                    return mh / (vh.sqrt() + eps) + wd * w[a : a + CHUNK].double()

                scale = lr
                if c["kind"] == "lamb":
                    wn = rn = 0.0
                    for a in range(0, n, CHUNK):
                        wn = _seq_sum_squares(w[a : a + CHUNK], wn)
                        rn = _seq_sum_squares(direction(a), rn)
                    if wn > 0 and rn > 0:
                        scale *= math.sqrt(wn) / math.sqrt(rn)
                for a in range(0, n, CHUNK):
                    w[a : a + CHUNK] = (w[a : a + CHUNK].double() - scale * direction(a)).float()

    # --- state

    def state(self):
        out = []
        for p in self.params:
            out += [(p.name, p.p.detach()), ("optim.m." + p.name, p.m), ("optim.v." + p.name, p.v)]
        return out

    def state_metas(self):
        out = []
        for p in self.params:
            s = list(p.p.shape)
            out += [(p.name, s), ("optim.m." + p.name, s), ("optim.v." + p.name, s)]
        return out

    def set_state(self, tensors):
        """tensors: [(name, tensor)] as state() returns them; checked
        against state_metas() before anything changes."""
        want = self.state_metas()
        if len(tensors) != len(want):
            raise StageError("set_state: %d tensors, the stage has %d (weights, optim.m, optim.v per parameter)" % (len(tensors), len(want)))
        for (n, t), (wn, ws) in zip(tensors, want):
            if n != wn or list(t.shape) != ws:
                raise StageError("set_state: tensor %r %s where the stage has %r %s" % (n, list(t.shape), wn, ws))
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.p.copy_(tensors[3 * i][1])
                p.m.copy_(tensors[3 * i + 1][1])
                p.v.copy_(tensors[3 * i + 2][1])


def _seq_sum_squares(x, acc=0.0):
    x = x.reshape(-1)
    for a in range(0, x.numel(), CHUNK):
        sq = x[a : a + CHUNK].double().square()
        sq[0] += acc
        acc = float(sq.cumsum(0)[-1])
    return acc


def _shape(x, rank, what):
    if x.dim() != rank or any(d < 1 for d in x.shape):
        raise StageError("%s: shape %s, want %d non-empty dimensions" % (what, list(x.shape), rank))
    return list(x.shape)


def _desc(x):
    if isinstance(x, torch.Tensor):
        return "%s %s" % (x.dtype, list(x.shape))
    return type(x).__name__


_OPTIM_DEFAULTS = {"kind": "adamw", "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1}


def _optim_config(o):
    """The optimizer fields Step uses, with model.OptimConfig's defaults
    for zero or missing fields (the learning rate comes with each Step)."""
    if o is None:
        o = {}
    if not isinstance(o, dict):
        raise StageError("optimizer config must be a JSON object, got %s" % type(o).__name__)
    c = dict(_OPTIM_DEFAULTS)
    for k in c:
        if o.get(k):
            c[k] = o[k]
    if c["kind"] not in ("adamw", "lamb"):
        raise StageError("optimizer config: unknown kind %r (want adamw or lamb)" % (c["kind"],))
    for k in ("beta1", "beta2", "eps", "weight_decay"):
        if isinstance(c[k], bool) or not isinstance(c[k], (int, float)) or not math.isfinite(c[k]):
            raise StageError("optimizer config: %s must be a number, got %r" % (k, c[k]))
        c[k] = float(c[k])
    if not (0 <= c["beta1"] < 1 and 0 <= c["beta2"] < 1):
        raise StageError("optimizer config: betas must be in [0,1), got %r %r" % (c["beta1"], c["beta2"]))
    return c
