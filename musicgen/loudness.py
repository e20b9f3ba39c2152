"""Level normalisation of finished audio, exactly as audiocraft 1.3.0's `audio_write` does it before writing
(audiocraft/data/audio_utils.py: `normalize_audio`, `normalize_loudness`).

Strategies (one gain for all channels, so a stereo image is kept; `clip` is the exception, it clips each
sample):

- "loudness": ITU-R BS.1770 integrated loudness (dsp.loudness, torchaudio) brought to -loudness_headroom_db
  LUFS, then optionally a tanh soft clipper, then clipped to +-1. Audio whose RMS is below 2e-3 (-54 dBFS) is
  left as it is. The default, with audiocraft's demo settings (demos/musicgen_app.py writes with
  strategy="loudness", loudness_headroom_db=16, loudness_compressor=True): -16 LUFS with the compressor.
- "peak": the largest |sample| brought to -peak_clip_headroom_db dBFS.
- "rms": the RMS of the channel mean brought to -rms_headroom_db dBFS, then clipped to +-1.
- "clip": samples clipped to +-(-peak_clip_headroom_db dBFS), no gain.
- "none": unchanged (audiocraft asserts that the peak is below 1; here the writer clips instead).

With normalize=False, "peak" and "rms" only ever turn the level down (as audiocraft's flag does).

Where this departs from audiocraft, it is on inputs audiocraft cannot handle: silence under "peak" or "rms"
(a gain of 1 / 0: audiocraft returns NaN everywhere) and a gain that overflows float32 are left unchanged,
as audiocraft itself leaves audio under its loudness energy floor; "loudness" on audio shorter than one
400 ms BS.1770 block, or all below the -70 LUFS gate (torchaudio raises / audiocraft's assert fails), is
left unchanged, then clipped. NaN or infinite input is refused (audiocraft asserts it is finite).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

from . import dsp
from .errors import InvalidInputError

STRATEGIES = ("loudness", "peak", "rms", "clip", "none")
DEFAULT_STRATEGY = "loudness"
# audio_write's defaults, except loudness_headroom_db / loudness_compressor: the demo's (see above)
PEAK_CLIP_HEADROOM_DB = 1.0
RMS_HEADROOM_DB = 18.0
LOUDNESS_HEADROOM_DB = 16.0
LOUDNESS_COMPRESSOR = True
ENERGY_FLOOR = 2e-3  # normalize_loudness: "anything below that RMS level will not be rescaled"

Audio = TypeVar("Audio", np.ndarray, torch.Tensor)


def _scaled(wav: torch.Tensor, rescaling: torch.Tensor, normalize: bool) -> torch.Tensor:
    """wav * rescaling, as audiocraft (`if normalize or rescaling < 1`), unless the gain is not finite
    (silence: audiocraft would return NaN)."""
    if not bool(torch.isfinite(rescaling)):
        return wav
    return wav * rescaling if normalize or bool(rescaling < 1) else wav


def _loudness(wav: torch.Tensor, sample_rate: int, headroom_db: float, compressor: bool) -> torch.Tensor:
    """normalize_loudness: the gain to reach -headroom_db LUFS, then tanh when `compressor`."""
    energy = wav.pow(2).mean().sqrt().item()
    if energy < ENERGY_FLOOR:
        return wav
    measured = dsp.loudness(wav, sample_rate)
    gain = 10.0 ** ((-headroom_db - measured) / 20.0)
    if not math.isfinite(gain):  # nothing measurable (too short, all gated) or an absurd gain
        return wav
    output = gain * wav
    return torch.tanh(output) if compressor else output


def _normalized(wav: torch.Tensor, sample_rate: int, strategy: str, normalize: bool, peak_clip_headroom_db: float,
                rms_headroom_db: float, loudness_headroom_db: float, loudness_compressor: bool) -> torch.Tensor:
    """normalize_audio's branches, on a float32 [C, S] tensor."""
    scale_peak = 10 ** (-peak_clip_headroom_db / 20)
    scale_rms = 10 ** (-rms_headroom_db / 20)
    if strategy == "peak":
        return _scaled(wav, scale_peak / wav.abs().max(), normalize)
    if strategy == "clip":
        return wav.clamp(-scale_peak, scale_peak)
    if strategy == "rms":
        mono = wav.mean(dim=0)
        return _scaled(wav, scale_rms / mono.pow(2).mean().sqrt(), normalize).clamp(-1, 1)
    if strategy == "loudness":
        return _loudness(wav, sample_rate, loudness_headroom_db, loudness_compressor).clamp(-1, 1)
    return wav  # "none"


def normalize(audio: Audio, sample_rate: int, strategy: str = DEFAULT_STRATEGY, *, normalize: bool = True,
              peak_clip_headroom_db: float = PEAK_CLIP_HEADROOM_DB, rms_headroom_db: float = RMS_HEADROOM_DB,
              loudness_headroom_db: float = LOUDNESS_HEADROOM_DB,
              loudness_compressor: bool = LOUDNESS_COMPRESSOR) -> Audio:
    """[C, S] (or [S]) float audio -> the same type and shape, float32, levelled by `strategy` (one of
    STRATEGIES, see the module docstring) with audiocraft's parameters. The input is not modified."""
    if strategy not in STRATEGIES:
        raise InvalidInputError(f"unknown loudness strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    is_numpy = isinstance(audio, np.ndarray)
    source = torch.from_numpy(np.array(audio)) if is_numpy else audio.detach()  # np.array: any strides
    if not source.dtype.is_floating_point:
        raise InvalidInputError(f"audio to normalise must be float (full scale +-1), not {source.dtype}")
    wav = source.to("cpu", torch.float32, copy=True)  # never the caller's memory: "none" returns it as is
    if wav.dim() not in (1, 2) or wav.numel() == 0:
        raise InvalidInputError(f"audio to normalise must be [channels, samples] and not empty, not shape "
                                f"{tuple(wav.shape)}")
    if not bool(torch.isfinite(wav).all()):
        raise InvalidInputError("the audio to normalise contains NaN or infinite samples")
    out = _normalized(wav if wav.dim() == 2 else wav[None], sample_rate, strategy, normalize, peak_clip_headroom_db,
                      rms_headroom_db, loudness_headroom_db, loudness_compressor).reshape(wav.shape)
    return out.numpy() if is_numpy else out.to(source.device)


def level_items(audio: torch.Tensor, sample_rate: int, strategy: str) -> torch.Tensor:
    """audio [B, C, S] -> each item [C, S] levelled on its own by `strategy` (one gain for all its channels);
    "none" returns `audio` itself."""
    if strategy == "none":
        return audio
    return torch.stack([normalize(item, sample_rate, strategy) for item in audio])
