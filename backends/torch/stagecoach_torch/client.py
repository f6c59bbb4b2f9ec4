"""A small client of the compute protocol, for tests and measurements
(the worker's own client is Go's compute/remote)."""

import grpc
import torch

from stagecoach_torch import compute_pb2 as pb
from stagecoach_torch import compute_pb2_grpc as pb_grpc
from stagecoach_torch.safetensors import tensor_from_bytes
from stagecoach_torch.server import MAX_CHUNK, _chunks

_DT = {pb.DTYPE_FLOAT32: torch.float32, pb.DTYPE_INT32: torch.int32}


class CallError(Exception):
    """The backend answered with Response.error."""


class Client:
    def __init__(self, socket_path, timeout=600):
        self.channel = grpc.insecure_channel(
            "unix:" + socket_path,
            options=[("grpc.max_receive_message_length", 2 * MAX_CHUNK + (1 << 16))],
        )
        self.stub = pb_grpc.ComputeStub(self.channel)
        self.timeout = timeout

    def close(self):
        self.channel.close()

    def raw(self, frames):
        """Send frames as they are; return the response and the chunks."""
        out = list(self.stub.Call(iter(frames), timeout=self.timeout))
        return out[0].response, [f.chunk for f in out[1:]]

    def call(self, op, stage=0, mb=0, inputs=(), **fields):
        """Run one operation; inputs are (name, tensor) pairs. Returns the
        Response and its outputs as [(name, tensor)]."""
        req = pb.Request(version=pb.VERSION_1, op=op, stage=stage, microbatch=mb, **fields)
        for name, t in inputs:
            req.inputs.add(name=name, shape=list(t.shape), dtype=pb.DTYPE_INT32 if t.dtype == torch.int32 else pb.DTYPE_FLOAT32)
        frames = [pb.Frame(request=req)] + list(_chunks(t for _, t in inputs))
        resp, chunks = self.raw(frames)
        if resp.error:
            raise CallError(resp.error)
        data = bytearray(b"".join(chunks))
        outs, off = [], 0
        for m in resp.outputs:
            n = 4
            for d in m.shape:
                n *= d
            outs.append((m.name, tensor_from_bytes(data, off, n, _DT[m.dtype], list(m.shape)).clone()))
            off += n
        if off != len(data):
            raise CallError("outputs declare %d bytes, the stream carried %d" % (off, len(data)))
        return resp, outs


class RemoteStage:
    """One loaded stage, driven operation by operation."""

    def __init__(self, client, model, optim=None, lo=0, hi=0, embed=False, head=False):
        import json

        self.c = client
        resp, _ = client.call(
            pb.OP_LOAD,
            load=pb.LoadArgs(model_json=json.dumps(model).encode(), optim_json=json.dumps(optim or {}).encode(), lo=lo, hi=hi, embed=embed, head=head),
        )
        self.handle = resp.stage
        self.desc = resp.description

    def _call(self, op, mb=0, inputs=(), **kw):
        return self.c.call(op, stage=self.handle, mb=mb, inputs=inputs, **kw)

    def zero_grad(self):
        self._call(pb.OP_ZERO_GRAD)

    def forward(self, mb, x):
        return self._call(pb.OP_FORWARD, mb, [("x", x)])[1][0][1]

    def loss(self, mb, hidden, targets):
        resp, outs = self._call(pb.OP_LOSS, mb, [("hidden", hidden), ("targets", targets.to(torch.int32))])
        return resp.loss, outs[0][1]

    def backward(self, mb, grad):
        outs = self._call(pb.OP_BACKWARD, mb, [("grad", grad)])[1]
        return outs[0][1] if outs else None

    def keep_contributions(self, on):
        self._call(pb.OP_KEEP_CONTRIBUTIONS, keep=on)

    def contribution(self, mb):
        return self._call(pb.OP_CONTRIBUTION, mb)[1][0][1]

    def grads(self):
        return self._call(pb.OP_GRADS)[1][0][1]

    def set_grads(self, g):
        self._call(pb.OP_SET_GRADS, inputs=[("grads", g)])

    def scale_grads(self, f):
        self._call(pb.OP_SCALE_GRADS, scale=f)

    def sum_squares(self):
        return list(self._call(pb.OP_SUM_SQUARES)[0].sum_squares)

    def step(self, step, lr, clip=1.0):
        self._call(pb.OP_STEP, step=pb.StepArgs(step=step, lr=lr, clip=clip))

    def state(self):
        return self._call(pb.OP_STATE)[1]

    def set_state(self, tensors):
        self._call(pb.OP_SET_STATE, inputs=tensors)

    def unload(self):
        self._call(pb.OP_UNLOAD)
