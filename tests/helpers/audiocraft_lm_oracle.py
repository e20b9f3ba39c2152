"""audiocraft 1.3.0's own MusicGen, as the oracle of audiocraft-format exports. Run as a script, in a process of
its own (its imports would clash with the MBD oracle's stubbed `audiocraft` package):

    python tests/helpers/audiocraft_lm_oracle.py VARIANT OUT_FOLDER PROMPT FRAMES

In a process whose HF cache (HF_HUB_CACHE, offline) holds a tiny T5 as "t5-base" and a tiny transformers EnCodec
as "facebook/encodec_32khz", it
1. builds a tiny random LM with audiocraft's own builders (`builders.get_lm_model`) from its own config files
   (config/model/lm/default.yaml + musicgen_lm.yaml + config/conditioner/text2music.yaml or chroma2music.yaml,
   composed as hydra would, with tiny sizes), VARIANT = mono | stereo | melody;
2. writes it with audiocraft's own `export_lm` (state_dict.bin) and `export_pretrained_compression_model`
   (compression_state_dict.bin, a reference to facebook/encodec_32khz) into OUT_FOLDER;
3. loads OUT_FOLDER with audiocraft's own `MusicGen.get_pretrained` and generates PROMPT greedily
   (use_sampling=False, cfg_coef 3), FRAMES frames; saves its tokens and audio to OUT_FOLDER/oracle.pt.
VARIANT = encodec instead builds a tiny full audiocraft EnCodec (`build_codec`).

Stubs, for imports the path never uses (xformers, spacy, num2words, flashy, demucs' pretrained loader: the melody
model is run without a melody, whose null condition skips demucs) and one real function stood in: librosa's
chroma filter bank (only built, never applied without a melody) by transformers' `chroma_filter_bank`. One
patch: T5Conditioner's table of T5 widths gets the width of the cached "t5-base" (the tiny T5's 32), so its
output_proj fits. AUDIOCRAFT_ORACLE_SIZES (JSON: dim, num_heads, num_layers, card) builds other sizes.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch
from audiocraft_oracle import _module, _Unused, trusted_torch_load  # this folder is the script's sys.path[0]

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / ".venv" / "oracles" / "audiocraft-1.3.0"
TINY = {"dim": 128, "num_heads": 2, "num_layers": 2, "card": 2048}  # head size 64, as every released model
SIZES = json.loads(os.environ.get("AUDIOCRAFT_ORACLE_SIZES", "null")) or TINY  # a real-size measurement sets them


def _stubs() -> None:
    from transformers.audio_utils import chroma_filter_bank

    def chroma(sr: int, n_fft: int, tuning: float = 0.0, n_chroma: int = 12, **kw: Any) -> Any:
        return chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=n_chroma, sampling_rate=sr,
                                  tuning=tuning).astype("float32")  # librosa's default dtype

    _module("xformers", Path("/nonexistent"))
    _module("xformers.ops", LowerTriangularMask=_Unused, memory_efficient_attention=_Unused,
            unbind=lambda x, dim: torch.unbind(x, dim))  # xformers.ops.unbind is torch.unbind without a copy
    _module("spacy", load=_Unused)
    _module("num2words", num2words=_Unused)
    _module("flashy", Path("/nonexistent"), distrib=types.SimpleNamespace(is_distributed=lambda: False))
    _module("flashy.distrib", is_distributed=lambda: False, rank=lambda: 0, world_size=lambda: 1)
    _module("librosa", Path("/nonexistent"))
    _module("librosa.filters", chroma=chroma)
    sources = ["drums", "bass", "other", "vocals"]
    demucs = types.SimpleNamespace(sources=sources, samplerate=44100, audio_channels=2)
    demucs.to = lambda device: demucs
    _module("demucs", Path("/nonexistent"))
    _module("demucs.pretrained", get_model=lambda name: demucs)
    pkg = SOURCE / "audiocraft"
    _module("audiocraft", pkg, __version__="1.3.0")
    for sub in ("models", "modules", "data", "utils", "solvers"):
        _module(f"audiocraft.{sub}", pkg / sub)
    _module("audiocraft.solvers.compression", CompressionSolver=_Unused)
    _module("audiocraft.data.audio", audio_read=_Unused)  # file reading: av
    _module("audiocraft.data.audio_dataset", SegmentInfo=_Unused)  # datasets
    _module("audiocraft.environment", AudioCraftEnvironment=_Unused)  # cluster settings


def _yaml(path: str) -> Any:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(SOURCE / "config" / path)
    cfg.pop("defaults", None)
    return cfg


def config(variant: str) -> Any:
    """The training config as hydra composes it for MusicGen (model/lm/musicgen_lm + its conditioner), tiny."""
    from omegaconf import OmegaConf

    melody = variant == "melody"
    channels = 2 if variant == "stereo" else 1
    n_q = 4 * channels
    delays = [k // channels for k in range(n_q)]
    cfg = OmegaConf.merge(
        _yaml("model/lm/default.yaml"), _yaml("model/lm/musicgen_lm.yaml"),
        _yaml("conditioner/chroma2music.yaml" if melody else "conditioner/text2music.yaml"),
        {"sample_rate": 32000, "channels": channels, "device": "cpu", "dtype": "float32",
         "dataset": {"segment_duration": 30.0},
         "transformer_lm": {**SIZES, "n_q": n_q, "memory_efficient": False, "custom": True},
         "codebooks_pattern": {"delay": {"delays": delays}},
         "interleave_stereo_codebooks": {"use": channels == 2, "per_timestep": False}})
    return cfg


def _randomize(lm: torch.nn.Module, seed: int) -> None:
    """audiocraft's init leaves norms at 1 / 0: give every parameter random values, so a swapped norm shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)


