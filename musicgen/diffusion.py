"""Multi-band diffusion (MBD): EnCodec tokens -> audio through four band-specific diffusion models.

`MultiBandDiffusion.decode(codes, codec)` follows audiocraft's `tokens_to_wav`: the EnCodec decode is the
reference; the condition is the quantized latent (sum of codebook vectors); each band model runs 20
sub-sampled DDPM steps (epsilon prediction, posterior variance of the sub-sampled chain, clamp) from its
own full-band noise, then its sample processor undoes the band's training-time rescaling; the bands are
summed; finally each of 32 mel-spaced frequency bands is rescaled to the reference's standard deviation.

Noise is drawn on the CPU, per batch item, from that item's own generator (in band order: initial noise,
then one draw per stochastic step). Item i of a batch decode therefore equals decoding item i alone with
the same generator: stereo (left and right as two items) is exactly two mono decodes, and a seed gives
the same audio on any device and in any batch. Unlike audiocraft, the re-EQ gains are also computed per
item (audiocraft pools the whole batch, which makes one prompt's audio depend on the others'). The band
networks run in eval mode: audiocraft's `get_mbd_musicgen` never calls `.eval()`, so its bottleneck
transformer samples with its (hard-coded) 0.1 dropout active; we compute the deterministic network.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import julius
import torch
from torch import nn

from . import mbd_checkpoint as ckpt_io
from .codec import EnCodec
from .diffusion_schedule import NoiseSchedule, SampleProcessor, ScheduleConfig
from .errors import CheckpointError, InvalidInputError
from .options import ProgressFn
from .unet import DiffusionUnet, UNetConfig
from .weights import Checkpoint, load_module

EQ_BANDS = 32


@dataclass(frozen=True)
class DecodeTiming:
    """How long a decode took: `items` clips of `seconds` each in `wall` seconds (waits.py learns from it)."""

    seconds: float
    items: int
    wall: float


class TensorSource(Protocol):
    def fetch(self, source: Any) -> torch.Tensor: ...


class SplitBands(nn.Module):
    """julius.SplitBands: n mel-spaced bands through a cascade of windowed-sinc low-passes, summing to x."""

    def __init__(self, sample_rate: int, n_bands: int):
        super().__init__()
        self.split = julius.SplitBands(sample_rate, n_bands=n_bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, S] -> [n_bands, B, C, S]."""
        return self.split(x)


