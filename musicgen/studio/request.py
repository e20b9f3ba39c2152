"""A studio request: every field a visitor (page or API) sends, checked before any model is loaded, with
messages a person can act on; seeds."""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass

from ..audio_io import FORMATS
from ..errors import InvalidInputError
from ..loudness import DEFAULT_STRATEGY, STRATEGIES
from ..options import DECODERS, MAX_DURATION, MAX_TAKES, integer, number
from ..pipeline import MusicGen
from .catalog import SIZES

MIN_DURATION = 1.0  # the page's shortest piece (the engine takes any whole number of frames)
MAX_PROMPT_CHARS = 2000  # T5 reads at most 512 tokens; checked again in tokens once the model is loaded
MAX_SEED = 2**53 - 1  # seeds travel through JSON and JavaScript numbers: keep them exact there
RANDOM_SEED_BITS = 32  # fresh seeds are short enough to read and type


@dataclass(frozen=True)
class Request:
    """A validated generation request (what the UI and the API endpoint send)."""

    prompt: str
    duration: float
    model_size: str
    stereo: bool
    decoder: str
    melody_path: str | None
    top_k: int
    top_p: float
    temperature: float
    cfg_coef: float
    seed: int | None  # None: draw a fresh one
    continue_path: str | None = None  # audio the piece starts with (and goes on from)
    loudness: str = DEFAULT_STRATEGY  # how the result is normalised (loudness.STRATEGIES)
    output_format: str = "wav"  # the result file's format (audio_io.FORMATS)
    melody_trim: tuple[float, float | None] = (0.0, None)  # [start, end) seconds of the melody file (None: its end)
    continue_trim: tuple[float, float | None] = (0.0, None)  # the same for the audio to continue
    takes: int = 1  # variations made together, seeds seed, seed + 1, ... (options.MAX_TAKES at most)
    model: str = ""  # one of the owner's models by name (catalog.OwnerModel); "": Meta's, by size / stereo / melody
    separate_melody: bool | None = None  # the melody's stems (demucs) before its chroma; None: the server's default


def parse_seed(seed: object) -> int | None:
    """None, "" or a negative number: random; else an integer in [0, MAX_SEED]."""
    if seed is None or seed == "":
        return None
    if isinstance(seed, str):
        try:
            seed = float(seed.strip())
        except ValueError:
            raise InvalidInputError(f"seed must be a whole number (or -1 for random), got {seed!r}") from None
    if isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed < 0:
        return None
    return integer("seed", seed, 0, MAX_SEED)


def fresh_seed() -> int:
    return secrets.randbits(RANDOM_SEED_BITS)


def parse_request(prompt: object, duration: object, model_size: object, stereo: object, decoder: object,
                  melody: object, top_k: object, top_p: object, temperature: object, cfg_coef: object,
                  seed: object, continue_audio: object = None, loudness: object = DEFAULT_STRATEGY,
                  output_format: object = "wav", melody_start: object = 0, melody_end: object = None,
                  continue_start: object = 0, continue_end: object = None, model: object = "",
                  separate_melody: object = None, takes: object = 1) -> Request:
    """Check every field of a request before any model is loaded; errors say what to change."""
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InvalidInputError(f"the prompt must be text, got {type(prompt).__name__} {str(prompt)[:40]!r}")
    # control and format characters (NUL, ESC, zero-width, ...) carry no words: a prompt of only those is empty
    prompt = " ".join("".join(c for c in prompt if c.isspace() or unicodedata.category(c)[0] != "C").split())
    if not prompt:
        raise InvalidInputError("the prompt is empty: describe the music you want, e.g. \"lofi hip hop beat with "
                                "mellow piano\"")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidInputError(f"the prompt is {len(prompt)} characters long; keep it under {MAX_PROMPT_CHARS} "
                                "(the text encoder reads at most 512 tokens)")
    duration = number("duration", duration, MIN_DURATION, MAX_DURATION)
    if model_size not in SIZES:
        raise InvalidInputError(f"model_size must be one of {', '.join(SIZES)}, got {model_size!r}")
    if not isinstance(stereo, bool):
        raise InvalidInputError(f"stereo must be true or false, got {stereo!r}")
    if decoder not in DECODERS:
        raise InvalidInputError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    melody_path = _file("melody", melody)
    continue_path = _file("continue_audio", continue_audio)
    if loudness not in STRATEGIES:
        raise InvalidInputError(f"loudness must be one of {', '.join(STRATEGIES)}, got {loudness!r}")
    if output_format not in FORMATS:
        raise InvalidInputError(f"output_format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    return Request(prompt, duration, str(model_size), stereo, str(decoder), melody_path,
                   integer("top_k", top_k, 0, 2048), number("top_p", top_p, 0.0, 1.0),
                   number("temperature", temperature, 0.0, 10.0), number("cfg_coef", cfg_coef, 0.0, 100.0),
                   parse_seed(seed), continue_path, str(loudness), str(output_format),
                   _trim("melody", melody_start, melody_end), _trim("continue", continue_start, continue_end),
                   integer("takes", takes, 1, MAX_TAKES), _model(model), _switch("separate_melody", separate_melody))


def _model(value: object) -> str:
    """The `model` field: a name (checked against the owner's list by the server), or "" / None for Meta's."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 200:
        raise InvalidInputError(f"model must be the name of one of this server's models, got {str(value)[:60]!r}")
    return value.strip()


def _switch(name: str, value: object) -> bool | None:
    """A true / false field; None (not sent) keeps the server's default."""
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInputError(f"{name} must be true or false, got {value!r}")


def _trim(name: str, start: object, end: object) -> tuple[float, float | None]:
    """[start, end) seconds of an upload: start 0 or more (empty: 0), end after it (empty, 0 or -1: the file's end;
    Replicate's continuation_end uses -1)."""
    start = 0.0 if start is None or start == "" else number(f"{name}_start", start, 0.0, 3600.0)
    if end is None or end == "" or (isinstance(end, (int, float)) and not isinstance(end, bool) and end in (0, -1)):
        return start, None
    end = number(f"{name}_end", end, 0.0, 3600.0)
    if end <= start:
        raise InvalidInputError(f"{name}_end ({end:g} s) must come after {name}_start ({start:g} s)")
    return start, end


def _file(name: str, value: object) -> str | None:
    """An uploaded file's server path (Gradio hands the handler a path string), or None when empty."""
    if not value:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be an uploaded audio file, got {type(value).__name__}")
    return value


def check_continuation(duration: float, clip: tuple[object, int]) -> None:
    """The duration counts the clip being continued: it must leave room for new music."""
    seconds = clip[0].shape[-1] / clip[1]  # type: ignore[attr-defined]
    if duration <= seconds:
        raise InvalidInputError(f"the audio to continue is {seconds:.1f} s long and the duration counts it: set "
                                f"the duration above {seconds:.1f} s (now {duration:g} s)")


def check_prompt_tokens(mg: MusicGen, prompt: str) -> None:
    """The T5 limit in tokens (the engine would silently keep the first 512)."""
    n = len(mg.tokenizer.tok.encode(prompt).ids)
    if n > mg.tokenizer.max_tokens:
        raise InvalidInputError(f"the prompt is {n} tokens long; the text encoder reads at most "
                                f"{mg.tokenizer.max_tokens}: shorten it")


