"""transformers pickle weights (`pytorch_model.bin`, or shards + `pytorch_model.bin.index.json`) -> safetensors.

facebook/musicgen-medium and facebook/musicgen-large ship their transformers weights only as `torch.save`
pickles on main (medium: one `pytorch_model.bin`, large: `pytorch_model-0000N-of-0000M.bin` shards with an
index). They are read with torch's `weights_only` unpickler, memory-mapped: the file is first scanned and any
global that is not a tensor / container type (`os.system`, `builtins.eval`, ...) is refused by name before
anything is unpickled. (Audiocraft's `state_dict.bin` / `compression_state_dict.bin`, another layout, are
converted by audiocraft_format.py with the same reader and writer.) Each input file becomes one safetensors
file, written tensor by tensor (peak memory: the mapped input file, i.e. about one copy of the weights; the
tensors are never gathered in ordinary memory), and that copy is what every later run loads.

Where the conversion goes (a folder of its own, written atomically: temp folder + rename, so an interrupted
conversion never leaves a half-written copy behind):

* files in the HF cache (`.../models--org--name/snapshots/<commit>/`): `.../models--org--name/musicgen-converted/
  transformers-<key>`, key = hash of the files' blob names (their content hashes), so a new blob converts anew
  and another revision with the same blobs reuses it. `hf cache rm` removes it with the repo;
* a local folder: `<folder>/.musicgen-converted/<key>` when the folder is writable, else
  `$HF_HOME/musicgen-converted/<hash of the folder's path>-<key>`; key = hash of the files' names, sizes and
  modification times, so a replaced file converts anew (the stale copy is left: delete it by hand).

The .bin files stay where they are: the conversion doubles the disk space the weights take.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import shutil
import struct
import sys
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants

from .errors import CheckpointError
from .weights import DTYPES, INDEX_FILE, SINGLE_FILE

CONVERTED = "musicgen-converted"  # folder inside a repo's HF cache folder (the cache tools ignore it)

BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
LOCAL_FOLDER = ".musicgen-converted"
MANIFEST = "musicgen-conversion.json"
FORMAT, FORMAT_VERSION = "musicgen-transformers-bin", 1
SAFETENSORS_DTYPE = {dtype: name for name, dtype in DTYPES.items()}
log = logging.getLogger(__name__)


def has_safetensors(folder: Path) -> bool:
    return (folder / SINGLE_FILE).is_file() or (folder / INDEX_FILE).is_file()


@dataclass(frozen=True)
class BinWeights:
    """The transformers pickle weights of a checkpoint folder: one file, or the shards its index names."""

    folder: Path
    files: tuple[str, ...]
    weight_map: Mapping[str, str] | None  # tensor name -> shard (sharded only)

    @classmethod
    def find(cls, folder: Path) -> BinWeights | None:
        index = folder / BIN_INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                files = tuple(sorted(set(weight_map.values())))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{index} is not a valid weights index: {e}") from e
            bad = [f for f in files if not isinstance(f, str) or "/" in f or "\\" in f or not f.endswith(".bin")]
            if bad or not files:
                raise CheckpointError(f"{index} names unexpected shard files: {bad[:3] or 'none'}")
            return cls(folder, files, weight_map)
        if (folder / BIN_FILE).is_file():
            return cls(folder, (BIN_FILE,), None)
        return None

    def identity(self) -> str:
        """A short hash of what the files hold: blob names in the HF cache, else sizes and mtimes."""
        parts = [f"{FORMAT}-{FORMAT_VERSION}"]
        for name in (*self.files, *([BIN_INDEX] if self.weight_map is not None else [])):
            path = self.folder / name
            if not path.is_file():
                raise CheckpointError(f"checkpoint shard {path} is missing (listed in {BIN_INDEX})")
            blob = path.resolve()
            st = blob.stat()
            parts.append(f"{name}:{blob.name if blob.parent.name == 'blobs' else f'{st.st_size}-{st.st_mtime_ns}'}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]

    def target(self) -> Path:
        """Where the safetensors copy lives (see the module docstring)."""
        key = self.identity()
        snapshots = self.folder.parent
        if snapshots.name == "snapshots" and (snapshots.parent / "blobs").is_dir():
            return snapshots.parent / CONVERTED / f"transformers-{key}"
        if os.access(self.folder, os.W_OK):
            return self.folder / LOCAL_FOLDER / key
        where = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:12]
        return Path(constants.HF_HOME) / CONVERTED / f"{where}-{key}"


def safe_torch_load(path: Path, what: str, allowed: Sequence[Any] = ()) -> Any:
    """`torch.load(weights_only=True, mmap=True)` after refusing, by name, every global outside torch's
    allow-list and `allowed` (nothing is unpickled then). `what` names the kind of file in messages."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a torch checkpoint (zip archive): the file is truncated or corrupted, "
                              "or was saved by torch < 1.6; delete it so that it is downloaded again")
    with torch.serialization.safe_globals(list(allowed)):
        try:
            refused = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as e:  # opcodes torch.save never writes, unreadable archive member, ...
            raise CheckpointError(f"refusing to unpickle {path}: it cannot be checked ({type(e).__name__}: {e})") from e
        if refused:
            raise CheckpointError(f"refusing to unpickle {path}: it refers to {', '.join(sorted(refused))}, which "
                                  f"{what} never contains (unpickling it could run arbitrary code)")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"refusing to unpickle {path}: {str(e).splitlines()[0]}") from e
        except Exception as e:  # truncated members, bad CRC, short reads ...
            raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e} (truncated or corrupted file)") from e


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True, mmap=True)` of a transformers weights file: names -> tensors, nothing else."""
    state = safe_torch_load(path, "a weights file")
    if not isinstance(state, dict) or not state:
        got = "an empty dict" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"{path} does not hold a state dict of tensors (it holds {got})")
    for key, t in state.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(t).__name__}, not a tensor")
    return state


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> int:
    """Stream `tensors` into a safetensors file one at a time (no second copy in memory); returns the data size.
    Layout: [u64 header size][JSON header, space-padded to 8 bytes][tensor bytes in key order]."""
    if sys.byteorder != "little":
        raise CheckpointError("converting .bin weights needs a little-endian CPU (safetensors is little-endian)")
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key in sorted(tensors):
        t = tensors[key]
        if t.dtype not in SAFETENSORS_DTYPE or t.layout != torch.strided:
            raise CheckpointError(f"tensor {key!r} ({t.dtype}, {t.layout}) cannot be stored in safetensors")
        size = t.numel() * t.element_size()
        header[key] = {"dtype": SAFETENSORS_DTYPE[t.dtype], "shape": list(t.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for key in sorted(tensors):
            t = tensors[key].detach()
            if t.numel():
                f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy())  # bytes of a mapped tensor
        f.flush()
        os.fsync(f.fileno())
    return offset


def _convert_into(weights: BinWeights, out: Path) -> dict[str, Any]:
    """Write the safetensors files (+ index) of `weights` into the empty folder `out`; returns the manifest."""
    n = len(weights.files)
    weight_map: dict[str, str] = {}
    outputs: dict[str, int] = {}
    total = 0
    for i, name in enumerate(weights.files, start=1):
        target = SINGLE_FILE if weights.weight_map is None else f"model-{i:05d}-of-{n:05d}.safetensors"
        state = read_state_dict(weights.folder / name)
        if twice := sorted(set(state) & set(weight_map)):
            raise CheckpointError(f"{weights.folder / name}: tensor {twice[0]!r} is also in {weight_map[twice[0]]}")
        total += write_safetensors(out / target, state)
        weight_map.update(dict.fromkeys(state, target))
        outputs[target] = (out / target).stat().st_size
        del state  # unmaps the input file before the next shard
    if weights.weight_map is not None:
        if missing := sorted(set(weights.weight_map) - set(weight_map)):
            raise CheckpointError(f"{BIN_INDEX} in {weights.folder} lists {len(missing)} tensor(s) its shards do not "
                                  f"hold, e.g. {missing[0]!r} (an incomplete download?)")
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
        outputs[INDEX_FILE] = (out / INDEX_FILE).stat().st_size
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "source": str(weights.folder),
            "inputs": list(weights.files), "outputs": outputs}


def is_converted(folder: Path) -> bool:
    """A finished conversion: its manifest is there and every file it lists has the recorded size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return (manifest["format"], manifest["format_version"]) == (FORMAT, FORMAT_VERSION) and all(
            (folder / name).stat().st_size == size for name, size in manifest["outputs"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _remove_stale_temps(target: Path) -> None:
    """Temp folders left by conversions that were killed (their process is gone); POSIX only."""
    if os.name != "posix":
        return
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        with contextlib.suppress(ValueError, IndexError):
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(tmp, ignore_errors=True)
            except PermissionError:  # alive, another user's
                pass


@contextlib.contextmanager
def atomic_folder(target: Path, what: str) -> Iterator[Path]:
    """A temp folder to write a copy into, renamed to `target` once the block ends (after `finish` marked it
    complete); an interrupted copy never leaves a half-written `target`. `what` names it in messages."""
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(target)
        tmp.mkdir()
        yield tmp
        if not is_converted(target):  # else another process finished the same conversion first
            if target.exists():
                shutil.rmtree(target)  # a damaged earlier copy
            os.replace(tmp, target)
    except OSError as e:
        if not is_converted(target):
            raise CheckpointError(f"cannot write {what} to {target}: {e}. It needs as much free disk space as the "
                                  "weights") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finish(folder: Path, manifest: dict[str, Any]) -> None:
    """Mark a copy complete: its manifest, written last (`is_converted` checks it)."""
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def convert(weights: BinWeights, target: Path) -> Path:
    """Convert `weights` into the folder `target`, atomically: written in a temp folder, then renamed."""
    with atomic_folder(target, f"the safetensors copy of {weights.folder / weights.files[0]}") as tmp:
        finish(tmp, _convert_into(weights, tmp))
    return target


def weights_folder(folder: str | Path) -> Path:
    """The folder to open with `Checkpoint`: `folder` itself when it holds safetensors weights, else the
    safetensors copy of its `pytorch_model*.bin` weights (converted now the first time)."""
    folder = Path(folder)
    if has_safetensors(folder):
        return folder
    if not (folder / BIN_FILE).is_file() and not (folder / BIN_INDEX).is_file():
        raise CheckpointError(f"no transformers weights in {folder}: expected {SINGLE_FILE}, {INDEX_FILE}, {BIN_FILE} "
                              f"or {BIN_INDEX} (audiocraft's state_dict.bin is read by audiocraft_format.py)")
    try:
        weights = BinWeights.find(folder)
        assert weights is not None
        target = weights.target()
        if not is_converted(target):
            log.info("converting %s to safetensors in %s (once)", folder, target)
            convert(weights, target)
    except CheckpointError as e:
        what = BIN_INDEX if (folder / BIN_INDEX).is_file() else BIN_FILE
        raise CheckpointError(f"no safetensors weights in {folder}, and its {what} cannot be used: {e}") from e
    return target