def re_eq(wav: torch.Tensor, ref: torch.Tensor, splitter: SplitBands, strictness: float = 1.0) -> torch.Tensor:
    """Scale each band of `wav` [B, C, S] so its standard deviation (per item) matches the reference's."""
    bands, ref_bands = splitter(wav), splitter(ref)
    gain = ref_bands.std(dim=(2, 3), keepdim=True) / bands.std(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return (bands * gain**strictness).sum(dim=0)


class Band(nn.Module):
    """One frequency band: its denoiser, its noise schedule and its sample processor."""

    def __init__(self, cfg: Mapping[str, Any], sample_rate: int, where: str):
        super().__init__()
        with torch.device("meta"):
            self.unet = DiffusionUnet(UNetConfig.from_band_cfg(cfg, where))
        self.schedule = NoiseSchedule(ScheduleConfig.from_cfg(cfg.get("schedule") or {}, where))
        self.processor = SampleProcessor(cfg.get("processor") or {}, sample_rate, where)

    def load(self, source: TensorSource, device: torch.device) -> None:
        load_module(self.unet, source, lambda name: name, device, torch.float32)  # type: ignore[arg-type]
        self.unet.eval()
        self.processor.to(device)
        load_module(self.processor, source, lambda name: ckpt_io.PROCESSOR_PREFIX + name, device,  # type: ignore[arg-type]
                    torch.float32)

    def sample(self, noise: Callable[[], torch.Tensor], condition: torch.Tensor, tick: Callable[[], None]
               ) -> torch.Tensor:
        """Run the reverse chain from noise() (each call draws [B, C, S] fresh per-item noise)."""
        s = self.schedule.cfg
        x = noise() * s.noise_scale
        step = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        for t, c_eps, inv_sqrt_alpha, sigma in self.schedule.coefficients():
            eps = self.unet(x, step.fill_(t), condition) * s.noise_scale
            x = (x - c_eps * eps) * inv_sqrt_alpha
            if sigma > 0:
                x = x + (sigma * s.noise_scale) * noise()
            if s.clip:
                x = x.clamp(-s.clip, s.clip)
            if t == 0:
                x = x * s.rescale
            tick()
        return self.processor(x)


def item_generators(generator: torch.Generator | None, n: int) -> list[torch.Generator]:
    """n independent CPU generators seeded from `generator` (or torch's global RNG), one per batch item."""
    seeds = torch.randint(0, 2**62, (n,), generator=generator)
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


class _DictSource:
    """A dict of tensors with the `fetch` interface of weights.Checkpoint (used for in-memory .th loads)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], where: str):
        self.tensors, self.where = tensors, where

    def fetch(self, source: Any) -> torch.Tensor:
        if source not in self.tensors:
            raise CheckpointError(f"{self.where} is missing tensor {source!r}")
        return self.tensors[source]


class MultiBandDiffusion(nn.Module):
    """The band models of an MBD checkpoint, summed and re-equalised against the EnCodec decode."""

    def __init__(self, config: Mapping[str, Any], where: str = "MBD checkpoint"):
        super().__init__()
        self.sample_rate = int(config["sample_rate"])
        self.bands = nn.ModuleList([Band(c, self.sample_rate, f"{where} band {i}")
                                    for i, c in enumerate(config["bands"])])
        self.eq = SplitBands(self.sample_rate, EQ_BANDS)
        self.last_decode: DecodeTiming | None = None  # the latest decode that ran to its end

    @classmethod
    def from_pretrained(cls, device: str | torch.device | None = None, revision: str | None = None,
                        cache_dir: str | Path | None = None) -> MultiBandDiffusion:
        """facebook/multiband-diffusion's mbd_musicgen_32khz.th from the HF cache (downloaded on first use),
        converted once to safetensors + JSON beside it; a corrupted download is deleted, to be fetched anew."""
        th = ckpt_io.download(revision, cache_dir)
        folder = ckpt_io.converted_folder(th)
        if ckpt_io.is_converted(folder):
            try:
                return cls.from_file(folder, device)
            except CheckpointError:
                pass  # a damaged conversion: convert again from the download
        try:
            ckpt_io.convert(th, folder)
        except CheckpointError as e:
            ckpt_io.forget_download(th)
            raise CheckpointError(f"{e}. The downloaded file was removed from the cache: the next call downloads "
                                  "it again") from e
        return cls.from_file(folder, device)

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device | None = None) -> MultiBandDiffusion:
        """An official .th file (read safely, converted in memory) or a folder written by `convert`."""
        path = Path(path)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if path.is_dir():
            config = ckpt_io.read_converted_config(path)
            sources = [Checkpoint(path / f"band{i}") for i in range(int(config["n_bands"]))]
        elif path.is_file():
            config, tensors = ckpt_io.parse(ckpt_io.read_pickle(path), str(path))
            sources = [_DictSource(t, f"{path} band {i}") for i, t in enumerate(tensors)]  # type: ignore[misc]
        else:
            raise CheckpointError(f"{path} is neither an MBD .th file nor a converted MBD folder")
        model = cls(config, str(path))
        for band, source in zip(model.bands, sources):
            band.load(source, dev)  # type: ignore[operator]
            if isinstance(source, Checkpoint):
                source.check_all_used(lambda key: False)
        return model.to(dev)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def total_steps(self) -> int:
        """Model calls per decode (the unit of `progress`)."""
        return sum(len(band.schedule.coefficients()) for band in self.bands)  # type: ignore[union-attr]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, codec: EnCodec,
               generator: torch.Generator | Sequence[torch.Generator] | None = None,
               progress: ProgressFn | None = None) -> torch.Tensor:
        """codes [B, Q, T] (one channel's codebooks) -> audio [B, 1, T * hop] float32.

        `generator`: one generator (per-item generators are seeded from it, see `item_generators`), a list
        of B per-item CPU generators, or None (seeded from torch's global RNG). `progress(done, total)` is
        called after every band-model call."""
        started = time.perf_counter()
        codes = self._check(codes, codec)
        B = codes.shape[0]
        gens = list(generator) if isinstance(generator, Sequence) else item_generators(generator, B)
        if len(gens) != B:
            raise InvalidInputError(f"decode got {len(gens)} generators for a batch of {B}")
        ref = codec.decode(codes)
        condition = codec.latent(codes)
        shape = (1, *ref.shape[1:])

        def noise() -> torch.Tensor:
            return torch.cat([torch.randn(shape, generator=g) for g in gens]).to(ref.device)

        done, total = 0, self.total_steps

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        out = torch.zeros_like(ref)
        for band in self.bands:
            out += band.sample(noise, condition, tick)  # type: ignore[operator]
        out = re_eq(out, ref, self.eq)
        self.last_decode = DecodeTiming(out.shape[-1] / self.sample_rate, B, time.perf_counter() - started)
        return out

    def _check(self, codes: torch.Tensor, codec: EnCodec) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3 or codes.dtype not in (torch.long, torch.int):
            raise InvalidInputError("MBD decode expects integer codes [batch, codebooks, frames]")
        cfg = codec.cfg
        if codes.shape[1] != cfg.num_quantizers or codes.shape[2] < 1 or codes.shape[0] < 1:
            raise InvalidInputError(f"MBD decode expects codes [B, {cfg.num_quantizers}, T >= 1] of one audio "
                                    f"channel, got {tuple(codes.shape)} (decode stereo as left/right batch items)")
        if int(codes.min()) < 0 or int(codes.max()) >= cfg.codebook_size:
            raise InvalidInputError(f"codes must lie in [0, {cfg.codebook_size})")
        if cfg.sample_rate != self.sample_rate:
            raise CheckpointError(f"MBD was trained for {self.sample_rate} Hz audio, the codec runs at "
                                  f"{cfg.sample_rate} Hz")
        for i, band in enumerate(self.bands):
            want = band.unet.cfg.codec_dim  # type: ignore[union-attr]
            if want is not None and want != cfg.dim:
                raise CheckpointError(f"MBD band {i} expects a {want}-dim codec latent, the codec's is {cfg.dim}")
        return codes.to(device=codec.codebooks.device, dtype=torch.long)
