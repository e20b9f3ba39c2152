"""A diffusion band's noise schedule and sample processor, as audiocraft's modules/diffusion_schedule.py
defines them (NoiseSchedule, SampleProcessor / MultiBandProcessor). Used by diffusion.py to sample and by
mbd_checkpoint.py to know the state a band's config implies."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import julius
import torch
from torch import nn

from .errors import CheckpointError

SAMPLING_STEPS = 20  # audiocraft's MultiBandDiffusion samples 20 of each band's training steps


@dataclass(frozen=True)
class ScheduleConfig:
    """A band's `cfg.schedule`; defaults are those of audiocraft's NoiseSchedule."""

    beta_t0: float = 1e-4
    beta_t1: float = 0.02
    beta_exp: float = 1.0
    num_steps: int = 1000
    repartition: str = "power"
    clip: float = 5.0
    rescale: float = 1.0
    noise_scale: float = 1.0

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], where: str) -> ScheduleConfig:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in cfg.items() if k in names}
        if values.get("clip", 0) is None:  # audiocraft clamps only when clip is truthy
            values["clip"] = 0.0
        if cfg.get("n_bands") is not None or values.get("repartition", "power") != "power":
            raise CheckpointError(f"{where}: only the single-band 'power' noise schedule is supported")
        try:
            out = cls(**{k: type(getattr(cls, k))(v) for k, v in values.items()})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: invalid schedule {values}: {e}") from e
        if out.num_steps < SAMPLING_STEPS or not 0 < out.beta_t0 <= out.beta_t1 < 1:
            raise CheckpointError(f"{where}: invalid schedule {out}")
        return out


class NoiseSchedule:
    """Power schedule beta_t = (lin(b0^(1/p), b1^(1/p)))^p and the sub-sampled DDPM reverse chain (float64)."""

    def __init__(self, cfg: ScheduleConfig):
        self.cfg = cfg
        e = cfg.beta_exp
        lin = torch.linspace(cfg.beta_t0 ** (1 / e), cfg.beta_t1 ** (1 / e), cfg.num_steps, dtype=torch.float64)
        self.betas = lin**e
        self.alpha_bars = torch.cumprod(1 - self.betas, dim=0)

    def step_list(self, steps: int = SAMPLING_STEPS) -> list[int]:
        """[999, 949, ..., 49, 0] for 1000 steps: every (N // steps)-th step from the last, then 0."""
        return list(range(self.cfg.num_steps))[:: -(self.cfg.num_steps // steps)][:steps] + [0]

    def coefficients(self, steps: int = SAMPLING_STEPS) -> list[tuple[int, float, float, float]]:
        """Per model call: (step, c_eps, 1/sqrt(alpha), sigma) with x <- (x - c_eps * eps) / sqrt(alpha) + sigma * z.

        alpha is the ratio of consecutive alpha-bars of the sub-sampled chain; sigma^2 is that chain's DDPM
        posterior variance (1 - abar_prev) / (1 - abar) * (1 - alpha); the last call is deterministic."""
        ab = self.alpha_bars
        chain = self.step_list(steps)
        out, abar = [], float(ab[-1])
        for idx, step in enumerate(chain[:-1]):
            alpha = float(ab[step] / ab[chain[idx + 1]])
            last = idx == len(chain) - 2
            prev = 1.0 if last else float(ab[chain[idx + 1]])
            sigma2 = 0.0 if last else (1 - prev) / (1 - abar) * (1 - alpha)
            out.append((step, (1 - alpha) / math.sqrt(1 - abar), 1 / math.sqrt(alpha), math.sqrt(sigma2)))
            abar = prev
        return out


class SampleProcessor(nn.Module):
    """audiocraft's band-model sample processor, built from `cfg.processor` like audiocraft's `get_processor`.

    `use` true (audiocraft's MultiBandProcessor): the model's output is split into `n_bands` mel bands and each
    is scaled by (std / target_std) ** power_std and shifted by its mean (`forward`, audiocraft's
    `return_sample`; `project` is the training-time inverse), with the statistics gathered during training.
    `target_std` is a mean square, as in audiocraft. The state dict is audiocraft's: the four statistics and
    julius' band-split filters `split_bands.lowpass.filters`, loaded from the checkpoint as audiocraft's strict
    load does (not recomputed). `use` false (a plain SampleProcessor): the identity, with an empty state."""

    STATISTICS = ("counts", "sum_x", "sum_x2", "sum_target_x2")

    def __init__(self, cfg: Mapping[str, Any], sample_rate: int, where: str):
        super().__init__()
        self.use = bool(cfg.get("use", False))
        self.split_bands: julius.SplitBands | None = None
        if not self.use:
            return
        if cfg.get("name", "multi_band_processor") != "multi_band_processor":
            raise CheckpointError(f"{where}: unknown sample processor {cfg.get('name')!r}")
        n = int(cfg.get("n_bands", 8))
        power = torch.tensor(cfg.get("power_std", 1.0), dtype=torch.float32).reshape(-1)
        if power.numel() not in (1, n):
            raise CheckpointError(f"{where}: processor power_std has {power.numel()} values for {n} bands")
        self.register_buffer("power_std", power, persistent=False)  # from the config, not the state
        for name in self.STATISTICS:
            self.register_buffer(name, torch.zeros(1 if name == "counts" else n))
        self.split_bands = julius.SplitBands(sample_rate, n_bands=n)

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per band [n_bands, 1, 1, 1]: mean, std and target_std (a mean square), as audiocraft computes them."""
        mean = self.sum_x / self.counts
        std = (self.sum_x2 / self.counts - mean**2).clamp(min=0).sqrt()
        target = self.sum_target_x2 / self.counts
        return tuple(t.view(-1, 1, 1, 1) for t in (mean, std, target))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> audio (audiocraft's return_sample): [B, C, S] -> [B, C, S]."""
        if self.split_bands is None:
            return x
        mean, std, target = self._stats()
        bands = self.split_bands(x)  # [n_bands, B, C, S]
        return (bands * (std / target) ** self.power_std.view(-1, 1, 1, 1) + mean).sum(dim=0)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Audio -> diffusion space with the frozen statistics (audiocraft's project_sample once it has seen
        `num_samples` items): [B, C, S] -> [B, C, S]. Decoding never uses it (audiocraft builds training targets
with it); it lets the tests check the statistics' meaning in both directions against audiocraft."""
        if self.split_bands is None:
            return x
        mean, std, target = self._stats()
        bands = self.split_bands(x)
        return ((bands - mean) * (target / std.clamp(min=1e-12)) ** self.power_std.view(-1, 1, 1, 1)).sum(dim=0)
