"""The compute protocol's server (proto/compute/compute.proto): one Call
stream per operation. The client sends a Frame with the Request, then the
bytes of its input tensors as chunk Frames; the server answers with a
Frame holding the Response, then the output bytes as chunks of at most
1 MiB. Declared sizes are checked against the limits before any tensor
byte is read.
"""

import json
import mmap
import os
import threading
import time
import traceback
from concurrent import futures

import grpc
import torch

from stagecoach_torch import compute_pb2 as pb
from stagecoach_torch import compute_pb2_grpc as pb_grpc
from stagecoach_torch.safetensors import tensor_bytes, tensor_from_bytes
from stagecoach_torch.stage import Stage, StageError

BACKEND = "torch"
VERSION = pb.VERSION_1
MAX_CHUNK = 1 << 20
MAX_RANK = 8
_ELEM = {pb.DTYPE_FLOAT32: (torch.float32, 4), pb.DTYPE_INT32: (torch.int32, 4)}
_OP_NAMES = {v: k for k, v in pb.Op.items()}


class Limits:
    """Bounds on what a client may make the backend allocate."""

    def __init__(self, max_tensor_bytes=1 << 30, max_request_bytes=4 << 30, max_params=1 << 28, max_stages=64):
        self.max_tensor_bytes = max_tensor_bytes
        self.max_request_bytes = max_request_bytes
        self.max_params = max_params
        self.max_stages = max_stages


class _Bad(Exception):
    """A malformed request: the message goes to Response.error."""


