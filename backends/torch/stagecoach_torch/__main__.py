"""python3 -m stagecoach_torch --model FILE.py [--socket PATH] [--threads N]

Serves the compute protocol on a Unix socket (--socket, or the
STAGECOACH_COMPUTE_SOCKET variable the worker sets) until SIGTERM or
SIGINT.
"""

import argparse
import os
import signal
import sys
import threading


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m stagecoach_torch", description="Stagecoach PyTorch compute backend")
    ap.add_argument("--model", required=True, help="model file defining build(config)")
    ap.add_argument("--socket", default=os.environ.get("STAGECOACH_COMPUTE_SOCKET", ""), help="Unix socket path (default $STAGECOACH_COMPUTE_SOCKET)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (and OMP/OpenBLAS/MKL threads)")
    ap.add_argument("--max-tensor-bytes", type=int, default=1 << 30, help="largest input tensor accepted")
    ap.add_argument("--max-params", type=int, default=1 << 28, help="largest model (parameters) a load may build")
    a = ap.parse_args(argv)
    if not a.socket:
        ap.error("no socket: pass --socket or set STAGECOACH_COMPUTE_SOCKET")
    if a.threads < 1:
        ap.error("--threads must be at least 1, got %d" % a.threads)
    # Before torch is imported: its BLAS and OpenMP pools read these once.
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(a.threads)
    # Idle OpenMP threads otherwise spin between operations, taking the
    # cores from the worker and the other stages on the machine (measured:
    # a 2-thread stage beside an idle backend ran 15x slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if sys.byteorder != "little":
        sys.exit("stagecoach_torch: the compute protocol is little-endian; this machine is not")

    import torch

    from stagecoach_torch.server import Limits, serve
    from stagecoach_torch.stage import StageError, load_model_file

    torch.set_num_threads(a.threads)
    try:
        build = load_model_file(a.model)
    except StageError as e:
        sys.exit("stagecoach_torch: %s" % e)
    except Exception as e:  # the file itself fails to import
        sys.exit("stagecoach_torch: model file %s: %s: %s" % (a.model, type(e).__name__, e))
    server = serve(build, a.socket, Limits(max_tensor_bytes=a.max_tensor_bytes, max_params=a.max_params))
    done = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: done.set())
    parent = os.getppid()

    def orphaned():
        # A backend is its worker's child: when the worker dies without
        # stopping it, stop too rather than hold the socket and memory.
        while not done.wait(1.0):
            if os.getppid() != parent:
                done.set()

    threading.Thread(target=orphaned, daemon=True).start()
    print("stagecoach_torch: serving %s on unix:%s (torch %s, %d threads)" % (a.model, a.socket, torch.__version__, a.threads), file=sys.stderr, flush=True)
    done.wait()
    server.stop(grace=2).wait()
    try:
        os.unlink(a.socket)
    except OSError:
        pass


if __name__ == "__main__":
    main()
