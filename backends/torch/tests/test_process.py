"""The backend as the worker runs it: `python3 -m stagecoach_torch` as a
child process, its socket from STAGECOACH_COMPUTE_SOCKET."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from harness import GPT, HERE, TINY, batch
from stagecoach_torch import compute_pb2 as pb
from stagecoach_torch.client import Client, RemoteStage


class ProcessTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="sc-torch-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.sock = os.path.join(self.dir, "c.sock")

    def start(self, *args, env=None):
        e = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
        e.update(env or {})
        p = subprocess.Popen([sys.executable, "-m", "stagecoach_torch", "--model", GPT] + list(args), env=e, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        return p

    def wait_socket(self, p):
        for _ in range(600):
            if os.path.exists(self.sock):
                return
            if p.poll() is not None:
                self.fail("backend exited %d: %s" % (p.returncode, p.stderr.read()))
            time.sleep(0.05)
        self.fail("backend did not create its socket")

    def test_serves_on_the_socket_from_the_environment_and_stops_on_sigterm(self):
        p = self.start("--threads", "2", env={"STAGECOACH_COMPUTE_SOCKET": self.sock})
        self.wait_socket(p)
        c = Client(self.sock)
        try:
            resp, _ = c.call(pb.OP_HELLO)
            self.assertEqual(resp.hello.backend, "torch")
            self.assertIn("2 threads", resp.hello.version_info)
            st = RemoteStage(c, TINY, lo=0, hi=4, embed=True, head=True)
            x, y = batch(1, 2, 8)
            loss, _ = st.loss(0, st.forward(0, x), y)
            self.assertAlmostEqual(loss, 5.545, delta=0.2)  # about ln 256
        finally:
            c.close()
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=30), 0)
        self.assertFalse(os.path.exists(self.sock))

    def test_refuses_to_start_without_a_socket_or_model(self):
        e = {k: v for k, v in os.environ.items() if k != "STAGECOACH_COMPUTE_SOCKET"}
        e["PYTHONPATH"] = os.path.dirname(HERE)
        r = subprocess.run([sys.executable, "-m", "stagecoach_torch", "--model", GPT], env=e, capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("STAGECOACH_COMPUTE_SOCKET", r.stderr)
        bad = os.path.join(self.dir, "bad.py")
        with open(bad, "w") as f:
            f.write("x = 1\n")
        r = subprocess.run([sys.executable, "-m", "stagecoach_torch", "--model", bad, "--socket", self.sock], env=e, capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("defines no build(config)", r.stderr)


if __name__ == "__main__":
    unittest.main()
