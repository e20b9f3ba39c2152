"""Random multi-band diffusion checkpoints in the official `mbd_musicgen_32khz.th` layout, built by audiocraft.

What audiocraft 1.3.0 builds (tests/helpers/audiocraft_oracle.py): every band's network is audiocraft's
`DiffusionUnet`, made by its `builders.get_diffusion_model(cfg)` from the band's config, and its processor is
whatever `builders.get_processor(cfg.processor, sample_rate)` makes (a `MultiBandProcessor`, julius band split
included, when `processor.use`, else a plain `SampleProcessor`); `model_state` / `processor_state` are those
modules' own `state_dict()`s. The package is saved like the released file: `torch.save` of
``{'sample_rate', 'n_bands', i: {'cfg': DictConfig, 'model_state', 'processor_state'}}``, which is what
audiocraft's `loaders.load_diffusion_models` reads back (the tests load every fixture through it too).

What is hand-made (audiocraft cannot make it): the band configs (omegaconf DictConfigs shaped like audiocraft's
config/solver/diffusion/default.yaml as a training run saves it: training-only sections and `${...}`
interpolations included, the UNet options chosen per test); the weights' scale (audiocraft's random init,
then norms perturbed and the codec projection enlarged so that norms and conditioning visibly matter); the
processors' training statistics (random plausible values: audiocraft accumulates them while training); the
legacy attention key names (old files, renamed from audiocraft's); the malicious pickles (attacks on purpose).
"""

from __future__ import annotations

import copy
import functools
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from . import audiocraft_oracle

SAMPLE_RATE = 32_000
BASE_UNET = dict(hidden=8, depth=3, res_blocks=1, norm_groups=4, kernel=8, stride=4, growth=2, max_channels=10_000,
                 dropout=0.0, emb_all_layers=True, bilstm=False, codec_dim=128, transformer=True,
                 cross_attention=False)

# name -> the four bands' diffusion_unet overrides (on top of BASE_UNET). Between them the two sets cover every
# bottleneck option of audiocraft's DiffusionUnet: transformer, transformer + cross-attention, BiLSTM, none.
COMBOS: dict[str, list[dict[str, Any]]] = {
    # like the released models are believed to be: codec latent added at a transformer bottleneck
    "transformer": [{}, {}, {}, {}],
    "mixed": [
        dict(transformer=False, bilstm=True, kernel=4, stride=2, depth=2, norm_groups=2),
        dict(cross_attention=True, hidden=16, growth=1, depth=2),
        dict(transformer=False, emb_all_layers=False, res_blocks=2, growth=1.5, max_channels=10, depth=2,
             norm_groups=2),
        dict(transformer=False, bilstm=True, codec_dim=None, hidden=4, stride=2, kernel=6, norm_groups=1,
             growth=2.0),
    ],
}
# the bottleneck option set of each band of each combo (for test ids and messages)
OPTION_SETS = {"transformer": ["transformer"] * 4,
               "mixed": ["bilstm", "cross_attention", "none", "bilstm_uncond"]}
PROCESSORS = [dict(use=False, power_std=0.4), dict(use=False, power_std=0.4), dict(use=True, power_std=0.4),
              dict(use=True, power_std=0.75)]
NUM_SAMPLES = 10_000  # cfg.processor.num_samples: statistics gathered on more samples are frozen


def solver_cfg(band: int, unet: dict[str, Any], processor: dict[str, Any]) -> Any:
    """A DictConfig with the sections of audiocraft's config/solver/diffusion/default.yaml that matter, plus
    training-only ones and interpolations, as a dora/hydra run would have saved it (hand-made)."""
    cfg = OmegaConf.create({
        "solver": "diffusion", "device": "cuda", "dtype": "float32", "seed": 2036,
        "sample_rate": SAMPLE_RATE, "channels": 1, "n_q": 4,
        "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz",
        "dataset": {"batch_size": 128, "segment_duration": 1,
                    "generate": {"audio": {"sample_rate": "${sample_rate}"}, "segment_duration": 10}},
        "optim": {"lr": 2e-4, "adam": {"betas": [0.9, 0.999]}, "ema": {"use": True, "device": "${device}"}},
        "loss": {"kind": "mse", "norm_power": 0.0},
        "processor": {"name": "multi_band_processor", "use": processor["use"], "n_bands": 8,
                      "num_samples": NUM_SAMPLES, "power_std": processor["power_std"]},
        "resampling": {"use": False, "target_sr": 16_000},
        "filter": {"use": True, "n_bands": 4, "idx_band": band, "cutoffs": None},
        "schedule": {"repartition": "power", "variable_step_batch": True, "beta_t0": 1.0e-5, "beta_t1": 2.9e-2,
                     "beta_exp": 7.5, "num_steps": 1000, "variance": "beta", "clip": 5.0, "rescale": 1.0,
                     "n_bands": None, "noise_scale": 1.0},
        "diffusion_unet": unet,
        "metrics": {"num_stage": 4},
        "dset": "internal/music_10k_32khz",
    })
    OmegaConf.set_struct(cfg, True)
    return cfg


