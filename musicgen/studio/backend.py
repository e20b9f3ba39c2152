"""The studio's server side, shared by every visitor: the model cache and its scheduler, result files, Stop,
jobs (a checked request and what it needs), and every failure turned into a message for people (`gr.Error`).

page.py draws the page and wires it to this; request.py, catalog.py, models.py and session.py hold the parts
that need no Gradio.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pydantic
import torch
from gradio.exceptions import InvalidPathError

from .. import audio_io, stems, timeline
from ..errors import DownloadError, InvalidInputError, MusicGenError
from ..options import EXTEND_STRIDE
from ..pipeline import MusicGen
from ..serve import MAX_ROWS
from . import catalog, request, session, waits
from .models import ModelCache

log = logging.getLogger("musicgen.app")
PROGRESS_EVERY = 0.25  # seconds between progress updates to a client (also how soon a cancel is noticed)


@dataclass(frozen=True)
class Job:
    """A validated request and what it needs: the checkpoint, a notice for the user, the user's audio."""

    req: request.Request
    ckpt: catalog.HubModel | catalog.OwnerModel
    notice: str | None
    melody: session.Clip | None
    continuation: session.Clip | None = None


class Studio:
    """Server state shared by every visitor: the model cache, output files, what the engine can do."""

    def __init__(self, device: str | None = None, stream: bool | None = None, batch_rows: int | None = None,
                 threads: int | None = None, models: Sequence[catalog.OwnerModel] = (), **load_kwargs: object) -> None:
        rows = 0 if _spaces() is not None else MAX_ROWS if batch_rows is None else batch_rows
        self.models = {m.name: m for m in models}  # the owner's models, by display name (catalog.parse_models)
        self.cache = ModelCache(device=device, batch_rows=rows, threads=threads, **load_kwargs)
        # visitors generating at once: a scheduler runs rows // 2 guided requests per step and queues the rest
        # (showing each its place); without one (ZeroGPU: the GPU is lent per call), one at a time
        self.concurrency = max(1, rows)
        self.stream = shutil.which("ffmpeg") is not None if stream is None else stream  # Gradio encodes with it
        self.out_dir = Path(tempfile.mkdtemp(prefix="musicgen-studio-"))
        self.stops = StopRequests()
        self.run_events = _zero_gpu(self._run_events)
        self.confirm_above = waits.CONFIRM_ABOVE  # expected diffusion seconds after which the page asks first
        self._clocks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # MBD decoder -> its DiffusionClock

    def job(self, *args: object) -> Job:
        """Check the request fields (in API order), pick the checkpoint, read the user's audio: no model
        needed."""
        req = request.parse_request(*args)
        ckpt, notice = self.checkpoint(req)
        uploads = (audio_io.load_melody(req.melody_path, *req.melody_trim) if req.melody_path else None,
                   audio_io.load_continuation(req.continue_path, *req.continue_trim) if req.continue_path else None)
        melody, clip = (u.clip if u else None for u in uploads)
        if clip is not None:
            request.check_continuation(req.duration, clip)
        notes = (notice, *(u.notice for u in uploads if u), *_unheard(req, clip))
        notice = " ".join(n for n in notes if n) or None
        return Job(req, ckpt, notice, melody, clip)

    def checkpoint(self, req: request.Request) -> tuple[catalog.HubModel | catalog.OwnerModel, str | None]:
        """The checkpoint a request asks for: the owner's model it names, else Meta's by size / stereo / melody."""
        if not req.model:
            return catalog.choose_checkpoint(req.model_size, req.stereo, req.melody_path is not None)
        if req.model not in self.models:
            offered = ", ".join(repr(n) for n in self.models) or "none"
            raise InvalidInputError(f"model {req.model!r} is not offered by this server: its own models are {offered} "
                                    "(or leave model empty for Meta's, chosen by model_size, stereo and melody)")
        return self.models[req.model], None

    def model(self, job: Job, on_load: Callable[[str], None] | None = None) -> MusicGen:
        mg = self.cache.get(job.ckpt.repo, on_load=on_load)
        request.check_prompt_tokens(mg, job.req.prompt)
        return mg

    def separates(self, job: Job) -> bool:
        """Will this job's melody be separated into stems first (seconds to a minute on a CPU)?"""
        return _separates(job.req, job.melody)

    def slow_diffusion(self, job: Job) -> bool:
        """Will this job's decode be multi-band diffusion on a CPU (minutes; seconds on a GPU)?"""
        return job.req.decoder == "mbd" and self.cache.device.type == "cpu"

    def diffusion_wait(self, job: Job, mg: MusicGen) -> waits.Wait:
        """How long this job's multi-band diffusion decode is expected to take (timed here on first use, after
        the decoder's download)."""
        mbd = mg.mbd
        clock = self._clocks.get(mbd)
        if clock is None:
            clock = self._clocks.setdefault(mbd, waits.DiffusionClock(mbd, mg.cfg.codec.hop_length))
        return clock.estimate(job.req.duration, mg.audio_channels, job.req.takes)

    def _run_events(self, repo: str, req: request.Request, melody: session.Clip | None,
                    continuation: session.Clip | None, stream: bool) -> Iterator[session.Take]:
        """The GPU part (what `spaces.GPU` wraps on ZeroGPU): the model is loaded before, outside it. Each of
        the request's takes' events (chunks only of the first)."""
        with self.cache.lease(repo) as (mg, engine):  # a switch to another model waits until this run ends
            yield from session.run_takes(mg, req, melody, continuation=continuation, stream=stream, engine=engine)

    def write(self, audio: Any, sample_rate: int, seed: int, fmt: str, tag: str = "") -> Path:
        """A result file in format `fmt` (audio_io.FORMATS), under a name of its own."""
        return audio_io.write_audio(self.output_path(seed, tag), audio, sample_rate, fmt)

    def output_path(self, seed: int, tag: str = "") -> Path:
        """A new file name for one result: unique per request (two visitors with the same seed in the same
        second must never share a file), keeping the seed in the name for the person who downloads it."""
        cutoff = time.time() - 3600  # keep an hour of results on disk
        for old in self.out_dir.glob("musicgen-*"):
            with contextlib.suppress(FileNotFoundError):  # another request's cleanup got there first
                if old.stat().st_mtime < cutoff:
                    old.unlink(missing_ok=True)
        return self.out_dir / f"musicgen-{seed}{tag}-{uuid.uuid4().hex[:12]}.wav"


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


