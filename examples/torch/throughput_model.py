# The reference model of stagecoach/model in PyTorch, for a throughput
# comparison only: byte embedding + learned positions, pre-norm blocks
# (RMSNorm, causal multi-head attention, RMSNorm, tanh-GELU MLP), final
# RMSNorm, head, cross-entropy; no biases; AdamW. Prints tokens/s of the
# timed steps (after one warm-up step) on random tokens; exits 3 when torch
# cannot be imported. Run by `go run ./bench/gemm` (see docs/benchmarks.md).
# argv: layers dim heads ctx hidden microbatches microbatch_size steps threads
import sys, time
try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit(3)

L, D, H, T, HID, M, B, STEPS, THREADS = map(int, sys.argv[1:10])
torch.set_num_threads(THREADS)
torch.manual_seed(1)


class RMSNorm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.g = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.g


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = RMSNorm(D), RMSNorm(D)
        self.qkv = torch.nn.Linear(D, 3 * D, bias=False)
        self.wo = torch.nn.Linear(D, D, bias=False)
        self.w1 = torch.nn.Linear(D, HID, bias=False)
        self.w2 = torch.nn.Linear(HID, D, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.n1(x)).split(D, dim=-1)
        q, k, v = (z.view(b, t, H, D // H).transpose(1, 2) for z in (q, k, v))
        s = (q @ k.transpose(-1, -2)) / (D // H) ** 0.5
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        a = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, D)
        x = x + self.wo(a)
        return x + self.w2(F.gelu(self.w1(self.n2(x)), approximate="tanh"))


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Embedding(256, D)
        self.pos = torch.nn.Parameter(torch.randn(T, D) * 0.02)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(L))
        self.nf = RMSNorm(D)
        self.head = torch.nn.Linear(D, 256, bias=False)

    def forward(self, ids):
        x = self.tok(ids) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.nf(x))


model = Model()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)


def step():
    opt.zero_grad()
    for _ in range(M):
        w = torch.randint(0, 256, (B, T + 1))
        logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), w[:, 1:].reshape(-1))
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


step()
t0 = time.perf_counter()
for _ in range(STEPS):
    step()
print(STEPS * M * B * T / (time.perf_counter() - t0))
