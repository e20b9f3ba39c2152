"""The engine's only door to torchaudio: resampling and the melody STFT.

torchaudio ships a native library built against one exact torch release; a mismatched pair (pip happily
resolves torch 2.11.0 with torchaudio 2.11.1) fails at import with an undefined symbol. That failure is
turned here into a message that names both versions and the fix. Swapping torchaudio for another DSP
library means changing this file only.
"""

from __future__ import annotations

from importlib import metadata

import torch


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


def resample(x: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Band-limited sinc resampling along the last dimension (a no-op when the rates agree)."""
    if from_rate == to_rate:
        return x
    return torchaudio.functional.resample(x, from_rate, to_rate, **RESAMPLE)


def power_spectrogram(n_fft: int, hop_length: int) -> torch.nn.Module:
    """|STFT|^2 with a Hann window of n_fft, centred with reflect padding, normalised by the window's norm:
    [..., S] -> [..., n_fft // 2 + 1, frames]."""
    return torchaudio.transforms.Spectrogram(n_fft=n_fft, win_length=n_fft, hop_length=hop_length, power=2,
                                             center=True, normalized=True)