def _unheard(req: request.Request, clip: session.Clip | None) -> list[str]:
    """What of a timeline prompt no part of the piece plays (timeline.unheard), as sentences for the visitor."""
    entries = timeline.parse(req.prompt)
    if entries is None:
        return []
    head = clip[0].shape[-1] / clip[1] if clip is not None else 0.0
    notes = timeline.unheard(timeline.check(entries, req.duration), req.duration, EXTEND_STRIDE, head=head)
    return [f"Timeline: {n}." for n in notes]


def _separates(req: request.Request, melody: object) -> bool:
    """Does a request with this melody (None: none) separate its stems first?"""
    return melody is not None and stems.wanted(req.separate_melody)


def _spaces() -> Any:
    """Hugging Face's `spaces` package (present on a ZeroGPU Space), else None."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return None
    return spaces


def _zero_gpu(fn: Callable) -> Callable:
    """On a ZeroGPU Space, `spaces.GPU` with a time budget estimated from the request; elsewhere `fn`."""
    spaces = _spaces()
    if spaces is None:
        return fn

    def budget(repo: str, req: request.Request, melody: object, continuation: object, stream: bool) -> int:
        size = req.model_size if not req.model else "large"  # an owner's model: budget as for the largest
        return catalog.gpu_seconds(size, req.duration, req.decoder, req.takes, _separates(req, melody))

    return spaces.GPU(duration=budget)(fn)


@contextlib.contextmanager
def user_errors(st: Studio) -> Iterator[None]:
    """Every failure becomes a `gr.Error` with a message for people; the server keeps serving."""
    try:
        yield
    except gr.Error:
        raise
    except stems.SeparatorUnavailable as e:
        log.warning("melody separator download failed: %s", e)
        why = str(e).split("; or pass separate_melody")[0]
        raise gr.Error(f"The melody separator could not be loaded: {why}. Switch off “Separate the melody from "
                       "drums and bass” to follow the whole mix instead.", title="Melody separator unavailable",
                       print_exception=False) from e
    except DownloadError as e:
        log.warning("model download failed: %s", e)
        raise gr.Error(f"The model could not be loaded: {e}", title="Model unavailable", print_exception=False) from e
    except MusicGenError as e:
        msg = str(e)
        raise gr.Error(msg[:1].upper() + msg[1:], title="Cannot generate", print_exception=False) from e
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and not _is_oom_message(str(e)):
            raise _internal_error(e) from e
        log.warning("out of memory: %s", e)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise gr.Error(catalog.describe_oom(st.cache.device), title="Out of memory", print_exception=False) from e
    except Exception as e:
        raise _internal_error(e) from e


def _internal_error(e: BaseException) -> gr.Error:
    """A failure that is ours, not the visitor's: the details (which may name files and internals) go to the
    server log under a short id; the visitor gets the id to quote."""
    error_id = uuid.uuid4().hex[:8]
    log.error("generation failed [error %s]", error_id, exc_info=e)
    return gr.Error(f"Generation failed on the server (error id {error_id}). Please try again; if it keeps "
                    "failing, report the error id.", title="Generation failed", print_exception=False)


def _is_oom_message(msg: str) -> bool:
    """CPU allocations that fail surface as a RuntimeError from torch's allocator."""
    msg = msg.lower()
    return "out of memory" in msg or "can't allocate memory" in msg


def readable_input_errors(demo: gr.Blocks) -> None:
    """Gradio reads every request's values before a handler runs: its refusals (a file input that is a
    server path, a URL or not a file at all; too few values) would reach the visitor as an opaque error, or
    with show_error=True as a pydantic dump naming server paths. They become messages a person can act on;
    the details go to the server log. (Number and text values are not refused there: see `as_sent`.)"""
    original = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        try:
            return await original(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except (InvalidPathError, pydantic.ValidationError) as e:
            log.info("refused a file input: %s", e)
            raise gr.Error("melody and continue_audio must be audio files uploaded to this server (with "
                           "gradio_client: handle_file(path)); paths on the server, URLs and other values are "
                           "refused", title="Bad file input", print_exception=False) from None
        except ValueError as e:  # Gradio's own checks of the request's shape
            log.info("refused a request: %s", e)
            params = [p for p in inspect.signature(block_fn.fn).parameters if p not in ("progress", "request")]
            names = ", ".join(params[: len(block_fn.inputs)])
            raise gr.Error(f"this request's values could not be read: send {len(block_fn.inputs)} values, in "
                           f"this order: {names} (see the API page)", title="Bad request",
                           print_exception=False) from None

    demo.preprocess_data = preprocess_data  # type: ignore[method-assign]