def _t5_width(cond: Any) -> None:
    """T5Conditioner's table of T5 widths, told the width of the "t5-base" in the HF cache (the tiny one: 32)."""
    from transformers import AutoConfig

    width = AutoConfig.from_pretrained("t5-base").d_model
    cond.T5Conditioner.MODELS_DIMS = {**cond.T5Conditioner.MODELS_DIMS, "t5-base": width}


def _export(export_fn: Any, model: torch.nn.Module, cfg: Any, out_file: Path, **extra: Any) -> None:
    """A training checkpoint of `model` as audiocraft's solvers save it, then audiocraft's own export of it."""
    raw = out_file.with_name(out_file.name + ".training")
    torch.save({"best_state": {"model": model.state_dict()}, "xp.cfg": cfg, **extra}, raw)
    with trusted_torch_load():  # our own file: it holds an omegaconf config
        export_fn(raw, out_file)
    raw.unlink()


def build(variant: str, out: Path, seed: int = 0) -> None:
    """A tiny random LM from audiocraft's builders, exported with audiocraft's own export functions."""
    cond = importlib.import_module("audiocraft.modules.conditioners")
    _t5_width(cond)
    builders = importlib.import_module("audiocraft.models.builders")
    export = importlib.import_module("audiocraft.utils.export")
    torch.manual_seed(seed)
    cfg = config(variant)
    lm = builders.get_lm_model(cfg)
    _randomize(lm, seed)
    _export(export.export_lm, lm, cfg, out / "state_dict.bin", fsdp_best_state=None)
    export.export_pretrained_compression_model("facebook/encodec_32khz", out / "compression_state_dict.bin")


def build_codec(out: Path, frames: int, seed: int = 0) -> None:
    """A tiny random full EnCodec from audiocraft's own builder and config (model/encodec/default.yaml +
    encodec_large_nq4_s640.yaml: musicgen's 32 kHz codec, narrower), written with audiocraft's `export_encodec`
    as compression_state_dict.bin; audiocraft's decode of random codes goes to oracle_codec.pt."""
    from omegaconf import OmegaConf

    builders = importlib.import_module("audiocraft.models.builders")
    export = importlib.import_module("audiocraft.utils.export")
    seanet = importlib.import_module("audiocraft.modules.seanet")  # builders reaches it as audiocraft.modules.X
    sys.modules["audiocraft.modules"].__dict__.update(SEANetEncoder=seanet.SEANetEncoder,
                                                      SEANetDecoder=seanet.SEANetDecoder)
    cfg = OmegaConf.merge(_yaml("model/encodec/default.yaml"), _yaml("model/encodec/encodec_large_nq4_s640.yaml"),
                          {"sample_rate": 32000, "channels": 1, "device": "cpu",
                           "seanet": {"n_filters": 4, "dimension": 16}})
    torch.manual_seed(seed)
    model = builders.get_compression_model(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("inited"):
                t.fill_(1)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * (1.0 if "_codebook" in name else 0.3))
    _export(export.export_encodec, model, cfg, out / "compression_state_dict.bin")
    codes = torch.randint(0, 2048, (1, 4, frames), generator=gen)
    with torch.no_grad():
        audio = model.decode(codes)
    torch.save({"codes": codes, "audio": audio}, out / "oracle_codec.pt")


def generate(out: Path, prompt: str, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """audiocraft's MusicGen.get_pretrained(folder), greedy, CFG 3: the tokens [1, K, frames] and the audio
    [1, C, S] it decodes them to."""
    cond = importlib.import_module("audiocraft.modules.conditioners")
    _t5_width(cond)
    musicgen = importlib.import_module("audiocraft.models.musicgen")
    mg = musicgen.MusicGen.get_pretrained(str(out), device="cpu")
    mg.set_generation_params(use_sampling=False, cfg_coef=3.0, duration=frames / mg.frame_rate)
    audio, tokens = mg.generate([prompt], return_tokens=True)
    return tokens, audio


def main() -> None:
    variant, out, prompt, frames = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    _stubs()
    out.mkdir(parents=True, exist_ok=True)
    if variant == "encodec":
        build_codec(out, frames)
        return
    build(variant, out)
    if frames:
        tokens, audio = generate(out, prompt, frames)
        torch.save({"tokens": tokens, "audio": audio}, out / "oracle.pt")


if __name__ == "__main__":
    main()