class Servicer(pb_grpc.ComputeServicer):
    """Holds the loaded stages (by handle) of one model file."""

    def __init__(self, build, limits=None):
        self.build = build
        self.limits = limits or Limits()
        self.lock = threading.Lock()
        self.stages = {}  # handle -> (Stage, lock)
        self.next_handle = 1
        # Shared-memory regions clients offered at Hello, by path (the
        # client unlinks the file once it is mapped here).
        self.regions = {}

    # --- the stream

    def Call(self, request_iterator, context):
        it = iter(request_iterator)
        first = next(it, None)
        if first is None or first.WhichOneof("body") != "request":
            yield pb.Frame(response=pb.Response(error="torch backend: a call must start with a request frame"))
            return
        req = first.request
        op = _OP_NAMES.get(req.op, str(req.op))
        try:
            if req.version != VERSION:
                raise _Bad("protocol version %d requested, this backend speaks version %d" % (req.version, VERSION))
            inputs = self._read_inputs(req, it)
            began = time.perf_counter_ns()
            resp, outputs = self._dispatch(req, inputs)
            # The outputs' bytes are taken below: what they cost counts as
            # the hop's, as on the Go server.
            resp.compute_nanos = time.perf_counter_ns() - began
        except (_Bad, StageError) as e:
            yield pb.Frame(response=pb.Response(error="torch backend: %s (stage %d, microbatch %d): %s" % (op, req.stage, req.microbatch, e)))
            return
        except Exception as e:  # the user's model failed: report, keep serving
            tb = traceback.extract_tb(e.__traceback__)
            where = " at %s:%d" % (os.path.basename(tb[-1].filename), tb[-1].lineno) if tb else ""
            yield pb.Frame(response=pb.Response(error="torch backend: %s (stage %d, microbatch %d): %s: %s%s" % (op, req.stage, req.microbatch, type(e).__name__, e, where)))
            return
        for name, t in outputs:
            dtype = pb.DTYPE_INT32 if t.dtype == torch.int32 else pb.DTYPE_FLOAT32
            resp.outputs.add(name=name, shape=list(t.shape), dtype=dtype)
        region = self.regions.get(req.shm_path) if req.shm else None
        if region is not None and outputs:
            blobs = [tensor_bytes(t) for _, t in outputs]
            if sum(len(b) for b in blobs) <= len(region):
                # Outputs go back the way the inputs came: the client
                # holds the region for this call.
                off = 0
                for b in blobs:
                    region[off : off + len(b)] = b
                    off += len(b)
                resp.shm = True
                yield pb.Frame(response=resp)
                return
        yield pb.Frame(response=resp)
        yield from _chunks(t for _, t in outputs)

    def _read_inputs(self, req, it):
        """Check every declared input against the limits, then read their
        bytes (exactly the declared number) and the end of the stream."""
        total, metas = 0, []
        for i, m in enumerate(req.inputs):
            if m.dtype not in _ELEM:
                raise _Bad("input %d (%r): dtype %d is neither float32 nor int32" % (i, m.name, m.dtype))
            if len(m.shape) > MAX_RANK:
                raise _Bad("input %d (%r): rank %d exceeds %d" % (i, m.name, len(m.shape), MAX_RANK))
            dtype, size = _ELEM[m.dtype]
            n = size
            for d in m.shape:
                if d < 0:
                    raise _Bad("input %d (%r): negative dimension in shape %s" % (i, m.name, list(m.shape)))
                n *= d
                if n > self.limits.max_tensor_bytes:
                    break
            if n > self.limits.max_tensor_bytes:
                raise _Bad("input %d (%r): shape %s is more than the %d-byte tensor limit" % (i, m.name, list(m.shape), self.limits.max_tensor_bytes))
            total += n
            if total > self.limits.max_request_bytes:
                raise _Bad("inputs exceed the %d-byte request limit" % self.limits.max_request_bytes)
            metas.append((m.name, list(m.shape), dtype, n))
        if req.shm:
            region = self.regions.get(req.shm_path)
            if region is None:
                raise _Bad("no shared region %r was offered at Hello" % req.shm_path)
            if total > len(region):
                raise _Bad("inputs of %d bytes declared in a shared region of %d" % (total, len(region)))
            for f in it:
                raise _Bad("a %s frame after a request whose inputs are in the shared region" % f.WhichOneof("body"))
            buf = bytearray(region[0:total])
            out, off = [], 0
            for name, shape, dtype, n in metas:
                out.append((name, tensor_from_bytes(buf, off, n, dtype, shape)))
                off += n
            return out
        buf = bytearray(total)
        got = 0
        for f in it:
            if f.WhichOneof("body") != "chunk":
                raise _Bad("expected chunk frames after the request, got a %s frame" % f.WhichOneof("body"))
            c = f.chunk
            if len(c) > MAX_CHUNK:
                raise _Bad("chunk of %d bytes exceeds the %d-byte chunk limit" % (len(c), MAX_CHUNK))
            if got + len(c) > total:
                raise _Bad("more input bytes than the %d the inputs declare" % total)
            buf[got : got + len(c)] = c
            got += len(c)
        if got != total:
            raise _Bad("stream ended after %d of the %d input bytes" % (got, total))
        out, off = [], 0
        for name, shape, dtype, n in metas:
            out.append((name, tensor_from_bytes(buf, off, n, dtype, shape)))
            off += n
        return out

    # --- operations

    def _dispatch(self, req, inputs):
        op = req.op
        resp = pb.Response()
        if op == pb.OP_HELLO:
            _want(inputs, 0)
            resp.hello.version = VERSION
            resp.hello.backend = BACKEND
            resp.hello.version_info = "torch %s, %d threads" % (torch.__version__, torch.get_num_threads())
            resp.hello.shm = self._offer(req.shm_path, req.shm_bytes)
            return resp, []
        if op == pb.OP_LOAD:
            _want(inputs, 0)
            return self._load(req.load, resp)
        if op == pb.OP_UNLOAD:
            _want(inputs, 0)
            with self.lock:
                if self.stages.pop(req.stage, None) is None:
                    raise _Bad("no stage %d loaded" % req.stage)
            return resp, []
        with self.lock:
            got = self.stages.get(req.stage)
        if got is None:
            raise _Bad("no stage %d loaded" % req.stage)
        st, lock = got
        with lock, torch.no_grad():
            return self._stage_op(st, req, inputs, resp)

    def _offer(self, path, size):
        """Map the shared region a client offered; True when it will be used."""
        if not path:
            return False
        with self.lock:
            if path in self.regions:
                return True
            if len(self.regions) >= 64 or size <= 0 or size > self.limits.max_request_bytes or not os.path.isabs(path):
                return False
            try:
                with open(path, "r+b") as f:
                    if os.fstat(f.fileno()).st_size < size:
                        return False
                    self.regions[path] = mmap.mmap(f.fileno(), size)
            except OSError:
                return False
            return True

    def _load(self, a, resp):
        try:
            model = json.loads(a.model_json.decode() or "{}")
            optim = json.loads(a.optim_json.decode() or "{}")
        except (UnicodeDecodeError, ValueError) as e:
            raise _Bad("load: model or optimizer config is not JSON: %s" % e) from None
        with self.lock:
            if len(self.stages) >= self.limits.max_stages:
                raise _Bad("load: %d stages already loaded (the limit)" % len(self.stages))
        st = Stage(self.build, model, optim, a.lo, a.hi, a.embed, a.head, self.limits.max_params)
        with self.lock:
            h = self.next_handle
            self.next_handle += 1
            self.stages[h] = (st, threading.Lock())
        resp.stage = h
        d = resp.description
        d.backend, d.width, d.split_backward = BACKEND, st.width, False
        for name, index, shape, decay in st.describe():
            d.params.add(name=name, index=index, shape=shape, decay=decay)
        return resp, []

    def _stage_op(self, st, req, inputs, resp):
        op, mb = req.op, req.microbatch
        if op == pb.OP_ZERO_GRAD:
            _want(inputs, 0)
            st.zero_grad()
            return resp, []
        if op == pb.OP_FORWARD:
            (x,) = _want(inputs, 1, [torch.float32])
            return resp, [("y", st.forward(mb, x))]
        if op == pb.OP_LOSS:
            h, t = _want(inputs, 2, [torch.float32, torch.int32])
            loss, g = st.loss(mb, h, t)
            resp.loss = loss
            return resp, [("grad", g)]
        if op in (pb.OP_BACKWARD, pb.OP_BACKWARD_INPUT):
            # without split_backward, BackwardInput is the whole backward
            (g,) = _want(inputs, 1, [torch.float32])
            gi = st.backward(mb, g)
            return resp, ([] if gi is None else [("grad", gi)])
        if op == pb.OP_BACKWARD_WEIGHT:
            _want(inputs, 0)
            return resp, []
        if op == pb.OP_KEEP_CONTRIBUTIONS:
            _want(inputs, 0)
            st.keep_contributions(req.keep)
            return resp, []
        if op == pb.OP_CONTRIBUTION:
            _want(inputs, 0)
            return resp, [("contribution", st.contribution(mb))]
        if op == pb.OP_GRADS:
            _want(inputs, 0)
            return resp, [("grads", st.grads())]
        if op == pb.OP_SET_GRADS:
            (g,) = _want(inputs, 1, [torch.float32])
            st.set_grads(g)
            return resp, []
        if op == pb.OP_SCALE_GRADS:
            _want(inputs, 0)
            st.scale_grads(req.scale)
            return resp, []
        if op == pb.OP_SUM_SQUARES:
            _want(inputs, 0)
            resp.sum_squares.extend(st.sum_squares())
            return resp, []
        if op == pb.OP_STEP:
            _want(inputs, 0)
            st.step(req.step.step, req.step.lr, req.step.clip)
            return resp, []
        if op == pb.OP_STATE:
            _want(inputs, 0)
            return resp, st.state()
        if op == pb.OP_SET_STATE:
            _want(inputs, len(st.state_metas()), [torch.float32] * len(inputs))
            st.set_state(inputs)
            return resp, []
        raise _Bad("unknown operation %d" % op)


