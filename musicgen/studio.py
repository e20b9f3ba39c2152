"""The web app's engine side: which checkpoint a request needs, one model in memory at a time, request
validation with messages for people, seeds, a ZeroGPU time budget, cooperative Stop, and what the engine
can do (melody, diffusion decoder: read from `MusicGen.stream`'s signature, so the app follows the engine).

Nothing here imports Gradio: app.py maps `MusicGenError` to `gr.Error` and draws the page.
"""

from __future__ import annotations

import gc
import secrets
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import InvalidInputError
from .loudness import DEFAULT_STRATEGY, STRATEGIES
from .media import FORMATS
from .options import DECODERS, MAX_DURATION, MAX_TAKES, integer, number
from .pipeline import MusicGen, default_device
from .serve import Scheduler

SIZES = ("small", "medium", "large")
DECODER_LABELS = {"encodec": "EnCodec", "mbd": "Multi-band diffusion"}  # options.DECODERS, as the page names them
MIN_DURATION = 1.0  # the page's shortest piece (the engine takes any whole number of frames)
MAX_PROMPT_CHARS = 2000  # T5 reads at most 512 tokens; checked again in tokens once the model is loaded
MAX_SEED = 2**53 - 1  # seeds travel through JSON and JavaScript numbers: keep them exact there
RANDOM_SEED_BITS = 32  # fresh seeds are short enough to read and type


@dataclass(frozen=True)
class HubModel:
    """A Hub checkpoint the app can pick, with rough size and memory figures for the UI (approximate:
    float32 weights on disk and in CPU RAM; float16 language model on a GPU). `converted`: the repo ships
    pytorch_model*.bin only, turned once into a safetensors copy of the same size next to it in the HF cache."""

    repo: str
    params: str
    download_gb: float
    ram_gb: float
    vram_gb: float
    converted: bool = False

    @property
    def hint(self) -> str:
        disk = f" (.bin weights, converted once: ≈{2 * self.download_gb:g} GB on disk)" if self.converted else ""
        return (f"`{self.repo}`: {self.params} parameters, ≈{self.download_gb:g} GB download on first use{disk}, "
                f"≈{self.ram_gb:g} GB RAM on CPU or ≈{self.vram_gb:g} GB GPU memory")


#: Repos whose transformers weights are pickles only (no safetensors on main): see musicgen/convert.py.
PICKLE_ONLY = {"facebook/musicgen-medium", "facebook/musicgen-large"}


def _variants(size: str, melody: bool, params: str, gb: tuple[float, float], ram: float, vram: float) -> dict:
    """The mono and stereo repos of one size; `gb`: their download sizes (mono, stereo)."""
    base = {"small": "musicgen-{}small", "medium": "musicgen-{}medium", "large": "musicgen-{}large"}[size]
    if melody:
        base = "musicgen-{}melody" + ("-large" if size == "large" else "")
    repos = {stereo: "facebook/" + base.format("stereo-" if stereo else "") for stereo in (False, True)}
    return {(size, stereo, melody): HubModel(repo, params, gb[stereo], ram, vram, converted=repo in PICKLE_ONLY)
            for stereo, repo in repos.items()}


#: (size, stereo, melody) -> checkpoint. There is no small melody model: small + melody uses medium.
#: Download sizes, in GB (1e9 bytes), of what hub.py fetches: the float32 weights file(s) (safetensors, or for
#: medium / large the pytorch_model*.bin), the rest is < 3 MB. Not read off the Hub (unreachable here): counted
#: as 4 bytes x every tensor of transformers' model built on the meta device from each config (LM + t5-base
#: encoder + EnCodec 32 kHz incl. codebook buffers), the tied T5 embedding once, plus the 2048 x width sinusoid
#: table the 2023 files hold. Checked against the one size known: musicgen-small's model.safetensors, 2.36 GB.
#: Stereo: 4 more codebook embeddings and heads.
CHECKPOINTS: dict[tuple[str, bool, bool], HubModel] = {
    **_variants("small", False, "300M", (2.4, 2.4), 3.5, 2),
    **_variants("medium", False, "1.5B", (8.0, 8.1), 9, 5),
    **_variants("large", False, "3.3B", (13.7, 13.9), 15, 8),
    **_variants("medium", True, "1.5B", (6.2, 6.3), 7, 4),
    **_variants("large", True, "3.3B", (10.5, 10.6), 12, 6.5),
}
ALL_REPOS = sorted({c.repo for c in CHECKPOINTS.values()})
MBD_REPO = "facebook/multiband-diffusion"  # the diffusion decoder's weights (musicgen.mbd_checkpoint.REPO_ID)


