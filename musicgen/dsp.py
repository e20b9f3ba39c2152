"""The engine's only door to torchaudio: resampling, the melody STFT and loudness (ITU-R BS.1770).

torchaudio ships a native library built against one exact torch release; a mismatched pair (pip happily
resolves torch 2.11.0 with torchaudio 2.11.1) fails at import with an undefined symbol. That failure is
turned here into a message that names both versions and the fix. Swapping torchaudio for another DSP
library means changing this file only.
"""

from __future__ import annotations

import math
from importlib import metadata

import numpy as np
import torch

from .errors import InvalidInputError


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


try:
    import torchaudio
except (OSError, ImportError) as e:  # OSError: libtorchaudio.so does not load (undefined symbol, ...)
    torch_v, audio_v = _installed("torch"), _installed("torchaudio")
    raise ImportError(
        f"torchaudio {audio_v} cannot be loaded with torch {torch_v} ({type(e).__name__}: {e}). torch and "
        "torchaudio must come from the same release: reinstall the pinned pair with "
        "`pip install -r requirements.txt -c requirements.lock` (or `pip install torch==X torchaudio==X` "
        "with one version X for both)") from e

# transformers' MusicgenMelodyFeatureExtractor resamples with these settings (we follow it everywhere)
RESAMPLE = {"rolloff": 0.945, "lowpass_filter_width": 24}


# Taps of the sinc kernel torchaudio builds for a rate conversion (after reducing the ratio: new x (orig + 2
# width)); it builds them in float64 with temporaries (measured: 28 MB at this bound). 44.1 -> 32 kHz needs
# 163 k, 11.025 kHz 631 k; a rate that does not reduce against 32,000 (44,101 Hz: 1.4 G taps) would take tens
# of gigabytes.
KERNEL_TAPS_MAX = 1 << 20
# Multiply-adds per second of audio (per channel): taps x gcd(rates). The common rates need at most 23 M
# (176.4 kHz: ~4 s of CPU for 31 s of stereo; 44.1 kHz: 16 M, ~1.4 s); this bound keeps the odd rates that
# pass the kernel bound (121,792 Hz: 67 M) within that range of CPU time.
RESAMPLE_MACS_MAX = 1 << 25
COMMON_RATES = "16,000, 22,050, 44,100, 48,000 or 96,000 Hz"  # named in messages: all convert cheaply


def sinc_kernel(from_rate: int, to_rate: int) -> tuple[int, int]:
    """(taps, width) of the kernel `resample` builds: new x (orig + 2 width) taps for the reduced ratio
    orig / new, reaching `width` input samples either side of an output sample."""
    g = math.gcd(from_rate, to_rate)
    orig, new = from_rate // g, to_rate // g
    width = math.ceil(RESAMPLE["lowpass_filter_width"] * orig / (min(orig, new) * RESAMPLE["rolloff"]))
    return new * (orig + 2 * width), width


def cheap_ratio(from_rate: int, to_rate: int) -> bool:
    """Whether converting from_rate -> to_rate stays within the kernel-size and work bounds above."""
    taps = sinc_kernel(from_rate, to_rate)[0]
    return taps <= KERNEL_TAPS_MAX and taps * math.gcd(from_rate, to_rate) <= RESAMPLE_MACS_MAX


def resample(x: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Band-limited sinc resampling along the last dimension (a no-op when the rates agree). Ratios that
    would need a huge kernel (44,101 -> 32,000 Hz) are refused before any memory is taken."""
    if from_rate == to_rate:
        return x
    if not cheap_ratio(from_rate, to_rate):
        raise InvalidInputError(f"audio at {from_rate:,} Hz does not convert cheaply to {to_rate:,} Hz: resample it "
                                f"to a common rate ({COMMON_RATES})")
    return torchaudio.functional.resample(x, from_rate, to_rate, **RESAMPLE)


def power_spectrogram(n_fft: int, hop_length: int) -> torch.nn.Module:
    """|STFT|^2 with a Hann window of n_fft, centred with reflect padding, normalised by the window's norm:
    [..., S] -> [..., n_fft // 2 + 1, frames]."""
    return torchaudio.transforms.Spectrogram(n_fft=n_fft, win_length=n_fft, hop_length=hop_length, power=2,
                                             center=True, normalized=True)


# ITU-R BS.1770-4 as torchaudio measures it: 400 ms gating blocks, 75 % overlap, at most 5 channels (weights
# 1, 1, 1, 1.41, 1.41), absolute gate -70 LUFS then relative gate -10 LU.
LOUDNESS_BLOCK_SECONDS = 0.4
LOUDNESS_CHANNELS_MAX = 5


def loudness(wave: torch.Tensor | np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of [C, S] audio in LUFS (torchaudio.functional.loudness, what audiocraft's
    normalize_loudness measures with), or NaN when there is nothing to measure: shorter than one 400 ms block
    (torchaudio would raise), or every block below the -70 LUFS gate (silence). Its K-weighting filters
    clamp to +-1 (torchaudio's lfilter), so audio far above full scale measures low, as in audiocraft."""
    x = torch.as_tensor(wave, dtype=torch.float32)
    if x.dim() != 2 or not 1 <= x.shape[0] <= LOUDNESS_CHANNELS_MAX:
        raise InvalidInputError(f"loudness is measured on [channels, samples] audio with 1 to "
                                f"{LOUDNESS_CHANNELS_MAX} channels, not shape {tuple(x.shape)}")
    if x.shape[1] < round(LOUDNESS_BLOCK_SECONDS * sample_rate):
        return math.nan
    return float(torchaudio.functional.loudness(x, sample_rate))