def _want(inputs, n, dtypes=()):
    if len(inputs) != n:
        raise _Bad("%d input tensors, the operation takes %d" % (len(inputs), n))
    for (name, t), dt in zip(inputs, dtypes):
        if t.dtype != dt:
            raise _Bad("input %r is %s, want %s" % (name, t.dtype, dt))
    return [t for _, t in inputs]


def _chunks(tensors):
    """Chunk frames of at most MAX_CHUNK bytes over the tensors' bytes,
    back to back (a chunk may end one tensor and start the next)."""
    pending = bytearray()
    for t in tensors:
        b = tensor_bytes(t)
        i = 0
        while i < len(b):
            take = min(MAX_CHUNK - len(pending), len(b) - i)
            pending += b[i : i + take]
            i += take
            if len(pending) == MAX_CHUNK:
                yield pb.Frame(chunk=bytes(pending))
                pending = bytearray()
    if pending:
        yield pb.Frame(chunk=bytes(pending))


def serve(build, socket_path, limits=None, workers=8):
    """Start a server on the Unix socket socket_path (removing a stale
    socket file first); returns the started grpc.Server."""
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        options=[("grpc.max_receive_message_length", 2 * MAX_CHUNK + (1 << 16)), ("grpc.max_send_message_length", 2 * MAX_CHUNK + (1 << 16))],
    )
    pb_grpc.add_ComputeServicer_to_server(Servicer(build, limits), server)
    if server.add_insecure_port("unix:" + socket_path) == 0:
        raise OSError("cannot listen on unix socket %s" % socket_path)
    server.start()
    return server