def choose_checkpoint(size: str, stereo: bool, melody: bool) -> tuple[HubModel, str | None]:
    """-> (checkpoint, a notice for the user when the choice had to be adjusted, else None)."""
    if size not in SIZES:
        raise InvalidInputError(f"model size must be one of {', '.join(SIZES)}, got {size!r}")
    if melody and size == "small":
        ckpt = CHECKPOINTS[("medium", bool(stereo), True)]
        return ckpt, f"There is no small melody model: using {ckpt.repo} ({ckpt.params}) for the melody."
    return CHECKPOINTS[(size, bool(stereo), bool(melody))], None


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
    output_format: str = "wav"  # the result file's format (media.FORMATS)
    melody_trim: tuple[float, float | None] = (0.0, None)  # [start, end) seconds of the melody file (None: its end)
    continue_trim: tuple[float, float | None] = (0.0, None)  # the same for the audio to continue
    takes: int = 1  # variations made together, seeds seed, seed + 1, ... (options.MAX_TAKES at most)


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
                  continue_start: object = 0, continue_end: object = None, takes: object = 1) -> Request:
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
                   integer("takes", takes, 1, MAX_TAKES))


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


def gpu_seconds(model_size: str, duration: float, decoder: str, takes: int = 1) -> int:
    """A ZeroGPU time budget for one request: model-dependent seconds per second of audio plus set-up,
    more with the diffusion decoder (80 UNet passes per clip), times the takes (made one after another there)."""
    per_second = {"small": 0.5, "medium": 1.2, "large": 2.2}.get(model_size, 2.2)
    seconds = 15 + takes * duration * per_second * (2.5 if decoder == "mbd" else 1.0)
    return int(min(max(seconds, 30), 300))


def describe_oom(device: torch.device | str | None) -> str:
    where = "GPU" if str(device).startswith("cuda") else "the server's"
    return (f"out of memory: {where} memory is too small for this request. Try a smaller model, a shorter "
            "duration, or mono instead of stereo")


class ModelCache:
    """One model in memory at a time, loaded on demand under a lock; switching frees the previous one
    first, so peak memory is one model (plus whatever a cancelled run still holds until it stops). With
    `batch_rows`, the model's requests share decode steps through a `serve.Scheduler` of that many rows; a
    request for another model then waits until the running batch is done before the switch."""

    def __init__(self, loader: Callable[[str], MusicGen] | None = None, device: str | None = None,
                 batch_rows: int = 0, threads: int | None = None, **load_kwargs: object) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self._loader = loader or (lambda repo: MusicGen.from_pretrained(repo, device=self.device, **load_kwargs))
        self._lock = threading.Lock()
        self._repo: str | None = None
        self._model: MusicGen | None = None
        self.batch_rows, self.threads = batch_rows, threads
        self._scheduler: Scheduler | None = None

    @property
    def current(self) -> str | None:
        return self._repo

    def get(self, repo: str, on_load: Callable[[str], None] | None = None) -> MusicGen:
        """The model for `repo`, loading it (and calling `on_load(repo)` first) unless it is the current one."""
        with self._lock:
            if self._model is not None and self._repo == repo:
                return self._model
            self._free_locked()
            if on_load is not None:
                on_load(repo)
            model = self._loader(repo)
            self._model, self._repo = model, repo
            return model

    def engine(self, repo: str, on_load: Callable[[str], None] | None = None) -> tuple[MusicGen, MusicGen | Scheduler]:
        """(the model, what runs its generations: its scheduler with `batch_rows`, else the model itself)."""
        mg = self.get(repo, on_load)
        with self._lock:
            if not self.batch_rows:
                return mg, mg
            if self._scheduler is None or self._scheduler.mg is not mg:
                self._scheduler = Scheduler(mg, self.batch_rows, self.threads)
            return mg, self._scheduler

    def free(self) -> None:
        with self._lock:
            self._free_locked()

    def _free_locked(self) -> None:
        if self._scheduler is not None:  # its requests finish first (new ones wait for the lock meanwhile)
            while self._scheduler.load != (0, 0):
                time.sleep(0.05)
            self._scheduler.close()
            self._scheduler = None
        if self._model is None:
            return
        self._model, self._repo = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class StopRequests:
    """Cooperative Stop, per run. Generate arms a new run (before it queues, so a Stop while it still waits
    counts too); the page's Stop marks every run its browser session has armed and not finished; each run
    checks its own mark at every step and ends itself (closing the engine's generator). A new run never
    clears another run's pending stop, and a finished run's disarm removes only itself."""

    def __init__(self, max_age: float = 24 * 3600) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[str, bool, float]] = {}  # run id -> (session, stop requested, armed at)
        self.max_age = max_age  # runs armed but never started (a full queue refused them) are forgotten then

    def arm(self, session: str) -> str:
        """A new run of `session`; returns its id."""
        run, now = uuid.uuid4().hex, time.monotonic()
        with self._lock:
            for old in [r for r, (_, _, t) in self._runs.items() if now - t > self.max_age]:
                del self._runs[old]
            self._runs[run] = (session, False, now)
        return run

    def request(self, session: str) -> bool:
        """Stop every armed run of `session`; -> whether there was one."""
        with self._lock:
            mine = [r for r, (s, _, _) in self._runs.items() if s == session]
            for r in mine:
                s, _, t = self._runs[r]
                self._runs[r] = (s, True, t)
        return bool(mine)

    def requested(self, run: str | None) -> bool:
        with self._lock:
            return run in self._runs and self._runs[run][1]

    def disarm(self, run: str | None) -> None:
        with self._lock:
            self._runs.pop(run, None)
