"""The checkpoints the studio offers: which of Meta's Hub repos a (size, stereo, melody) choice needs, with size and
memory hints for the page; the models the Space's owner adds (OwnerModel); the time budget of a ZeroGPU call."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidInputError

SIZES = ("small", "medium", "large")
DECODER_LABELS = {"encodec": "EnCodec", "mbd": "Multi-band diffusion"}  # options.DECODERS, as the page names them


@dataclass(frozen=True)
class HubModel:
    """A Hub checkpoint the app can pick, with rough size and memory figures for the UI (approximate:
    float32 weights on disk and in CPU RAM; float16 language model on a GPU). `converted`: the repo ships
    pytorch_model*.bin only, turned once into a safetensors copy of the same size next to it in the HF cache."""

    repo: str
    params: str
    download_gb: float
    ram_gb: float
    vram_gb: float
    converted: bool = False

    @property
    def hint(self) -> str:
        disk = f" (.bin weights, converted once: ≈{2 * self.download_gb:g} GB on disk)" if self.converted else ""
        return (f"`{self.repo}`: {self.params} parameters, ≈{self.download_gb:g} GB download on first use{disk}, "
                f"≈{self.ram_gb:g} GB RAM on CPU or ≈{self.vram_gb:g} GB GPU memory")


#: Repos whose transformers weights are pickles only (no safetensors on main): see musicgen/convert.py.
PICKLE_ONLY = {"facebook/musicgen-medium", "facebook/musicgen-large"}


def _variants(size: str, melody: bool, params: str, gb: tuple[float, float], ram: float, vram: float) -> dict:
    """The mono and stereo repos of one size; `gb`: their download sizes (mono, stereo)."""
    base = {"small": "musicgen-{}small", "medium": "musicgen-{}medium", "large": "musicgen-{}large"}[size]
    if melody:
        base = "musicgen-{}melody" + ("-large" if size == "large" else "")
    repos = {stereo: "facebook/" + base.format("stereo-" if stereo else "") for stereo in (False, True)}
    return {(size, stereo, melody): HubModel(repo, params, gb[stereo], ram, vram, converted=repo in PICKLE_ONLY)
            for stereo, repo in repos.items()}


#: (size, stereo, melody) -> checkpoint. There is no small melody model: small + melody uses medium.
#: Download sizes, in GB (1e9 bytes), of what hub.py fetches: the float32 weights file(s) (safetensors, or for
#: medium / large the pytorch_model*.bin), the rest is < 3 MB. Not read off the Hub (unreachable here): counted
#: as 4 bytes x every tensor of transformers' model built on the meta device from each config (LM + t5-base
#: encoder + EnCodec 32 kHz incl. codebook buffers), the tied T5 embedding once, plus the 2048 x width sinusoid
#: table the 2023 files hold. Checked against the one size known: musicgen-small's model.safetensors, 2.36 GB.
#: Stereo: 4 more codebook embeddings and heads.
CHECKPOINTS: dict[tuple[str, bool, bool], HubModel] = {
    **_variants("small", False, "300M", (2.4, 2.4), 3.5, 2),
    **_variants("medium", False, "1.5B", (8.0, 8.1), 9, 5),
    **_variants("large", False, "3.3B", (13.7, 13.9), 15, 8),
    **_variants("medium", True, "1.5B", (6.2, 6.3), 7, 4),
    **_variants("large", True, "3.3B", (10.5, 10.6), 12, 6.5),
}
ALL_REPOS = sorted({c.repo for c in CHECKPOINTS.values()})
MBD_REPO = "facebook/multiband-diffusion"  # the diffusion decoder's weights (musicgen.mbd_checkpoint.REPO_ID)


def choose_checkpoint(size: str, stereo: bool, melody: bool) -> tuple[HubModel, str | None]:
    """-> (checkpoint, a notice for the user when the choice had to be adjusted, else None)."""
    if size not in SIZES:
        raise InvalidInputError(f"model size must be one of {', '.join(SIZES)}, got {size!r}")
    if melody and size == "small":
        ckpt = CHECKPOINTS[("medium", bool(stereo), True)]
        return ckpt, f"There is no small melody model: using {ckpt.repo} ({ckpt.params}) for the melody."
    return CHECKPOINTS[(size, bool(stereo), bool(melody))], None


SEPARATION_GPU_SECONDS = 15  # htdemucs on 30 s of melody on a GPU takes a few seconds; its first load more


def gpu_seconds(model_size: str, duration: float, decoder: str, takes: int = 1, separation: bool = False) -> int:
    """A ZeroGPU time budget for one request: model-dependent seconds per second of audio plus set-up,
    more with the diffusion decoder (80 UNet passes per clip), times the takes (made one after another there), plus
    the melody's separation (once: the takes share its stems)."""
    per_second = {"small": 0.5, "medium": 1.2, "large": 2.2}.get(model_size, 2.2)
    seconds = 15 + takes * duration * per_second * (2.5 if decoder == "mbd" else 1.0)
    seconds += SEPARATION_GPU_SECONDS if separation else 0
    return int(min(max(seconds, 30), 300))


def describe_oom(device: torch.device | str | None) -> str:
    where = "GPU" if str(device).startswith("cuda") else "the server's"
    return (f"out of memory: {where} memory is too small for this request. Try a smaller model, a shorter "
            "duration, or mono instead of stereo")


ENV_MODELS = "MUSICGEN_MODELS"  # a Space's variable: the owner's models, as --models takes them
MODEL_NAME = re.compile(r"[\w .()+'/-]{1,60}")  # a display name: what the page shows and the API's `model` takes


@dataclass(frozen=True)
class OwnerModel:
    """A model the Space's owner offers beside Meta's (`--models` / MUSICGEN_MODELS): a Hub id or a local folder
    that `MusicGen.from_pretrained` loads, under a display name. Only these may be asked for by name: a public
    link must not let a visitor make the server download any repository."""

    name: str
    repo: str

    @property
    def download_gb(self) -> float | None:
        """The weights' size for a local folder (GB); None for a Hub id (not known before the download)."""
        folder = Path(self.repo)
        if not folder.is_dir():
            return None
        files = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()]
        return sum(p.stat().st_size for p in files) / 1e9

    @property
    def hint(self) -> str:
        gb = self.download_gb
        where = (f"a local folder, ≈{gb:.2g} GB of weights" if gb is not None else
                 "a Hub repo, downloaded on first use (its size depends on the model)")
        return f"**{self.name}**: `{self.repo}` ({where}), offered by this Space's owner"


def parse_models(spec: str) -> tuple[OwnerModel, ...]:
    """The owner's models from "Name=source; Other name=source" (or one per line); a bare source is named after
    itself. Sources are Hub ids ("user/repo") or local folders."""
    models: dict[str, OwnerModel] = {}
    for part in re.split(r"[;\n]", spec):
        if not part.strip():
            continue
        name, _, source = part.rpartition("=") if "=" in part else (part, "", part)
        name, source = name.strip(), source.strip()
        if not MODEL_NAME.fullmatch(name):
            raise InvalidInputError(f"model name {name!r} (for {source!r}): use 1-60 letters, digits, spaces or "
                                    ". ( ) + ' / - _, as in \"My punk=user/musicgen-punk\"")
        if not source or (not Path(source).is_dir() and source.count("/") != 1):
            raise InvalidInputError(f"model {name!r}: {source!r} is neither a local folder nor a Hub id (user/repo)")
        if name in models or name in SIZES:
            raise InvalidInputError(f"model name {name!r} is used twice (or is one of Meta's sizes): name each "
                                    "model once")
        models[name] = OwnerModel(name, source)
    return tuple(models.values())
