"""Throughput of one stage over the compute protocol:

    python3 -m stagecoach_torch.bench --model examples/torch/gpt.py --threads 1

starts `python3 -m stagecoach_torch` as a child on a temporary socket,
loads the whole model as one stage (default: the Go model's default
config, 4 layers, dim 128, 4 heads, ctx 64) and times Forward + Loss +
Backward of microbatches of --batch sequences; prints tokens/s. With
--in-process it also times the same stage called directly, without the
protocol, to show what the hop costs.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(prog="python3 -m stagecoach_torch.bench")
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", default='{"layers": 4, "dim": 128, "heads": 4, "ctx": 64, "seed": 1}')
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="sequences per microbatch")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--in-process", action="store_true")
    a = ap.parse_args()
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(a.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the backend
    import torch

    from stagecoach_torch.client import Client, RemoteStage
    from stagecoach_torch.stage import Stage, load_model_file

    torch.set_num_threads(a.threads)
    cfg = json.loads(a.config)
    layers, ctx = cfg["layers"], cfg["ctx"]
    d = tempfile.mkdtemp(prefix="sc-bench-")
    sock = os.path.join(d, "c.sock")
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=pkg)
    p = subprocess.Popen([sys.executable, "-m", "stagecoach_torch", "--model", a.model, "--socket", sock, "--threads", str(a.threads)], env=env)
    try:
        while not os.path.exists(sock):
            if p.poll() is not None:
                sys.exit("backend exited %d" % p.returncode)
            time.sleep(0.05)
        c = Client(sock)
        st = RemoteStage(c, cfg, lo=0, hi=layers, embed=True, head=True)
        g = torch.Generator().manual_seed(1)

        def run(stage):
            x = torch.randint(0, 256, (a.batch, ctx + 1), generator=g)
            stage.zero_grad()
            _, gh = stage.loss(0, stage.forward(0, x[:, :-1].float()), x[:, 1:].int())
            stage.backward(0, gh)

        tokens = a.iters * a.batch * ctx
        results = {}
        targets = [("protocol", st)]
        if a.in_process:
            targets.append(("in-process", Stage(load_model_file(a.model), cfg, {}, 0, layers, True, True, 1 << 28)))
        for name, stage in targets:
            for _ in range(3):
                run(stage)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(a.iters):
                if name == "in-process":
                    with torch.no_grad():
                        run(stage)
                else:
                    run(stage)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # CPU seconds (all threads) say what the work costs on a loaded
            # machine; only the in-process figure is this process's work
            results[name] = (tokens / wall, tokens / cpu if name == "in-process" else None)
        c.close()
        load = os.getloadavg()[0]
        for name, (v, per_cpu) in results.items():
            extra = ", %.0f tokens per CPU-second" % per_cpu if per_cpu else ""
            print("%s: %.0f tokens/s%s (threads %d, batch %d x %d, %d iterations, torch %s, load average %.1f)" % (name, v, extra, a.threads, a.batch, ctx, a.iters, torch.__version__, load))
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
