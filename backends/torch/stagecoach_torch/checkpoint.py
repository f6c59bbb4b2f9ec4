"""Loading Stagecoach checkpoints into torch models.

A checkpoint holds every parameter under its global name (tok_emb,
blocks.3.wqkv, ...; for a PyTorch model file: the embedding's parameters
by their names inside .embed, blocks.<l>.<name>, the head's by their names
inside .head) and the optimizer moments as optim.m.<name>, optim.v.<name>.
"""

import os

import torch
from torch import nn

from stagecoach_torch.safetensors import read_safetensors


def checkpoint_tensors(path):
    """The tensors of a checkpoint: path is a .safetensors file or a
    checkpoint directory (its model.safetensors, else the union of its
    shard-<i>.safetensors). Returns (dict name -> tensor, metadata)."""
    if not os.path.isdir(path):
        return read_safetensors(path)
    whole = os.path.join(path, "model.safetensors")
    if os.path.exists(whole):
        return read_safetensors(whole)
    shards = sorted(f for f in os.listdir(path) if f.startswith("shard-") and f.endswith(".safetensors"))
    if not shards:
        raise FileNotFoundError("checkpoint %s: neither model.safetensors nor shard-<i>.safetensors" % path)
    tensors, meta = {}, {}
    for f in shards:
        t, m = read_safetensors(os.path.join(path, f))
        for name in t:
            if name in tensors:
                raise ValueError("checkpoint %s: tensor %r in more than one shard" % (path, name))
        tensors.update(t)
        meta = meta or m
    return tensors, meta


def named_parameters(model):
    """(global name, parameter) of model: an object built by a model
    file's build(config) (parts .embed, .blocks, .head, modules or
    functions returning them; factories are called, so pass built modules
    to load into), or any nn.Module (its own parameter names)."""
    if isinstance(model, nn.Module) and not all(hasattr(model, a) for a in ("embed", "blocks", "head")):
        return list(model.named_parameters())
    out = []

    def part(v):
        return v if isinstance(v, nn.Module) else v()

    out += list(part(model.embed).named_parameters())
    for l, b in enumerate(model.blocks):
        out += [("blocks.%d.%s" % (l, n), p) for n, p in part(b).named_parameters()]
    out += list(part(model.head).named_parameters())
    return out


def load_checkpoint(model, path, strict=True):
    """Copy the weights of the checkpoint at path into model's parameters,
    matched by global name. With strict, every parameter must be in the
    checkpoint with its shape; otherwise missing ones are left alone
    (shape mismatches are always errors). Returns the names loaded."""
    tensors, _ = checkpoint_tensors(path)
    loaded = []
    with torch.no_grad():
        for name, p in named_parameters(model):
            t = tensors.get(name)
            if t is None:
                if strict:
                    raise KeyError("checkpoint %s has no tensor %r" % (path, name))
                continue
            if list(t.shape) != list(p.shape):
                raise ValueError("checkpoint %s: tensor %r is %s, the model's is %s" % (path, name, list(t.shape), list(p.shape)))
            p.copy_(t)
            loaded.append(name)
    return loaded
