"""The official MBD weights: safe reading of the torch pickle, conversion once to safetensors + JSON, Hub cache.

`facebook/multiband-diffusion` only ships `mbd_musicgen_32khz.th`, a `torch.save` pickle of
``{'sample_rate': int, 'n_bands': int, i: {'cfg': DictConfig, 'model_state': ..., 'processor_state': ...}}``.
It is read with torch's `weights_only` unpickler, whose allow-list we extend with small local stand-ins
for the omegaconf classes (so omegaconf is not needed at run time). The file is first scanned and any other
global (`os.system`, `builtins.eval`, ...) is refused by name before anything is unpickled. Each band's
config becomes a plain JSON dict, its tensors (the DiffusionUnet's state, then under `processor_state.` the
band processor's: statistics and julius' band-split filters, or nothing when the processor is off; exactly the
keys audiocraft's strict loads need, nothing else accepted) a safetensors file; that conversion is stored next
to the download in the HF cache (keyed by the file's blob hash) and is what every later run loads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import save_file

from .convert import CONVERTED, safe_torch_load
from .diffusion_schedule import SampleProcessor
from .errors import CheckpointError
from .hub import hub_errors
from .unet import UNetConfig, expected_state_shapes

REPO_ID = "facebook/multiband-diffusion"
FILENAME = "mbd_musicgen_32khz.th"
FORMAT, FORMAT_VERSION = "musicgen-mbd", 2  # 2: processor_state includes julius' band-split filters
PROCESSOR_PREFIX = "processor_state."
CFG_SECTIONS = ("channels", "sample_rate", "diffusion_unet", "schedule", "processor")


class _Stub:
    """Holds the pickled state of one omegaconf object; nothing of omegaconf's behaviour is reproduced."""

    def __setstate__(self, state: object) -> None:
        self.state = state if isinstance(state, dict) else {}


class OmegaDict(_Stub):
    pass


class OmegaList(_Stub):
    pass


class OmegaNode(_Stub):
    pass


class OmegaMetadata(_Stub):
    pass


class TypeRef:
    """An inert stand-in for a type that omegaconf metadata mentions (`typing.Any`, `builtins.dict`, ...).
    It is not callable, so a pickle cannot use it to construct anything."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _empty_cache(*args: object) -> dict:
    """omegaconf's resolver cache is a `defaultdict(dict)`: rebuild it as a plain empty dict."""
    return {}


_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode",
          "ValueNode", "InterpolationResultNode", "UnionNode")
_TYPES = ("dict", "list", "tuple", "int", "float", "str", "bool", "bytes", "object")
SAFE_GLOBALS: list[Any] = [
    (OmegaDict, "omegaconf.dictconfig.DictConfig"),
    (OmegaList, "omegaconf.listconfig.ListConfig"),
    (OmegaMetadata, "omegaconf.base.Metadata"),
    (OmegaMetadata, "omegaconf.base.ContainerMetadata"),
    *[(OmegaNode, f"omegaconf.nodes.{n}") for n in _NODES],
    (TypeRef("typing.Any"), "typing.Any"),
    *[(TypeRef(f"builtins.{t}"), f"builtins.{t}") for t in _TYPES],
    (_empty_cache, "collections.defaultdict"),
]


def read_pickle(path: str | Path) -> Any:
    """`torch.load` restricted to tensors, containers and the omegaconf stand-ins; anything else is refused."""
    return safe_torch_load(Path(path), "an MBD checkpoint", SAFE_GLOBALS)


def to_plain(obj: Any) -> Any:
    """omegaconf stand-ins -> plain dicts / lists / scalars (interpolations stay as '${...}' strings)."""
    if isinstance(obj, OmegaDict | OmegaList):
        content = obj.state.get("_content")
        if isinstance(content, dict):
            return {str(k): to_plain(v) for k, v in content.items()}
        if isinstance(content, list):
            return [to_plain(v) for v in content]
        return content  # None, '???' (missing) or an interpolation string
    if isinstance(obj, OmegaNode):
        return to_plain(obj.state.get("_val"))
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return repr(obj)


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w]*(?:\.[\w]+)*)\}")


def resolve(value: Any, root: Mapping[str, Any], depth: int = 0) -> Any:
    """Resolve whole-value absolute interpolations like '${sample_rate}' against the config root."""
    if isinstance(value, dict):
        return {k: resolve(v, root, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, root, depth) for v in value]
    if isinstance(value, str) and (m := _INTERPOLATION.fullmatch(value)) and depth < 16:
        node: Any = root
        for part in m[1].split("."):
            if not isinstance(node, dict) or part not in node:
                return value
            node = node[part]
        return resolve(node, root, depth + 1)
    return value


def band_config(cfg: Any, where: str) -> dict[str, Any]:
    """The parts of a band's training config that inference needs, as plain JSON-able values."""
    root = to_plain(cfg)
    if not isinstance(root, dict) or not isinstance(root.get("diffusion_unet"), dict):
        raise CheckpointError(f"{where}: its cfg has no diffusion_unet section: not an MBD checkpoint")
    out = {k: resolve(root[k], root) for k in CFG_SECTIONS if k in root}
    for key, value in _leaves(out):
        if isinstance(value, str) and ("${" in value or value == "???"):
            raise CheckpointError(f"{where}: config value {key} = {value!r} cannot be resolved")
    return out


