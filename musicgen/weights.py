"""Reading a checkpoint's safetensors files (single or sharded) into our modules.

Each model module declares one explicit mapping from its own parameter names to checkpoint keys
(`Source`s below). `load_module` builds nothing itself: it takes a module constructed on the meta
device, fetches every tensor its state dict needs (checking the shape against the module), converts
it to the target device / dtype one tensor at a time and assigns it. `Checkpoint.check_all_used` then
proves no key was left unread.

The files are memory-mapped, and each tensor is copied out and its pages released from the mapping
(madvise DONTNEED) as soon as it is read. safetensors' own `safe_open` hands out views into a mapping that
stays resident for as long as any view lives, so re-laid-out (transposed, int8) weights would briefly
cost the file's size twice; this way loading peaks near one copy of the weights.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError

# safetensors dtype names (https://github.com/huggingface/safetensors, format spec) -> torch
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
PAGE = mmap.PAGESIZE
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class WeightNorm:
    """A weight-normed conv weight w = g * v / ||v|| (norm over every dim but 0), stored either as
    `{prefix}.weight_g/_v` (older files, e.g. the Hub's) or
    `{prefix}.parametrizations.weight.original0/1` (what current transformers writes)."""

    prefix: str


@dataclass(frozen=True)
class Cat:
    """Several checkpoint tensors concatenated along `dim` into one of ours (e.g. fused q/k/v)."""

    keys: tuple[str, ...]
    dim: int = 0


@dataclass(frozen=True)
class First:
    """The first of `keys` the checkpoint holds (e.g. a tied weight stored under either of its names)."""

    keys: tuple[str, ...]


Source = str | WeightNorm | Cat | First


class Checkpoint:
    """Lazy access to the tensors of `model.safetensors` or its shards, recording what was read."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        index = folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from e
            files = sorted(set(weight_map.values()))
        elif (folder / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
        else:
            raise CheckpointError(
                f"no safetensors weights in {folder} (expected {SINGLE_FILE} or {INDEX_FILE}); pickle weights are "
                "never opened here: musicgen.convert.weights_folder converts transformers' pytorch_model*.bin first"
            )
        self.folder = folder
        self._maps: dict[str, mmap.mmap] = {}
        self._where: dict[str, tuple[str, str, tuple[int, ...], int, int]] = {}  # key -> file, dtype, shape, span
        for name in files:
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"checkpoint shard {path} is missing")
            self._open(path, name)
        self.used: set[str] = set()

    def _open(self, path: Path, name: str) -> None:
        """Map one safetensors file and index its header: [u64 n][n bytes of JSON][tensor data]."""
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            (n,) = struct.unpack("<Q", mm[:8])
            header = json.loads(mm[8 : 8 + n])
        except (OSError, ValueError, struct.error) as e:
            raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({e})") from e
        base = 8 + n
        for key, info in header.items():
            if key == "__metadata__":
                continue
            try:
                dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
                size = DTYPES[dtype].itemsize * int(torch.Size(shape).numel())
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: bad header entry for {key!r}: {e}") from e
            if end - start != size or base + end > len(mm):
                raise CheckpointError(f"{path}: tensor {key!r} lies outside the file (truncated download?)")
            self._where[key] = (name, dtype, shape, base + start, base + end)
        self._maps[name] = mm

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def spec(self, key: str) -> tuple[str, tuple[int, ...]]:
        """A tensor's safetensors dtype name and shape, without reading it."""
        _, dtype, shape, _, _ = self._where[key]
        return dtype, shape

    def tensor(self, key: str) -> torch.Tensor:
        """A copy of tensor `key` in ordinary memory; its pages are then dropped from the mapping."""
        if key not in self._where:
            raise CheckpointError(f"checkpoint in {self.folder} is missing tensor {key!r}")
        self.used.add(key)
        name, dtype, shape, start, end = self._where[key]
        mm = self._maps[name]
        out = torch.empty(shape, dtype=DTYPES[dtype])
        if end > start:
            with warnings.catch_warnings():  # the mapping is read-only; we copy out of it at once
                warnings.simplefilter("ignore", UserWarning)
                raw = torch.frombuffer(mm, dtype=torch.uint8, count=end - start, offset=start)
            out.view(-1).view(torch.uint8).copy_(raw)
            del raw
            first, last = -(-start // PAGE) * PAGE, end // PAGE * PAGE  # whole pages inside the tensor
            if last > first:
                mm.madvise(mmap.MADV_DONTNEED, first, last - first)
        return out

    def fetch(self, source: Source) -> torch.Tensor:
        if isinstance(source, str):
            return self.tensor(source)
        if isinstance(source, Cat):
            return torch.cat([self.tensor(k) for k in source.keys], dim=source.dim)
        if isinstance(source, First):
            key = next((k for k in source.keys if k in self), None)
            if key is None:
                raise CheckpointError(f"checkpoint in {self.folder} is missing tensor {' / '.join(source.keys)}")
            return self.tensor(key)
        p = source.prefix
        pw = f"{p}.parametrizations.weight"
        for g_key, v_key in ((f"{p}.weight_g", f"{p}.weight_v"), (f"{pw}.original0", f"{pw}.original1")):
            if g_key in self and v_key in self:
                g, v = self.tensor(g_key).float(), self.tensor(v_key).float()
                if g.numel() != v.shape[0]:
                    raise CheckpointError(f"tensor {g_key!r} has shape {tuple(g.shape)}, "
                                          f"expected {v.shape[0]} elements to match {v_key!r}")
                norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
                return v * (g.view_as(norm) / norm)
        if f"{p}.weight" in self:
            return self.tensor(f"{p}.weight")
        raise CheckpointError(f"checkpoint in {self.folder} is missing tensor {p}.weight_g / {p}.weight_v "
                              f"(or {p}.parametrizations.weight.original0 / original1)")

    def check_all_used(self, ignored: Callable[[str], bool]) -> None:
        """Every key must have been read or be explicitly ignorable: a left-over key means a part of the
        model we would silently drop."""
        left = sorted(k for k in self._where if k not in self.used and not ignored(k))
        if left:
            shown = ", ".join(left[:8]) + (" ..." if len(left) > 8 else "")
            raise CheckpointError(f"checkpoint in {self.folder} has {len(left)} tensor(s) this engine "
                                  f"does not understand: {shown}")


def embedding(num: int, dim: int) -> nn.Embedding:
    """An nn.Embedding for weights that come from a checkpoint: built without its random init. On the meta
    device torch's `normal_` kernel is Python (torch._meta_registrations): the first call imports ~900
    modules and costs ~120 MB of RSS for nothing."""
    return nn.Embedding.from_pretrained(torch.empty(num, dim), freeze=True)


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps freed blocks of tens of MB in its arenas, which
    would otherwise add up while a model is loaded and re-laid-out layer by layer). No-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def load_module(
    module: nn.Module,
    ckpt: Checkpoint,
    source_of: Callable[[str], Source],
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    """Fill `module` (built on the meta device) from `ckpt`. `source_of(name)` maps each of the module's
    state-dict names to where it lives in the checkpoint. Floating tensors become `dtype`."""
    expected = module.state_dict()
    state: dict[str, torch.Tensor] = {}
    for name in expected:
        source = source_of(name)
        t = ckpt.fetch(source)
        want = tuple(expected[name].shape)
        if tuple(t.shape) != want:
            raise CheckpointError(f"tensor {source} has shape {tuple(t.shape)}, expected {want}")
        if t.is_floating_point():
            t = t.to(dtype)
        state[name] = t.to(device)
        if not state[name].is_contiguous():
            state[name] = state[name].contiguous()
    module.load_state_dict(state, strict=True, assign=True)
    return module.requires_grad_(False)  # inference only: no autograd bookkeeping
