"""Melody conditioning: user audio -> one-hot chroma frames, as transformers' MusicgenMelodyFeatureExtractor
and audiocraft's ChromaExtractor compute them (STFT 16384 / hop 4096, librosa chroma filter bank, argmax).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import MelodyConfig
from .dsp import power_spectrogram, resample
from .errors import InvalidInputError

A440_OCTAVE_DIVISOR = 16  # librosa: octaves are counted from A440 / 16 (A0 = 27.5 Hz)
# Two silence checks, different on purpose: the engine refuses only digital silence (its chroma would be
# rounding noise), while the web app refuses an upload with no audible tune (audio_io.load_audio), a stricter bar
# that would be wrong for a Python caller's quiet but deliberate input.
SILENCE = 1e-5  # -100 dBFS: below this peak the engine calls a melody silent
QUIET_UPLOAD = 10 ** (-60 / 20)  # -60 dBFS: an uploaded melody or clip whose peak is below this carries no tune


def chroma_filter_bank(sample_rate: int, n_fft: int, n_chroma: int = 12) -> torch.Tensor:
    """librosa.filters.chroma (tuning 0, ctroct 5, octwidth 2, L2 norm, base C) -> [n_chroma, n_fft // 2 + 1]."""
    freqs = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    bins = n_chroma * np.log2(freqs / (440.0 / A440_OCTAVE_DIVISOR))
    bins = np.concatenate(([bins[0] - 1.5 * n_chroma], bins))  # the 0 Hz bin: 1.5 octaves below bin 1
    widths = np.concatenate((np.maximum(bins[1:] - bins[:-1], 1.0), [1.0]))
    d = np.subtract.outer(bins, np.arange(n_chroma, dtype=np.float64)).T
    half = np.round(n_chroma / 2)
    d = np.remainder(d + half + 10 * n_chroma, n_chroma) - half
    w = np.exp(-0.5 * (2 * d / widths[None, :]) ** 2)
    w = w / np.sqrt(np.sum(w**2, axis=0, keepdims=True))
    w = w * np.exp(-0.5 * ((bins / n_chroma - 5.0) / 2.0) ** 2)[None, :]  # Gaussian weighting around octave 5
    w = np.roll(w, -3 * (n_chroma // 12), axis=0)  # start at C, not A
    return torch.from_numpy(np.ascontiguousarray(w[:, : 1 + n_fft // 2])).float()


def as_float_audio(wave: object, what: str = "melody") -> torch.Tensor:
    """A numpy array or torch tensor of samples (float, or 8-bit unsigned / 16 / 32-bit PCM) -> float32."""
    if isinstance(wave, np.ndarray):
        if wave.dtype == np.uint8:
            wave = (wave.astype(np.float32) - 128.0) / 128.0
        elif np.issubdtype(wave.dtype, np.signedinteger):
            wave = wave.astype(np.float32) / float(2 ** (8 * wave.dtype.itemsize - 1))
        elif not np.issubdtype(wave.dtype, np.floating):
            raise InvalidInputError(f"{what} samples must be numbers, got numpy dtype {wave.dtype}")
        wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if not isinstance(wave, torch.Tensor):
        raise InvalidInputError(f"{what} must be a torch tensor or numpy array, got {type(wave).__name__}")
    if wave.dtype == torch.uint8:
        return (wave.float() - 128.0) / 128.0
    if not wave.is_floating_point():
        if wave.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64):
            raise InvalidInputError(f"{what} samples must be numbers, got {wave.dtype}")
        return wave.float() / float(2 ** (8 * wave.element_size() - 1))
    return wave.float()


def user_audio(wave: object, sample_rate: int, batch: int, what: str = "melody",
               plural: str = "melodies") -> torch.Tensor:
    """User audio for a batch of prompts -> float32 [N, C, S] with N = 1 (one for every prompt) or N = batch.
    Accepts [S], [C, S] or [N, C, S] of any sample format; checks the rate, the count and emptiness."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise InvalidInputError(f"{what} sample rate must be a positive integer, got {sample_rate!r}")
    x = as_float_audio(wave, what)
    if x.dim() == 1:
        x = x[None, None]
    elif x.dim() == 2:
        x = x[None]
    elif x.dim() != 3:
        raise InvalidInputError(f"{what} must be [samples], [channels, samples] or [batch, channels, samples], "
                                f"got shape {tuple(x.shape)}")
    if x.shape[0] not in (1, batch):
        raise InvalidInputError(f"got {x.shape[0]} {plural} for {batch} prompts: give one, or one per prompt")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise InvalidInputError(f"{what} is empty")
    return x


class ChromaExtractor:
    def __init__(self, cfg: MelodyConfig) -> None:
        self.cfg = cfg
        self.filters = chroma_filter_bank(cfg.sample_rate, cfg.n_fft, cfg.num_chroma)
        self.spectrogram = power_spectrogram(cfg.n_fft, cfg.hop_length)

    def prepare(self, wave: object, sample_rate: int, batch: int, seconds: float | None = None) -> torch.Tensor:
        """User melody -> mono float32 at the model rate, cut to what is used (the first `seconds`, by
        default the model's max_seconds): [N, S] with N = 1 (one melody for every prompt) or N = batch.
        Accepts [S], [C, S] or [N, C, S]."""
        seconds = self.cfg.max_seconds if seconds is None else seconds
        x = user_audio(wave, sample_rate, batch)
        # only the first max_seconds are used: cut before any work (a margin keeps the resampler's edge exact)
        keep = math.ceil(seconds * sample_rate) + sample_rate // 10
        x = x[..., :keep]
        if not torch.isfinite(x).all():
            raise InvalidInputError("melody contains NaN or infinite samples")
        x = x.mean(dim=1)  # downmix to mono: [N, S]
        if x.abs().amax(dim=-1).min() < SILENCE:
            raise InvalidInputError("melody is silent: give audio with an audible tune")
        x = resample(x, sample_rate, self.cfg.sample_rate)
        return x[..., : int(seconds * self.cfg.sample_rate)]

    @torch.no_grad()
    def chroma(self, x: torch.Tensor) -> torch.Tensor:
        """Mono audio [N, S] at the model rate -> one-hot chroma [N, F, 12], F = 1 + S // hop (after padding
        clips shorter than one FFT window with zeros on both sides)."""
        n_fft = self.cfg.n_fft
        if x.shape[-1] < n_fft:
            pad = n_fft - x.shape[-1]
            x = F.pad(x, (pad // 2, pad - pad // 2))
        spec = self.spectrogram(x)  # [N, n_fft // 2 + 1, F]
        raw = torch.einsum("cf,nft->nct", self.filters, spec)
        norm = F.normalize(raw, p=float("inf"), dim=-2, eps=1e-6)
        idx = norm.argmax(dim=-2)  # [N, F]
        return F.one_hot(idx, self.cfg.num_chroma).float()

    def condition(self, chroma: torch.Tensor) -> torch.Tensor:
        """One-hot chroma [N, F, 12] -> exactly chroma_length frames (repeat the clip, then cut)."""
        n = math.ceil(self.cfg.chroma_length / chroma.shape[1])
        return chroma.repeat(1, n, 1)[:, : self.cfg.chroma_length]

    def null(self, batch: int) -> torch.Tensor:
        """The 'no melody' condition: one-hot on bin 0 for every frame (not zeros) -> [batch, F, 12], F =
        chroma_length."""
        c = torch.zeros(batch, self.cfg.chroma_length, self.cfg.num_chroma)
        c[..., 0] = 1.0
        return c

    def prefix(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """Prepared mono audio [N, S] (see `prepare`) -> the prefix chroma [batch, chroma_length, 12]."""
        c = self.condition(self.chroma(x))
        return c.expand(batch, -1, -1) if c.shape[0] == 1 else c
