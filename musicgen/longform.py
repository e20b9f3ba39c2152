"""Pieces longer than the 30 s training window, continuations of user audio, and the melody across windows.

audiocraft's schedule (MusicGen._generate_tokens): window i starts `stride` frames after window i - 1,
is prompted with the tokens its predecessor generated after its first `stride` frames (the last
window - stride frames, 12 s by default) and generates up to a full window; only its new frames are kept.
Each window is an ordinary prompted generation, so positions restart at 0 in every window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange

from .dsp import resample
from .errors import InvalidInputError
from .melody import SILENCE, ChromaExtractor, user_audio
from .options import Clip


@dataclass(frozen=True)
class Window:
    offset: int  # first frame of the window in the whole piece
    frames: int  # frames the window holds, its prompt included
    prompt: int  # frames at its start that are given (from the previous window, or the user's audio)

    @property
    def new(self) -> int:
        return self.frames - self.prompt


def plan_windows(total: int, window: int, stride: int, prompt: int = 0) -> list[Window]:
    """Frames of each window for a `total`-frame piece (a user prompt of `prompt` frames included)."""
    if not 0 < stride <= window:
        raise InvalidInputError(f"extend stride must be in (0, window], got {stride} frames for a {window}-frame "
                                "window")
    windows: list[Window] = []
    offset = 0
    while offset + prompt < total:
        frames = min(total - offset, window)
        windows.append(Window(offset, frames, prompt))
        prompt, offset = frames - stride, offset + stride
    return windows


def loop_audio(wave: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Samples start..start+length of `wave` [N, S] repeated periodically (audiocraft's melody tiling)."""
    idx = torch.arange(start, start + length, device=wave.device) % wave.shape[-1]
    return wave[..., idx]


def prepare_prompt_audio(wave: object, sample_rate: int, batch: int, channels: int, target_rate: int,
                         max_seconds: float) -> torch.Tensor:
    """User audio to continue -> [batch * channels, 1, S] at the codec rate (stereo models: left, right;
    mono input is used for both sides, more channels are mixed down)."""
    x = user_audio(wave, sample_rate, batch, "prompt audio", "prompt audios")
    if x.shape[2] / sample_rate >= max_seconds:
        raise InvalidInputError(f"prompt audio is {x.shape[2] / sample_rate:.1f} s long: it must be shorter than "
                                f"the model's {max_seconds:g} s window")
    if not torch.isfinite(x).all():
        raise InvalidInputError("prompt audio contains NaN or infinite samples")
    if x.abs().amax(dim=(1, 2)).min() < SILENCE:
        raise InvalidInputError("prompt audio is silent")
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True).expand(-1, channels, -1)
    x = resample(x, sample_rate, target_rate)
    x = x.expand(batch, -1, -1)
    return rearrange(x, "b c s -> (b c) 1 s").contiguous()


def frames_of(samples: int, hop: int) -> int:
    """EnCodec frames for `samples` samples (its last window is padded to full)."""
    return math.ceil(samples / hop)


def melody_wave(chroma: ChromaExtractor | None, melody: Clip | None, batch: int, seconds: float,
                name: str) -> torch.Tensor | None:
    """The user's melody as mono audio at the model rate [N, S] (what the piece needs of it), or None."""
    if chroma is None:
        if melody is not None:
            raise InvalidInputError(f"{name or 'this checkpoint'} has no melody conditioning: use a melody "
                                    "checkpoint such as facebook/musicgen-melody")
        return None
    if melody is None:
        return None
    return chroma.prepare(melody[0], melody[1], batch, max(seconds, chroma.cfg.max_seconds))


def window_chroma(chroma: ChromaExtractor, wave: torch.Tensor | None, batch: int, w: Window, windowed: bool,
                  frame_rate: float, window_seconds: float) -> torch.Tensor:
    """One-hot chroma [B, chroma_length, 12] for window `w` (the null melody without a tune). In a multi-window
    piece the melody is looped over the whole piece and each window gets its own span (audiocraft's tiling)."""
    if wave is None:
        return chroma.null(batch)
    if windowed:
        rate = chroma.cfg.sample_rate
        start = round(w.offset / frame_rate * rate)
        wave = loop_audio(wave, start, round(window_seconds * rate))
    return chroma.prefix(wave, batch)
