"""A request made ready for decoding: its prompts checked and encoded window by window (timelines), the
melody tiled, the audio to continue encoded, the windows planned, the sampling set up: a `Generation`
(generate.py) that `MusicGen.stream` and the scheduler (serve.py) then step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from einops import rearrange

from . import stems, timeline
from .errors import InvalidInputError
from .generate import Generation, TextFn
from .longform import Window, frames_of, melody_wave, plan_windows, prepare_prompt_audio, window_chroma
from .options import WINDOW, Clip, GenerationOptions, seed_of
from .sampling import SamplingParams
from .timeline import Prompts

if TYPE_CHECKING:
    from .pipeline import MusicGen


def separate_melody(mg: MusicGen, prompts: Prompts, o: GenerationOptions,
                    stopped: Callable[[], bool] | None = None) -> GenerationOptions:
    """`o` with its melody replaced by the melody's vocals + other stems (demucs, stems.py) when the checkpoint
    follows a melody and separation is wanted (o.separate_melody), else `o` itself. All of the melody the piece
    uses is separated once (then tiled per window, as the melody itself would be). It takes seconds to tens of
    seconds on a CPU: callers run it in their own thread (the scheduler: the requester's, so the decode loop
    keeps stepping everyone else); `stopped()` turning true ends it between two demucs chunks
    (stems.SeparationStopped)."""
    if o.melody is None or mg.chroma is None or not stems.wanted(o.separate_melody):
        return o
    B = len(timeline.pieces(prompts, o.duration))
    wave = melody_wave(mg.chroma, o.melody, B, _frames(mg, o.duration) / mg.frame_rate, mg.name)  # [N, S]
    rate = mg.chroma.cfg.sample_rate
    separated = stems.separate(wave, rate, None, rate, mg.device, stopped)  # [N, S]; shift from the melody itself
    return replace(o, melody=(separated[:, None], rate), separate_melody=False)


def prepare(mg: MusicGen, prompts: Prompts, o: GenerationOptions) -> tuple[Generation, int]:
    """What a generation needs before its first decode step (checks, text states of every window, the
    user's audio encoded, the windows), not begun yet; and its seed. The melody is used as given: see
    `separate_melody` for its stems."""
    pieces = timeline.pieces(prompts, o.duration)
    frames, B, seed = _frames(mg, o.duration), len(pieces), seed_of(o)
    wave = melody_wave(mg.chroma, o.melody, B, frames / mg.frame_rate, mg.name)
    head = _encode_head(mg, o.continue_from, B, frames, o.duration)
    window, stride = round(WINDOW * mg.frame_rate), round(o.extend_stride * mg.frame_rate)
    plan = plan_windows(frames, window, stride, head.shape[-1])
    text_of = _text_of(mg, pieces, plan)
    params = SamplingParams(o.top_k, float(o.top_p), float(o.temperature), float(o.cfg_coef))
    generator = torch.Generator(mg.device).manual_seed(seed)

    def chroma_of(w: Window) -> torch.Tensor | None:
        if mg.chroma is None:
            return None
        return window_chroma(mg.chroma, wave, B, w, len(plan) > 1, mg.frame_rate, WINDOW).to(mg.device)

    return Generation(mg.lm, text_of, plan, params, generator, head, chroma_of), seed


def _text_of(mg: MusicGen, pieces: list[timeline.Timeline], plan: list[Window]) -> TextFn:
    """window -> T5 states [B, L, D_text] and mask [B, L] of the prompts in force where its new audio
    starts, one per piece; each distinct set of prompts is encoded once, all of them now (in `prepare`, not
    between decode steps). Without a timeline: one set, the prompts as given."""

    def prompts_of(w: Window) -> tuple[str, ...]:
        return tuple(timeline.in_force(p, (w.offset + w.prompt) / mg.frame_rate) for p in pieces)

    encoded = {key: mg.encode_text(list(key)) for key in dict.fromkeys(map(prompts_of, plan))}
    return lambda w: encoded[prompts_of(w)]


def _encode_head(mg: MusicGen, clip: Clip | None, batch: int, frames: int, duration: float) -> torch.Tensor:
    """The frames the piece starts with [B, K, P]: the user's audio to continue, encoded (P = 0 without)."""
    if clip is None:
        return torch.zeros(batch, mg.num_codebooks, 0, dtype=torch.long, device=mg.device)
    audio = prepare_prompt_audio(clip[0], clip[1], batch, mg.audio_channels, mg.sample_rate, WINDOW)
    if frames_of(audio.shape[-1], mg.cfg.codec.hop_length) >= frames:
        raise InvalidInputError(f"duration {duration} s must be longer than the prompt audio "
                                f"({audio.shape[-1] / mg.sample_rate:.2f} s)")
    codes = mg.codec.encode(audio.to(mg.device))  # [B * C, Q, T]
    return rearrange(codes, "(b c) q t -> b (q c) t", b=batch)  # stereo: L0 R0 L1 R1 ...


def _frames(mg: MusicGen, duration: float) -> int:
    frames = round(duration * mg.frame_rate)
    if frames < 1:
        raise InvalidInputError(f"duration {duration} s is shorter than one frame ({1 / mg.frame_rate} s)")
    return frames


