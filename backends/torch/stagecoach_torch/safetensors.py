"""Safetensors files with the standard library and torch only.

The format: an 8-byte little-endian header length N, N bytes of JSON
mapping each tensor name to {"dtype", "shape", "data_offsets": [begin,
end]} (offsets relative to the first byte after the header) plus an
optional "__metadata__" map of strings, then the tensor bytes. Stagecoach
writes F32 only; this reader also takes F64, F16, BF16, I32 and I64 so a
user's own files load too.
"""

import json
import os
import struct

import torch

# MAX_HEADER_LEN bounds the JSON header we read, so a hostile length field
# cannot make us allocate without limit (the Go reader's bound).
MAX_HEADER_LEN = 100 << 20

_DTYPES = {
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I32": (torch.int32, 4),
    "I64": (torch.int64, 8),
}
_NAMES = {dt: name for name, (dt, _) in _DTYPES.items()}


class SafetensorsError(ValueError):
    """A malformed or unsupported safetensors file."""


def write_safetensors(path, tensors, metadata=None):
    """Write tensors (a dict or a list of (name, tensor) pairs, kept in
    that order) and string metadata to path."""
    items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    blobs = []
    for name, t in items:
        if not name or name == "__metadata__" or name in header:
            raise SafetensorsError("safetensors: invalid or duplicate tensor name %r" % name)
        if t.dtype not in _NAMES:
            raise SafetensorsError("safetensors: tensor %r: dtype %s not supported" % (name, t.dtype))
        b = tensor_bytes(t)
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path, max_bytes=4 << 30):
    """Read a safetensors file: returns (dict name -> tensor in file order,
    metadata dict). Refuses files whose data section exceeds max_bytes
    and any header that does not describe the file exactly."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            raise SafetensorsError("safetensors: %s is %d bytes, shorter than the 8-byte header length" % (path, size))
        (hl,) = struct.unpack("<Q", f.read(8))
        if hl > MAX_HEADER_LEN:
            raise SafetensorsError("safetensors: %s: header length %d exceeds the %d limit" % (path, hl, MAX_HEADER_LEN))
        if hl > size - 8:
            raise SafetensorsError("safetensors: %s: truncated: header length %d but only %d bytes follow" % (path, hl, size - 8))
        data_len = size - 8 - hl
        if data_len > max_bytes:
            raise SafetensorsError("safetensors: %s: %d data bytes exceed the %d limit" % (path, data_len, max_bytes))
        try:
            header = json.loads(f.read(hl).decode())
        except (UnicodeDecodeError, ValueError) as e:
            raise SafetensorsError("safetensors: %s: bad header JSON: %s" % (path, e)) from None
        if not isinstance(header, dict):
            raise SafetensorsError("safetensors: %s: header is not a JSON object" % path)
        meta = header.pop("__metadata__", {}) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise SafetensorsError("safetensors: %s: __metadata__ must map strings to strings" % path)
        spans = []
        for name, e in header.items():
            spans.append((_check_entry(path, name, e, data_len), name))
        spans.sort()
        for i in range(1, len(spans)):
            if spans[i][0][0] < spans[i - 1][0][1]:
                raise SafetensorsError("safetensors: %s: tensors %r and %r overlap" % (path, spans[i - 1][1], spans[i][1]))
        data = bytearray(f.read(data_len))
    if len(data) != data_len:
        raise SafetensorsError("safetensors: %s changed while being read" % path)
    out = {}
    for (begin, end, dtype, shape), name in spans:
        out[name] = tensor_from_bytes(data, begin, end - begin, dtype, shape)
    return out, meta


def _check_entry(path, name, e, data_len):
    where = "safetensors: %s: tensor %r" % (path, name)
    if not isinstance(e, dict):
        raise SafetensorsError(where + ": entry is not an object")
    if e.get("dtype") not in _DTYPES:
        raise SafetensorsError(where + ": dtype %r not supported" % (e.get("dtype"),))
    dtype, size = _DTYPES[e["dtype"]]
    shape, offs = e.get("shape"), e.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise SafetensorsError(where + ": bad shape %r" % (shape,))
    if not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs):
        raise SafetensorsError(where + ": data_offsets must be two integers, got %r" % (offs,))
    begin, end = offs
    if begin < 0 or end < begin or end > data_len:
        raise SafetensorsError(where + ": data_offsets [%d,%d] outside the %d data bytes (truncated file?)" % (begin, end, data_len))
    n = 1
    for d in shape:
        n *= d
    if n * size != end - begin:
        raise SafetensorsError(where + ": shape %r needs %d bytes, offsets span %d" % (shape, n * size, end - begin))
    return begin, end, dtype, shape


def tensor_bytes(t):
    """The tensor's elements as little-endian bytes, row-major."""
    t = t.detach().contiguous().cpu()
    n = t.numel() * t.element_size()
    if n == 0:
        return b""
    import ctypes

    return ctypes.string_at(t.data_ptr(), n)


def tensor_from_bytes(buf, offset, nbytes, dtype, shape):
    """A tensor of dtype and shape over nbytes of buf (a bytearray) from
    offset; it shares buf's memory."""
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    size = torch.tensor([], dtype=dtype).element_size()
    return torch.frombuffer(buf, dtype=dtype, count=nbytes // size, offset=offset).reshape(shape)
