"""The melody's stems: demucs' htdemucs keeps vocals + other before the chroma, as audiocraft's ChromaStemConditioner.

audiocraft (`_get_stemmed_wav`): the melody at 32 kHz -> `convert_audio(wav, 32000, 44100, 2)` (mono duplicated
to 2 channels, julius resample) -> `apply_model(htdemucs, wav)` (shifts=1, split=True, overlap=0.25, float32) ->
sources vocals + other summed -> `convert_audio(mix, 44100, 32000, 1)` -> chroma. We follow it step by step with
demucs' own code, except the random shift: demucs draws it from Python's global `random` on every call (so
audiocraft's melody path is not reproducible); here it is drawn from a generator seeded by the melody's own
samples (`shifts_of`), so the same melody always gives the same stems: same request, same seed, same music, and
every take and later request with that melody reuses them from the cache (a shift drawn from the request's seed
would make takes, whose seeds differ, separate again). `_apply` is apply_model's shift branch with that offset
(demucs/apply.py, 4.1.0).

The network comes from the Hub repo adefossez/HTDemucs (what demucs 4.1.0's `get_model('htdemucs')` reads,
demucs/hf.py): `htdemucs.yaml` (the bag: model signatures, weights, segment) and `<sig>.safetensors`, whose
metadata names the class to build (`klass`) and its `args` / `kwargs` (JSON). demucs imports whatever class
the metadata names; we build only the classes in ALLOWED_CLASSES, checked by exact name before anything is
imported or built, with plain-JSON arguments. Loaded lazily on first use and kept (one per device); the
separated stems are kept in a bounded LRU (`StemCache`) keyed by the melody's samples, rate and shift.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import julius
import torch
import yaml

from .errors import CheckpointError, DownloadError, MusicGenError

log = logging.getLogger(__name__)

REPO = "adefossez/HTDemucs"
# TODO: pin to the repo's commit (40 hex digits) once it is known: it could not be read from here (no Hub access).
REVISION = "main"
NAME = "htdemucs"  # the bag: NAME.yaml
ALLOWED_CLASSES = {"demucs.htdemucs.HTDemucs": "HTDemucs"}  # metadata `klass` -> demucs.htdemucs attribute
KEEP = ("vocals", "other")  # audiocraft's stem_indices order: summed in this order
DEMUCS_RATE, DEMUCS_CHANNELS = 44100, 2  # what htdemucs separates
OVERLAP = 0.25  # apply_model's defaults, as audiocraft calls it
CACHE_BYTES = 64 << 20
ENV_DEFAULT = "MUSICGEN_SEPARATE_MELODY"  # "0": separate_melody=None means off (a deployment without the Hub)
HINT = "or pass separate_melody=False (CLI: --no-separate) to use the melody without separating its stems"


class SeparatorUnavailable(DownloadError):
    """htdemucs could not be fetched (and is not in the HF cache): separation is impossible here."""


class SeparationStopped(MusicGenError):
    """The request was stopped while its melody was being separated."""


def wanted(flag: bool | None) -> bool:
    """GenerationOptions.separate_melody -> separate? None: on (audiocraft), unless $MUSICGEN_SEPARATE_MELODY=0."""
    if flag is not None:
        return flag
    return os.environ.get(ENV_DEFAULT, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Separator:
    """demucs' BagOfModels (htdemucs: one HTDemucs) and where it came from (part of the cache key)."""

    bag: Any  # demucs.apply.BagOfModels, eval mode, float32
    origin: str

    @property
    def keep(self) -> list[int]:
        return [self.bag.sources.index(s) for s in KEEP]


def shifts_of(seed: int, models: int, rate: int = DEMUCS_RATE) -> tuple[int, ...]:
    """The random shift of each model of the bag (apply_model shifts=1: `random.randint(0, int(0.5 * rate))`
    per model, in order), drawn from `random.Random(seed)` instead of the global `random`."""
    rng = random.Random(seed)
    return tuple(rng.randint(0, int(0.5 * rate)) for _ in range(models))


def _plain(value: Any, where: str) -> Any:
    """A JSON value (demucs' fraction encoding decoded) or CheckpointError: nothing else may reach a constructor."""
    if isinstance(value, dict):
        if value.get("_type") == "fraction" and set(value) == {"_type", "numerator", "denominator"}:
            n, d = value["numerator"], value["denominator"]
            if type(n) is int and type(d) is int and d != 0:
                return Fraction(n, d)
            raise CheckpointError(f"{where}: bad fraction {value!r}")
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, where) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    raise CheckpointError(f"{where}: {type(value).__name__} is not a plain JSON value")


