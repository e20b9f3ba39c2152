"""One generation's options: a frozen dataclass, its defaults and every check, in one place.

Everything that shapes a generation besides the prompts (sampling, seed, duration, melody, continuation,
window stride, decoder, the level of the audio returned) is a `GenerationOptions`. `MusicGen.generate(prompts,
duration, **kwargs)` is `options(None, duration=duration, **kwargs)`, the CLI and the web app build one, and
`verify` is the only place a value is checked (the web app's request parsing turns form fields into numbers
first, then calls it). Defaults are audiocraft's (MusicGen.set_generation_params, musicgen_app.py).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from . import loudness
from .errors import InvalidInputError

DECODERS = ("encodec", "mbd")  # EnCodec's own decoder, or multi-band diffusion
WINDOW = 30.0  # seconds: the window the released models were trained on (audiocraft max_duration)
EXTEND_STRIDE = 18.0  # seconds each further window adds (audiocraft's default extend_stride)
MAX_DURATION = 300.0  # longest piece: made window by window beyond WINDOW
DEFAULT_DURATION = 10.0  # audiocraft's demo default
SEED_BITS = 63  # seeds are non-negative int64 (torch.Generator.manual_seed)
MAX_TAKES = 4  # variations of one request made together: 4 guided takes are 8 rows of a decode step (serve.py)

Clip = tuple[Any, int]  # (wave, sample_rate): a tensor or array [S], [C, S] or [B, C, S], any rate
ProgressFn = Callable[[int, int], None]  # progress(step, total), called after every decode / diffusion step


@dataclass(frozen=True)
class GenerationOptions:
    duration: float = DEFAULT_DURATION  # seconds of audio, up to MAX_DURATION (window by window beyond WINDOW)
    top_k: int = 250  # sample among the k most likely tokens; 0 = off
    top_p: float = 0.0  # nucleus mass; > 0 overrides top_k
    temperature: float = 1.0  # 0 = greedy
    cfg_coef: float = 3.0  # classifier-free guidance
    seed: int | None = None  # None: a fresh random seed (returned with the output)
    melody: Clip | None = None  # the tune to follow (melody checkpoints)
    continue_from: Clip | None = None  # audio the piece starts with and goes on from (shorter than WINDOW)
    extend_stride: float = EXTEND_STRIDE  # beyond WINDOW: seconds each new window adds
    decoder: str = "encodec"  # one of DECODERS
    normalize: str = loudness.DEFAULT_STRATEGY  # level of the audio returned: one of loudness.STRATEGIES
    # melody checkpoints: keep the melody's vocals + other (demucs htdemucs) before its chroma, as audiocraft does;
    # None = on, unless $MUSICGEN_SEPARATE_MELODY=0 (stems.wanted); False = the whole mix (as transformers)
    separate_melody: bool | None = None


NAMES = tuple(f.name for f in fields(GenerationOptions))


def options(base: GenerationOptions | None = None, **changes: Any) -> GenerationOptions:
    """`base` (default: the defaults) with `changes`, verified: whisper's `replace(options, **kwargs)`."""
    if unknown := sorted(set(changes) - set(NAMES)):
        raise InvalidInputError(f"unknown generation option(s) {', '.join(unknown)}; the options are "
                                f"{', '.join(NAMES)}")
    return verify(replace(base or GenerationOptions(), **changes))


def number(name: str, value: object, lo: float = 0.0, hi: float = math.inf) -> float:
    """A finite number (not a bool) in [lo, hi], or an error naming the field and what it got."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidInputError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
    return float(value)


def integer(name: str, value: object, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] (2.0 counts as 2: web forms send numbers as floats)."""
    v = number(name, value, lo, hi)
    if v != int(v):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    return int(v)


def _pair(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, (tuple, list)) or len(value) != 2):
        raise InvalidInputError(f"{name} must be a (wave, sample_rate) pair")