def _rescale(model: torch.nn.Module, g: torch.Generator) -> None:
    """audiocraft's init leaves every norm at weight 1 / bias 0 (a swapped or dropped norm tensor would go
    unnoticed) and its codec projection is small next to the bottleneck: perturb the norms, enlarge the
    projection so the condition clearly changes the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name or name.startswith("norm"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            elif name.startswith("conv_codec."):
                p.mul_(3.0)


def _set_statistics(processor: torch.nn.Module, g: torch.Generator) -> None:
    """Plausible training statistics of a MultiBandProcessor's 8 bands (per-band mean, std, noise power)."""
    n, counts = processor.sum_x.numel(), float(NUM_SAMPLES + 2048)  # past num_samples: frozen, as after training
    mean = 1e-3 * torch.randn(n, generator=g)
    std = 0.01 + 0.1 * torch.rand(n, generator=g)
    target = 0.05 + 0.2 * torch.rand(n, generator=g)
    processor.counts.fill_(counts)
    processor.sum_x.copy_(mean * counts)
    processor.sum_x2.copy_((std**2 + mean**2) * counts)
    processor.sum_target_x2.copy_(target * counts)


def audiocraft_band(cfg: Any, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """One band's (DiffusionUnet, processor) as audiocraft's builders make them from `cfg`, random weights."""
    if not audiocraft_oracle.available():
        if os.environ.get("CI"):  # CI's setup unpacks the oracle: its absence there is a broken setup, not a skip
            pytest.fail(audiocraft_oracle.SKIP_REASON)
        pytest.skip(audiocraft_oracle.SKIP_REASON)
    builders = audiocraft_oracle.oracle().builders
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # audiocraft's init draws from the global RNG: keep other tests' RNG intact
        torch.manual_seed(seed)
        model = builders.get_diffusion_model(cfg)
    _rescale(model, g)
    processor = builders.get_processor(cfg=cfg.processor, sample_rate=SAMPLE_RATE)
    if cfg.processor.use:
        _set_statistics(processor, g)
    return model.eval(), processor


def _legacy_attention(state: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Older files store attention weights without the `.mha.` level (audiocraft's loader renames them back)."""
    return OrderedDict((k.replace(".mha.", "."), v) for k, v in state.items())


def build_package(combo: str = "transformer", seed: int = 0, legacy_attention: bool = False,
                  codec_dim: int = 128) -> dict[Any, Any]:
    """The package audiocraft's loader reads (a fresh copy each call: tests may damage it)."""
    return copy.deepcopy(_package(combo, seed, legacy_attention, codec_dim))


@functools.cache
def _package(combo: str, seed: int, legacy_attention: bool, codec_dim: int) -> dict[Any, Any]:
    pkg: dict[Any, Any] = {"sample_rate": SAMPLE_RATE, "n_bands": 4}
    for i, override in enumerate(COMBOS[combo]):
        unet = {**copy.deepcopy(BASE_UNET), "codec_dim": codec_dim, **override}
        cfg = solver_cfg(i, unet, PROCESSORS[i])
        model, processor = audiocraft_band(cfg, 1000 * seed + i)
        state = model.state_dict()
        pkg[i] = {"cfg": cfg, "model_state": _legacy_attention(state) if legacy_attention else state,
                  "processor_state": processor.state_dict()}
    return pkg


def build_mbd_checkpoint(path: Path, combo: str = "transformer", seed: int = 0,
                         legacy_attention: bool = False, codec_dim: int = 128) -> Path:
    """codec_dim: the EnCodec latent width the band models are conditioned on (128 for the real codec; the
    tiny engine fixtures' codec has 16)."""
    pkg = build_package(combo, seed, legacy_attention, codec_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pkg, path)
    return path


class Exploit:
    """Unpickling this calls `func(*args)`: what a malicious checkpoint would do (hand-made on purpose)."""

    def __init__(self, func: Any, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def build_malicious_checkpoint(path: Path, func: Any, *args: Any) -> Path:
    """A genuine (audiocraft-built) MBD checkpoint whose band-0 processor state hides a call to `func(*args)`:
    the attack is hand-made on purpose, audiocraft never writes one."""
    pkg = build_package("transformer")
    pkg[0]["processor_state"] = OrderedDict(counts=Exploit(func, *args))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pkg, path)
    return path
