"""stagecoach_torch: a Stagecoach compute backend that computes pipeline
stages of a user's PyTorch model, served over the compute protocol
(proto/compute/compute.proto) on a Unix socket. Run it with

    python3 -m stagecoach_torch --model FILE.py [--socket PATH] [--threads N]

load_checkpoint loads a Stagecoach checkpoint into a torch model;
read_safetensors and write_safetensors handle the file format.
"""

# Nothing here imports torch: `python3 -m stagecoach_torch` must set the
# thread-count variables before torch is first imported.
_LAZY = {
    "load_checkpoint": "stagecoach_torch.checkpoint",
    "checkpoint_tensors": "stagecoach_torch.checkpoint",
    "read_safetensors": "stagecoach_torch.safetensors",
    "write_safetensors": "stagecoach_torch.safetensors",
    "SafetensorsError": "stagecoach_torch.safetensors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError("module 'stagecoach_torch' has no attribute %r" % name)