def model_spec(metadata: dict[str, str] | None, where: str) -> tuple[str, list[Any], dict[str, Any]]:
    """safetensors metadata -> (allowed class name, args, kwargs), checked before any import; else CheckpointError."""
    meta = metadata or {}
    klass = meta.get("klass")
    if klass not in ALLOWED_CLASSES:
        raise CheckpointError(f"{where} asks for class {klass!r}: only demucs' {', '.join(ALLOWED_CLASSES)} is "
                              "built from a stems checkpoint")
    if "structure" in meta:  # a diffq-quantized state (other demucs models): not htdemucs
        raise CheckpointError(f"{where} holds a quantized state, which is not supported")
    try:
        args, kwargs = json.loads(meta["args"]), json.loads(meta["kwargs"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where} has no valid JSON args / kwargs in its metadata") from e
    args, kwargs = _plain(args, where), _plain(kwargs, where)
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: args must be a JSON list and kwargs a JSON object")
    return ALLOWED_CLASSES[klass], args, kwargs


def build_model(path: Path) -> torch.nn.Module:
    """One `<sig>.safetensors` -> its demucs model (eval, float32): class and arguments checked first."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        name, args, kwargs = model_spec(f.metadata(), path.name)
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    from demucs import htdemucs

    klass = getattr(htdemucs, name)
    try:
        model = klass(*args, **kwargs)
        model.load_state_dict(state)  # strict: every tensor present and of its shape
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path.name} does not build a {name}: {e}") from e
    return model.float().eval()


def from_folder(folder: Path, name: str = NAME) -> Separator:
    """A folder holding `<name>.yaml` and its `<sig>.safetensors` (a Hub snapshot) -> Separator."""
    from demucs.apply import BagOfModels

    try:
        bag = yaml.safe_load((folder / f"{name}.yaml").read_text())
        sigs, weights, segment = list(bag["models"]), bag.get("weights"), bag.get("segment")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / f'{name}.yaml'} is not a demucs bag ({e})") from e
    if not sigs or not all(isinstance(s, str) and s.isalnum() for s in sigs):
        raise CheckpointError(f"{name}.yaml: bad model signatures {sigs!r}")
    models = [build_model(folder / f"{sig}.safetensors") for sig in sigs]
    return Separator(BagOfModels(models, weights, segment).eval(), f"{folder.name}/{name}:{','.join(sigs)}")


def download(repo: str = REPO, revision: str = REVISION) -> Path:
    """The bag and its weights through the HF cache (HF_HUB_OFFLINE=1 with a populated cache works)."""
    from huggingface_hub import hf_hub_download

    from .hub import hub_errors

    try:
        with hub_errors(repo, revision, f"{repo} (demucs {NAME}, to separate the melody's stems)"):
            bag_file = Path(hf_hub_download(repo, f"{NAME}.yaml", revision=revision))
            sigs = yaml.safe_load(bag_file.read_text()).get("models") or []
            for sig in sigs:
                if not (isinstance(sig, str) and sig.isalnum()):
                    raise CheckpointError(f"{repo}/{NAME}.yaml: bad model signature {sig!r}")
                hf_hub_download(repo, f"{sig}.safetensors", revision=revision)
    except DownloadError as e:
        raise SeparatorUnavailable(f"{e}; {HINT}") from e.__cause__
    return bag_file.parent


_separators: dict[str, Separator] = {}
_load_lock = threading.Lock()


def separator(device: torch.device) -> Separator:
    """htdemucs on `device`, loaded on first use and kept."""
    with _load_lock:
        key = str(device)
        if key not in _separators:
            sep = from_folder(download())
            _separators[key] = Separator(sep.bag.to(device), sep.origin)
        return _separators[key]


def use(sep: Separator, device: torch.device) -> None:
    """Install a separator for `device` (tests, or a caller that loaded it itself)."""
    with _load_lock:
        _separators[str(device)] = sep


class StemCache:
    """LRU of separated melodies (CPU tensors), bounded in bytes; thread-safe."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        with self._lock:
            if size > self.max_bytes or key in self._items:
                return
            self._items[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()

    def __len__(self) -> int:
        return len(self._items)


cache = StemCache()


def digest(wave: torch.Tensor) -> bytes:
    """The melody's samples and shape, hashed (once per separation: the shift's seed and the cache key)."""
    h = hashlib.sha256(wave.detach().cpu().float().contiguous().numpy().tobytes())
    h.update(json.dumps(list(wave.shape)).encode())
    return h.digest()


def content_seed(wave: torch.Tensor, hashed: bytes | None = None) -> int:
    """A seed from the melody's samples (and shape): the same melody always draws the same shift."""
    return int.from_bytes((hashed or digest(wave))[:8], "little")


def key_of(hashed: bytes, sample_rate: int, out_rate: int, shifts: tuple[int, ...], sep: Separator,
           device: str) -> str:
    meta = json.dumps([sample_rate, out_rate, shifts, sep.origin, device]).encode()
    return hashlib.sha256(hashed + meta).hexdigest()


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    """float32 throughout, as audiocraft's TorchAutocast(dtype=float32) around the separation."""
    with torch.autocast(device.type, enabled=False), torch.no_grad():
        yield


def _apply(model: torch.nn.Module, mix: torch.Tensor, offset: int, stop: Callable[[dict], None]) -> torch.Tensor:
    """apply_model(model, mix, shifts=1) with `random.randint` answered by `offset`: [B, C, S] -> [B, 4, C, S]."""
    from demucs.apply import TensorChunk, apply_model

    length = mix.shape[-1]
    max_shift = int(0.5 * model.samplerate)
    padded = TensorChunk(mix).padded(length + 2 * max_shift)
    shifted = TensorChunk(padded, offset, length + max_shift - offset)
    out = apply_model(model, shifted, shifts=0, split=True, overlap=OVERLAP, device=mix.device, callback=stop)
    return out[..., max_shift - offset:]


def separate(wave: torch.Tensor, sample_rate: int, seed: int | None, out_rate: int, device: torch.device,
             stopped: Callable[[], bool] | None = None, sep: Separator | None = None) -> torch.Tensor:
    """Melody [N, S] (mono) or [N, C, S] at `sample_rate` -> vocals + other, mono, at `out_rate`:
    [N, S']. The shift comes from `seed`, or with None (what generation uses) from the melody's samples
    (`content_seed`); the same melody and seed give the same stems, a melody separated before comes from the
    cache."""
    sep = sep or separator(device)
    x = wave if wave.dim() == 3 else wave[:, None]  # [N, S] mono -> [N, 1, S]
    hashed = digest(x)
    shifts = shifts_of(content_seed(x, hashed) if seed is None else seed, len(sep.bag.models), sep.bag.samplerate)
    key = key_of(hashed, sample_rate, out_rate, shifts, sep, str(device))
    if (hit := cache.get(key)) is not None:
        return hit.clone()

    def stop(_: dict) -> None:  # demucs' callback, at the start and end of every chunk
        if stopped is not None and stopped():
            raise SeparationStopped("stopped while separating the melody")

    with _no_autocast(device):
        mix = x.to(device=device, dtype=torch.float32)
        # convert_audio(wav, sr, 44100, 2): channels first (mono duplicated), then julius' resample
        mix = mix.expand(-1, sep.bag.audio_channels, -1) if mix.shape[1] == 1 else mix[:, : sep.bag.audio_channels]
        mix = julius.resample_frac(mix, sample_rate, sep.bag.samplerate)  # [N, 2, S44]
        est: torch.Tensor | float = 0.0
        totals = [0.0] * len(sep.bag.sources)
        for model, weights, offset in zip(sep.bag.models, sep.bag.weights, shifts, strict=True):  # BagOfModels
            out = _apply(model, mix, offset, stop)
            for k, w in enumerate(weights):
                out[:, k] *= w
                totals[k] += w
            est = est + out
        assert isinstance(est, torch.Tensor)
        for k in range(est.shape[1]):
            est[:, k] /= totals[k]
        both = est[:, sep.keep].sum(1)  # [N, 2, S44]: vocals + other
        both = julius.resample_frac(both.mean(dim=1, keepdim=True), sep.bag.samplerate, out_rate)  # [N, 1, S']
    result = both[:, 0].cpu()  # [N, S']
    cache.put(key, result)
    return result.clone()
