"""Random multi-band diffusion checkpoints in the official `mbd_musicgen_32khz.th` layout.

`torch.save` of ``{'sample_rate', 'n_bands', i: {'cfg': DictConfig, 'model_state', 'processor_state'}}``
with real omegaconf configs shaped like audiocraft's diffusion solver config (unused training sections
and `${...}` interpolations included). The state-dict key names and shapes are written here from
audiocraft's module tree (models/unet.py, modules/transformer.py), independently of musicgen/unet.py,
so loading them checks our names rather than echoing them.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

SAMPLE_RATE = 32_000
BASE_UNET = dict(hidden=8, depth=3, res_blocks=1, norm_groups=4, kernel=8, stride=4, growth=2, max_channels=10_000,
                 dropout=0.0, emb_all_layers=True, bilstm=False, codec_dim=128, transformer=True,
                 cross_attention=False)

# name -> the four bands' diffusion_unet overrides (on top of BASE_UNET)
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
PROCESSORS = [dict(use=False, power_std=0.4), dict(use=False, power_std=0.4), dict(use=True, power_std=0.4),
              dict(use=True, power_std=0.75)]


def solver_cfg(band: int, unet: dict[str, Any], processor: dict[str, Any]) -> Any:
    """A DictConfig with the sections of audiocraft's config/solver/diffusion/default.yaml that matter, plus
    training-only ones and interpolations, as a dora/hydra run would have saved it."""
    cfg = OmegaConf.create({
        "solver": "diffusion", "device": "cuda", "dtype": "float32", "seed": 2036,
        "sample_rate": SAMPLE_RATE, "channels": 1, "n_q": 4,
        "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz",
        "dataset": {"batch_size": 128, "segment_duration": 1,
                    "generate": {"audio": {"sample_rate": "${sample_rate}"}, "segment_duration": 10}},
        "optim": {"lr": 2e-4, "adam": {"betas": [0.9, 0.999]}, "ema": {"use": True, "device": "${device}"}},
        "loss": {"kind": "mse", "norm_power": 0.0},
        "processor": {"name": "multi_band_processor", "use": processor["use"], "n_bands": 8,
                      "num_samples": 10_000, "power_std": processor["power_std"]},
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


def _param(g: torch.Generator, *shape: int, fan_in: int | None = None, around: float = 0.0) -> torch.Tensor:
    scale = (1.0 / fan_in) ** 0.5 if fan_in else 0.1
    return around + scale * torch.randn(*shape, generator=g)


def official_state(unet: dict[str, Any], g: torch.Generator, channels: int = 1, num_steps: int = 1000,
                   legacy_attention: bool = False) -> OrderedDict[str, torch.Tensor]:
    """Random weights under audiocraft's DiffusionUnet state-dict names."""
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    k = unet["kernel"]

    def norm(prefix: str, c: int) -> None:
        sd[f"{prefix}.weight"] = _param(g, c, around=1.0)
        sd[f"{prefix}.bias"] = _param(g, c)

    def res_blocks(prefix: str, c: int) -> None:
        for r in range(unet["res_blocks"]):
            for n in (1, 2):
                norm(f"{prefix}.res_blocks.{r}.norm{n}", c)
                sd[f"{prefix}.res_blocks.{r}.conv{n}.weight"] = _param(g, c, c, 3, fan_in=3 * c)
                sd[f"{prefix}.res_blocks.{r}.conv{n}.bias"] = _param(g, c)

    chin, hidden, depth = channels, unet["hidden"], unet["depth"]
    for d in range(depth):
        sd[f"encoders.{d}.conv.weight"] = _param(g, hidden, chin, k, fan_in=chin * k)
        norm(f"encoders.{d}.norm", hidden)
        res_blocks(f"encoders.{d}", hidden)
        dec = f"decoders.{depth - 1 - d}"
        res_blocks(dec, hidden)
        norm(f"{dec}.norm", hidden)
        sd[f"{dec}.convtr.weight"] = _param(g, hidden, chin, k, fan_in=hidden * k // unet["stride"])
        if d == 0:
            sd["embedding.weight"] = _param(g, num_steps, hidden, around=0.0) * 5
        elif unet["emb_all_layers"]:
            sd[f"embeddings.{d - 1}.weight"] = _param(g, num_steps, hidden) * 5
        chin, hidden = hidden, min(int(hidden * unet["growth"]), unet["max_channels"])
    C = chin
    if unet["bilstm"]:
        for layer in (0, 1):
            for suffix in ("", "_reverse"):
                cin = C if layer == 0 else 2 * C
                sd[f"bilstm.lstm.weight_ih_l{layer}{suffix}"] = _param(g, 4 * C, cin, fan_in=cin)
                sd[f"bilstm.lstm.weight_hh_l{layer}{suffix}"] = _param(g, 4 * C, C, fan_in=C)
                sd[f"bilstm.lstm.bias_ih_l{layer}{suffix}"] = _param(g, 4 * C)
                sd[f"bilstm.lstm.bias_hh_l{layer}{suffix}"] = _param(g, 4 * C)
        sd["bilstm.linear.weight"] = _param(g, C, 2 * C, fan_in=2 * C)
        sd["bilstm.linear.bias"] = _param(g, C)
    if unet["transformer"]:
        mha = "" if legacy_attention else "mha."
        for i in range(6):
            p = f"transformer.layers.{i}"
            attns = ["self_attn"] + (["cross_attention"] if unet["cross_attention"] else [])
            for a in attns:
                sd[f"{p}.{a}.{mha}in_proj_weight"] = _param(g, 3 * C, C, fan_in=C)
                sd[f"{p}.{a}.{mha}out_proj.weight"] = _param(g, C, C, fan_in=C)
            sd[f"{p}.linear1.weight"] = _param(g, 2048, C, fan_in=C)
            sd[f"{p}.linear2.weight"] = _param(g, C, 2048, fan_in=2048)
            for n in ["norm1", "norm2"] + (["norm_cross"] if unet["cross_attention"] else []):
                norm(f"{p}.{n}", C)
    if unet["codec_dim"] is not None:
        sd["conv_codec.weight"] = _param(g, C, unet["codec_dim"], 1, fan_in=unet["codec_dim"]) * 3
        sd["conv_codec.bias"] = _param(g, C)
    return sd


def processor_state(processor: dict[str, Any], g: torch.Generator) -> OrderedDict[str, torch.Tensor]:
    if not processor["use"]:
        return OrderedDict()
    n, counts = 8, 10_000.0
    mean = 1e-3 * torch.randn(n, generator=g)
    std = 0.01 + 0.1 * torch.rand(n, generator=g)
    target = 0.05 + 0.2 * torch.rand(n, generator=g)
    return OrderedDict(counts=torch.tensor([counts]), sum_x=mean * counts, sum_x2=(std**2 + mean**2) * counts,
                       sum_target_x2=target * counts)


def build_package(combo: str = "transformer", seed: int = 0, legacy_attention: bool = False,
                  codec_dim: int = 128) -> dict[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    pkg: dict[Any, Any] = {"sample_rate": SAMPLE_RATE, "n_bands": 4}
    for i, override in enumerate(COMBOS[combo]):
        unet = {**copy.deepcopy(BASE_UNET), "codec_dim": codec_dim, **override}
        pkg[i] = {"cfg": solver_cfg(i, unet, PROCESSORS[i]),
                  "model_state": official_state(unet, g, legacy_attention=legacy_attention),
                  "processor_state": processor_state(PROCESSORS[i], g)}
    return pkg


def build_mbd_checkpoint(path: Path, combo: str = "transformer", seed: int = 0,
                         legacy_attention: bool = False, codec_dim: int = 128) -> Path:
    """codec_dim: the EnCodec latent width the band models are conditioned on (128 for the real codec; the
    tiny engine fixtures' codec has 16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_package(combo, seed, legacy_attention, codec_dim), path)
    return path


class Exploit:
    """Unpickling this calls `func(*args)`: what a malicious checkpoint would do."""

    def __init__(self, func: Any, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def build_malicious_checkpoint(path: Path, func: Any, *args: Any) -> Path:
    """A genuine-looking MBD checkpoint whose band-0 processor state hides a call to `func(*args)`."""
    pkg = build_package("transformer")
    pkg[0]["processor_state"] = OrderedDict(counts=Exploit(func, *args))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pkg, path)
    return path