def _leaves(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        return [leaf for k, v in d.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [(prefix[:-1], d)]


def _legacy_attention_key(key: str) -> str:
    """audiocraft loads older files whose attention weights lack the `.mha.` level; so do we."""
    return re.sub(r"\.(self_attn|cross_attention)\.(in_proj_weight|out_proj\.weight)$", r".\1.mha.\2", key)


def parse(pkg: Any, source: str) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    """Check an unpickled MBD package; returns (JSON config, per-band tensors: model keys + processor_state.*)."""
    if not isinstance(pkg, dict) or not isinstance(pkg.get("n_bands"), int) or not isinstance(
            pkg.get("sample_rate"), int):
        raise CheckpointError(f"{source} is not an MBD checkpoint (expected 'sample_rate', 'n_bands' and bands)")
    bands, tensors = [], []
    for i in range(pkg["n_bands"]):
        band, where = pkg.get(i), f"{source} band {i}"
        if not isinstance(band, dict) or not {"cfg", "model_state", "processor_state"} <= set(band):
            raise CheckpointError(f"{where}: missing 'cfg' / 'model_state' / 'processor_state'")
        cfg = band_config(band["cfg"], where)
        state: dict[str, torch.Tensor] = {}
        for prefix, part in (("", band["model_state"]), (PROCESSOR_PREFIX, band["processor_state"])):
            for key, t in dict(part).items():
                if not isinstance(t, torch.Tensor):
                    raise CheckpointError(f"{where}: state entry {key!r} is not a tensor")
                name = _legacy_attention_key(str(key)) if prefix == "" else str(key)
                state[prefix + name] = t
        _check_shapes(cfg, pkg["sample_rate"], state, where)
        bands.append(cfg)
        tensors.append(state)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "sample_rate": pkg["sample_rate"],
            "n_bands": pkg["n_bands"], "bands": bands}, tensors


def expected_shapes(cfg: Mapping[str, Any], sample_rate: int, where: str) -> dict[str, tuple[int, ...]]:
    """Every tensor a band's state must hold, as audiocraft's strict loads require: the DiffusionUnet's state
    dict, then the processor's under PROCESSOR_PREFIX (audiocraft's MultiBandProcessor when processor.use:
    statistics and julius' band-split filters; nothing for the plain SampleProcessor)."""
    want = expected_state_shapes(UNetConfig.from_band_cfg(cfg, where))
    processor = SampleProcessor(cfg.get("processor") or {}, sample_rate, where)
    want.update({PROCESSOR_PREFIX + k: tuple(t.shape) for k, t in processor.state_dict().items()})
    return want


def _check_shapes(cfg: Mapping[str, Any], sample_rate: int, state: Mapping[str, torch.Tensor], where: str) -> None:
    want, got = expected_shapes(cfg, sample_rate, where), {k: tuple(t.shape) for k, t in state.items()}

    def part(key: str) -> str:
        return "processor_state" if key.startswith(PROCESSOR_PREFIX) else "model_state"

    if missing := sorted(set(want) - set(got)):
        raise CheckpointError(f"{where}: {part(missing[0])} lacks {len(missing)} tensor(s) its config implies: "
                              f"{', '.join(missing[:6])}")
    if extra := sorted(set(got) - set(want)):
        raise CheckpointError(f"{where}: {part(extra[0])} has tensor(s) its config does not explain: "
                              f"{', '.join(extra[:6])}")
    if bad := [k for k in want if want[k] != got[k]]:
        raise CheckpointError(f"{where}: tensor {bad[0]} has shape {got[bad[0]]}, its config implies {want[bad[0]]}")


def write_converted(config: dict[str, Any], tensors: list[dict[str, torch.Tensor]], folder: Path) -> Path:
    """Write config.json + band{i}/model.safetensors atomically (a temp folder renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for i, state in enumerate(tensors):
            (tmp / f"band{i}").mkdir(parents=True)
            save_file({k: t.detach().clone().contiguous() for k, t in state.items()},
                      str(tmp / f"band{i}" / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as e:
        if is_converted(folder):  # another process finished the same conversion first
            return folder
        raise CheckpointError(f"cannot write the converted MBD weights to {folder}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def convert(th_path: str | Path, folder: str | Path) -> Path:
    """Read an official .th safely and write its converted form (config.json + safetensors) to `folder`."""
    config, tensors = parse(read_pickle(th_path), str(th_path))
    return write_converted(config, tensors, Path(folder))


def is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def read_converted_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/config.json is unreadable: {e}") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder} does not hold MBD weights converted by this version of musicgen")
    return config


def converted_folder(th_path: Path) -> Path:
    """Where the conversion of a file downloaded into the HF cache lives: keyed by its blob (content hash)."""
    blob = th_path.resolve()
    snapshots = th_path.parent.parent
    if snapshots.name == "snapshots":
        repo = snapshots.parent
        key = blob.name if blob.parent.name == "blobs" else f"{th_path.parent.name}-{blob.stat().st_size}"
        return repo / CONVERTED / key
    st = blob.stat()
    return blob.parent / f".{blob.name}.{CONVERTED}-{st.st_size}-{st.st_mtime_ns}"


def forget_download(th_path: Path) -> None:
    """Delete a bad download (the snapshot entry and its blob) so the next call fetches it again."""
    blob = th_path.resolve()
    for p in (th_path, blob):
        with contextlib.suppress(OSError):  # e.g. still mapped on Windows: the next call reports it again
            p.unlink(missing_ok=True)


def download(revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """hf_hub_download of the MBD weights into the standard HF cache, with what-to-do errors."""
    with hub_errors(REPO_ID, revision, f"{REPO_ID}/{FILENAME}", cache_dir):
        return Path(hf_hub_download(REPO_ID, FILENAME, revision=revision, cache_dir=cache_dir))