def verify(o: GenerationOptions) -> GenerationOptions:
    """Every check of the options that does not depend on the model (the model's own: melody support and
    the prompt audio's length, in the pipeline). Returns `o`."""
    d = o.duration
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
        raise InvalidInputError(f"duration must be a finite number of seconds, got {d!r}")
    if d <= 0:
        raise InvalidInputError(f"duration must be positive, got {d}")
    if d > MAX_DURATION:
        raise InvalidInputError(f"duration {d} s is beyond the {MAX_DURATION:g} s limit")
    if isinstance(o.top_k, bool) or not isinstance(o.top_k, int) or o.top_k < 0:
        raise InvalidInputError(f"top_k must be a non-negative integer (0 = off), got {o.top_k!r}")
    number("top_p", o.top_p, 0.0, 1.0)
    number("temperature", o.temperature)
    number("cfg_coef", o.cfg_coef)
    if o.seed is not None and (isinstance(o.seed, bool) or not isinstance(o.seed, int)
                               or not 0 <= o.seed < 2**SEED_BITS):
        raise InvalidInputError(f"seed must be an integer in [0, 2**{SEED_BITS}), got {o.seed!r}")
    _pair("melody", o.melody)
    _pair("continue_from", o.continue_from)
    if isinstance(o.extend_stride, bool) or not isinstance(o.extend_stride, (int, float)) or not (
            0 < o.extend_stride <= WINDOW):
        raise InvalidInputError(f"extend_stride must be in (0, {WINDOW:g}] seconds, got {o.extend_stride!r}")
    if o.separate_melody is not None and not isinstance(o.separate_melody, bool):
        raise InvalidInputError(f"separate_melody must be True, False or None (the default: on), got "
                                f"{o.separate_melody!r}")
    if o.decoder not in DECODERS:
        raise InvalidInputError(f"decoder must be one of {DECODERS}, got {o.decoder!r}")
    if not isinstance(o.normalize, str) or o.normalize not in loudness.STRATEGIES:
        raise InvalidInputError(f"normalize must be one of {', '.join(loudness.STRATEGIES)} (\"loudness\": "
                                f"-{loudness.LOUDNESS_HEADROOM_DB:g} LUFS, \"none\": the decoder's raw output), "
                                f"got {o.normalize!r}")
    return o


def seed_of(o: GenerationOptions) -> int:
    """The seed that reproduces this generation: the given one, or a fresh one."""
    return secrets.randbits(SEED_BITS) if o.seed is None else o.seed


def take_seeds(first: int, takes: int, bound: int = 2**SEED_BITS) -> list[int]:
    """The seeds of `takes` variations: `first`, first + 1, ..., wrapping within [0, bound)."""
    if isinstance(takes, bool) or not isinstance(takes, int) or not 1 <= takes <= MAX_TAKES:
        raise InvalidInputError(f"takes must be a whole number from 1 to {MAX_TAKES}, got {takes!r}")
    return [(first + k) % bound for k in range(takes)]


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """One prompt or a non-empty list of them ("" = unconditional)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise InvalidInputError("prompts must be a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidInputError(f"prompt {i} is a {type(p).__name__}, not a string")
    return list(prompts)


def check_tokens(tokens: torch.Tensor, codebooks: int, card: int) -> torch.Tensor:
    """Codes to decode: [B, K, T] integers in [0, card), K the model's codebooks, T > 0 -> long."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        raise InvalidInputError("tokens must be a tensor of shape [B, K, T]")
    if tokens.shape[1] != codebooks:
        raise InvalidInputError(f"tokens have {tokens.shape[1]} codebooks, this model uses {codebooks}")
    if tokens.is_floating_point() or tokens.is_complex():
        raise InvalidInputError("tokens must be integers")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= card):
        raise InvalidInputError(f"tokens must be in [0, {card})")
    if tokens.shape[-1] == 0:
        raise InvalidInputError("tokens have no frames")
    return tokens.long()
