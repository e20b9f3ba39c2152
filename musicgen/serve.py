"""Many requests at once: one decode loop over every active request's rows (continuous batching).

A decode step reads every weight of the language model once whatever the batch, so extra rows are nearly
free. The `Scheduler` owns a `MusicGen` and a thread that runs one decode step at a time for all active
requests (`generate.decode_steps`). A request submitted from any thread is checked there, waits in a FIFO
line while the batch is full, and joins at the next step: it is prepared in the loop's thread (T5, the user's
audio encoded: with the same threads as `MusicGen.generate` alone, since a matrix product's last bits depend
on the thread count) and its window is set up (conditioning, melody prefix, continuation prompt) in KV cache
rows of its own. Each request keeps
its own duration, windows, sampling settings, guidance and random generator; it leaves when its tokens are
done (or at the next step after a cancel), freeing its rows for the next in line. On a CPU the loop also
decodes each request's EnCodec audio as its frames complete, a chunk at a time between steps and on the
loop's threads (the same cuts as `MusicGen.decode`: the same samples), so little is left after the last token;
levelling the audio and the multi-band diffusion decoder run in the requester's thread, outside the loop.

Seeds hold: a request's tokens do not depend on who else is in the batch. Every op of the step is row by
row or per request (layout.DynamicInt8Linear quantizes each row on its own and sums exactly in integers;
attention runs per request on its own slots), so on the default CPU path (int8) the tokens are bit for bit
those of the same request alone, or of `MusicGen.generate`. Float32 (MKL's matrix products pick kernels by
row count) and CUDA (cuBLAS does too) keep the same music in law but not to the last bit: see README.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import timeline
from .errors import InvalidInputError
from .generate import Generation, decode_rows, decode_steps
from .lm import KVCache
from .options import WINDOW, GenerationOptions, ProgressFn, seed_of, take_seeds
from .options import options as make_options
from .pipeline import GenerationOutput, MusicGen, StreamStep
from .prepare import prepare, separate_melody
from .streaming import ChunkedDecode
from .timeline import Prompts

MAX_ROWS = 16  # 8 guided requests: measured on 2 CPU cores (int8), a step of 16 rows costs ~2.3x one of 2
MEMORY_SHARE = 0.5  # of the memory available when the scheduler starts, at most, for its KV cache
STOP_POLL = 0.2  # seconds between looks at a reader's `stopped()` while its request waits for news


@dataclass(frozen=True)
class Queued:
    """The request waits for free rows: `ahead` requests are before it in line."""

    ahead: int


class SlotCache:
    """Self-attention keys / values for up to `rows` rows, allocated once: [layers, rows, H, slots, head_dim].
    A request takes a run of consecutive rows (first fit) and gives it back when it leaves. On the CPU the
    memory is reserved, not touched: pages are committed as rows are written (every slot a request reads,
    it wrote first)."""

    def __init__(self, mg: MusicGen, rows: int, slots: int) -> None:
        cfg = mg.cfg.lm
        shape = (cfg.num_layers, rows, cfg.num_heads, slots, cfg.head_dim)
        self.k = torch.empty(shape, device=mg.device, dtype=mg.lm.cache_dtype)
        self.v = torch.empty(shape, device=mg.device, dtype=mg.lm.cache_dtype)
        self.free = [True] * rows
        self.slots = slots

    def take(self, n: int) -> int | None:
        """The first row of `n` free consecutive rows, now taken; None when there is no such run."""
        run = 0
        for i, free in enumerate(self.free):
            run = run + 1 if free else 0
            if run == n:
                start = i + 1 - n
                self.free[start : i + 1] = [False] * n
                return start
        return None

    def give(self, start: int, n: int) -> None:
        self.free[start : start + n] = [True] * n

    def view(self, start: int, rows: int, slots: int) -> KVCache:
        """A window's cache: rows start.. of the shared tensors, its first `slots` slots (views, no copy)."""
        assert slots <= self.slots, f"a window needs {slots} cache slots, the scheduler has {self.slots}"
        return KVCache(self.k[:, start : start + rows, :, :slots], self.v[:, start : start + rows, :, :slots])


class Ticket:
    """One submitted request: the scheduler thread posts its progress here; `Scheduler.stream` reads it."""

    def __init__(self, prompts: Prompts, o: GenerationOptions, rows: int, extra_steps: int, decode: bool) -> None:
        self.prompts, self.options, self.rows, self.extra_steps = prompts, o, rows, extra_steps
        self.decode = decode  # the requester wants the EnCodec audio
        self.gen: Generation | None = None  # prepared by the loop when the request joins
        self.decoding: ChunkedDecode | None = None  # its EnCodec audio, decoded by the loop as frames complete
        self.decoded: torch.Tensor | None = None  # that audio, once its tokens are done
        self.seed = 0
        self.start: int | None = None  # first cache row, while it runs
        self.cancelled = False
        self.latest: StreamStep | None = None
        self.tokens: torch.Tensor | None = None  # set when its tokens are done
        self.error: BaseException | None = None
        self.ahead = 0  # requests before it in line (0 once running)

    @property
    def total(self) -> int:
        assert self.gen is not None
        return self.gen.total + self.extra_steps


class Scheduler:
    """Continuous batching over one `MusicGen`: `stream` (same events as `MusicGen.stream`, plus `Queued`)
    and `generate` from any number of threads. `max_rows`: rows in a decode step (2 per guided prompt);
    default: what MEMORY_SHARE of the available memory holds, at most MAX_ROWS."""

    def __init__(self, mg: MusicGen, max_rows: int | None = None, threads: int | None = None) -> None:
        self.mg = mg
        self.threads = threads or torch.get_num_threads()  # intra-op threads of the decode loop
        slots = window_slots(mg)
        self.max_rows = max_rows or default_max_rows(mg, slots)
        self.cache = SlotCache(mg, self.max_rows, slots)
        self.waiting: list[Ticket] = []
        self.active: list[Ticket] = []
        self.steps = 0  # decode steps run, all requests together
        self.peak_rows = 0  # the most rows one decode step has run
        self.loop_threads = 0  # the decode loop's intra-op threads, once it runs
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="musicgen-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the requester's side
    def stream(self, prompts: Prompts, duration: float | None = None, *,
               options: GenerationOptions | None = None, progress: ProgressFn | None = None, decode: bool = True,
               stopped: Callable[[], bool] | None = None,
               **changes: Any) -> Iterator[Queued | StreamStep | GenerationOutput]:
        """As `MusicGen.stream`, sharing the decode steps with every other request: `Queued` while it waits,
        the newest `StreamStep` whenever the reader asks (steps it was too slow for are skipped), then the
        `GenerationOutput`. Closing the iterator (or a `Stopped` reader) cancels the request; so does
        `stopped()` turning true (polled every STOP_POLL seconds: for a reader in another thread, which cannot
        close a generator that is waiting, e.g. a visitor who leaves while still in line)."""
        o = make_options(options, **({} if duration is None else {"duration": duration}), **changes)
        rows = request_rows(prompts, o)
        if rows > self.max_rows:
            raise InvalidInputError(f"these prompts need {rows} rows; this server runs at most {self.max_rows} "
                                    "at once")
        mbd = self.mg.mbd if o.decoder == "mbd" else None  # fetched now, so a download error comes early
        o = separate_melody(self.mg, prompts, o, stopped)  # here, in the requester's thread: the loop keeps stepping
        ticket = Ticket(prompts, o, rows, mbd.total_steps if mbd is not None else 0, decode)
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self.waiting.append(ticket)
            self._renumber()
            self._cv.notify_all()
        try:
            yield from self._events(ticket, stopped)
            if ticket.tokens is None or ticket.gen is None:  # cancelled from another thread
                return
            yield self.mg.output(ticket.tokens, o.decoder, ticket.seed, decode=decode, progress=progress,
                                 steps_before=ticket.gen.total, normalize=o.normalize, decoded=ticket.decoded)
        finally:
            self.cancel(ticket)

    def generate(self, prompts: Prompts, duration: float | None = None, **kwargs: Any) -> GenerationOutput:
        """As `MusicGen.generate` (blocking), batched with whatever else runs."""
        progress = kwargs.get("progress")
        for event in self.stream(prompts, duration, **kwargs):
            if isinstance(event, GenerationOutput):
                return event
            if isinstance(event, StreamStep) and progress is not None:
                progress(event.step, event.total)
        raise AssertionError("stream ended without an output")

    def _events(self, t: Ticket, stopped: Callable[[], bool] | None = None) -> Iterator[Queued | StreamStep]:
        """The ticket's news, read in the requester's thread: its place in line while it waits, the newest
        step while it runs; returns once its tokens are done (raises its error, if any) or `stopped()`."""
        seen: StreamStep | None = None
        ahead: int | None = None
        while True:
            if stopped is not None and stopped():
                self.cancel(t)
                return
            with self._cv:
                if not self._cv.wait_for(functools.partial(_news, t, seen, ahead),
                                         timeout=None if stopped is None else STOP_POLL):
                    continue
                error, latest, ahead_now, done = t.error, t.latest, t.ahead, t.tokens is not None
                waiting, cancelled = t.start is None, t.cancelled
            if error is not None:
                raise error
            if cancelled:
                return
            if latest is not seen and latest is not None:
                seen = latest
                yield latest
            elif waiting and ahead_now != ahead:
                ahead = ahead_now
                yield Queued(ahead)
            elif done:
                return

    def cancel(self, t: Ticket) -> None:
        """Stop a request: out of the line at once, out of the batch at the next step."""
        with self._cv:
            t.cancelled = True
            if t in self.waiting:
                self.waiting.remove(t)
                self._renumber()
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for t in self.waiting + self.active:
                t.error = t.error or RuntimeError("the server is shutting down")
            self._cv.notify_all()
        self._thread.join(timeout=10)

    @property
    def load(self) -> tuple[int, int]:
        """(requests running, requests waiting)."""
        with self._cv:
            return len(self.active), len(self.waiting)

    # ------------------------------------------------------------------ the loop
    def _renumber(self) -> None:
        for i, t in enumerate(self.waiting):
            t.ahead = i

    def _loop(self) -> None:
        if self.mg.device.type == "cpu":
            own_intra_op_threads(self.threads)
        self.loop_threads = torch.get_num_threads()
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or self.active or self.waiting)
                if self._closed:
                    return
                self._leave_cancelled()
                joining = self._admit()
            for t in joining:
                self._guard([t], functools.partial(self._join, t))
            running = [t for t in self.active if t.error is None]
            if running:
                self._guard(running, functools.partial(decode_steps, self.mg.lm, [t.gen for t in running]))
                self.steps += 1
                self.peak_rows = max(self.peak_rows, sum(t.rows for t in running))
            frames = {t: t.gen.frames().cpu() for t in running if t.error is None and t.gen is not None}
            with self._cv:  # the news first: the decoding below must not hold up anyone's progress
                for t, f in frames.items():
                    t.latest = StreamStep(t.gen.step, t.total, f)  # type: ignore[union-attr]
                self._cv.notify_all()
            for t, f in frames.items():
                if t.error is None and not t.cancelled:
                    self._guard([t], functools.partial(self._decode, t, f))
            with self._cv:
                for t, f in frames.items():
                    if t.error is None and t.gen is not None and t.gen.done:
                        t.tokens = f
                self._leave_finished()
                self._cv.notify_all()

    def _join(self, t: Ticket) -> None:
        """Prepare a request that got its rows, in the loop's thread: its text states, its audio encoded and its
        first window are computed with the loop's threads, as `MusicGen.generate` computes them alone (a
        matrix product's last bits depend on the thread count), then its first window is set up."""
        start = t.start
        assert start is not None
        t.gen, t.seed = prepare(self.mg, t.prompts, t.options)
        assert t.gen.rows == t.rows, (t.gen.rows, t.rows)
        t.gen.begin(lambda rows, slots: self.cache.view(start, rows, slots))
        if t.decode and self.mg.device.type == "cpu":
            t.decoding = self.mg.chunked_decode(t.gen.batch, t.gen.length)

    def _decode(self, t: Ticket, frames: torch.Tensor) -> None:
        """EnCodec decoding as the frames complete, here on the loop's threads (as many as `MusicGen.generate`
        decodes with alone: the samples do not depend on the batch); a piece too short to go in chunks at the end.
        A codec that cannot stream leaves the whole decode to the requester's thread (it would hold up the loop)."""
        if not t.decode or self.mg.device.type != "cpu" or t.gen is None:  # (a GPU decodes at the end in no time)
            return
        if t.decoding is not None:
            t.decoding.push(frames)
        if t.gen.done and (t.decoding is not None or self.mg.can_stream):  # (else a long piece: the requester's)
            t.decoded = self.mg.decode(frames) if t.decoding is None else t.decoding.audio

    def _admit(self) -> list[Ticket]:
        """Move requests from the head of the line into the batch while their rows fit (FIFO: no overtaking)."""
        joining = []
        while self.waiting:
            t = self.waiting[0]
            start = self.cache.take(t.rows)
            if start is None:
                break
            t.start, t.ahead = start, 0
            self.waiting.pop(0)
            self.active.append(t)
            joining.append(t)
        self._renumber()
        return joining

    def _guard(self, tickets: list[Ticket], work: Any) -> None:
        """Run `work`; if it fails, the requests it was for fail with its error (the loop goes on)."""
        try:
            work()
        except BaseException as e:  # handed to each requester's thread
            with self._cv:
                for t in tickets:
                    t.error = e
                self._cv.notify_all()

    def _leave_cancelled(self) -> None:
        for t in [t for t in self.active if t.cancelled]:
            self._leave(t)

    def _leave_finished(self) -> None:
        for t in [t for t in self.active if t.cancelled or t.error is not None or t.tokens is not None]:
            self._leave(t)

    def _leave(self, t: Ticket) -> None:
        self.active.remove(t)
        assert t.start is not None
        self.cache.give(t.start, t.rows)
        t.start = -1  # left: not waiting any more either


def request_rows(prompts: Prompts, o: GenerationOptions) -> int:
    """Decode-step rows one request takes: its prompts (a timeline is one), twice under guidance."""
    return decode_rows(len(timeline.pieces(prompts, o.duration)), o.cfg_coef)


def generate_takes(mg: MusicGen, prompts: Prompts, takes: int, duration: float | None = None, *,
                   options: GenerationOptions | None = None, progress: Callable[[int, int, int], None] | None = None,
                   **changes: Any) -> list[GenerationOutput]:
    """`takes` variations of one request (1 to options.MAX_TAKES), made together through a scheduler of their own
    so they share decode steps, with seeds seed, seed + 1, ... (a random first one when seed is None): take k is
    exactly `Scheduler.generate` with its seed alone. `progress(take, step, total)` from the takes' threads."""
    o = make_options(options, **({} if duration is None else {"duration": duration}), **changes)
    seeds = take_seeds(seed_of(o), takes)
    sched = Scheduler(mg, max_rows=request_rows(prompts, o) * takes)
    try:
        with ThreadPoolExecutor(takes) as pool:
            futures = [pool.submit(sched.generate, prompts, options=make_options(o, seed=s),
                                   progress=None if progress is None else functools.partial(progress, k))
                       for k, s in enumerate(seeds)]
            return [f.result() for f in futures]
    finally:
        sched.close()


def _news(t: Ticket, seen: StreamStep | None, ahead: int | None) -> bool:
    """Has `t` something its reader has not seen (an error, done tokens, a new step, a new place in line)?"""
    return (t.error is not None or t.cancelled or t.tokens is not None or t.latest is not seen
            or (t.start is None and t.ahead != ahead))


def own_intra_op_threads(n: int) -> None:
    """Give the calling thread `n` intra-op threads, and every thread that starts using torch after it one.

    torch's CPU ops run on OpenMP (libgomp). Each OS thread that runs a parallel op gets a pool of its own,
    and once a process holds more pool threads than CPUs, libgomp stops spinning between parallel regions
    and puts its threads to sleep after each one: on 2 cores a decode step in a second thread then took
    1.6-1.7x as long as in the main thread (a small GELU: 60 vs 15 us). So one thread, the decode loop,
    keeps the cores; the others (the web server's, the requests') run their ops inline.
    `torch.set_num_threads` sets the calling thread's OpenMP and MKL counts and the default of threads to come:
    it is called here with `n`, then with 1 from a short-lived thread, which leaves this thread's counts as
    they are (the MKL count matters too: T5's products differ in their last bits between 1 and 2 threads).
    Our C++ kernels split work without at::parallel_for's lazy per-thread set-up, which would otherwise apply
    that default of 1 to this thread at its first kernel call (csrc/parallel.h)."""
    torch.get_num_threads()  # torch's lazy per-thread setup first, or its first parallel op would undo ours
    torch.set_num_threads(n)
    default = threading.Thread(target=torch.set_num_threads, args=(1,), name="musicgen-threads")
    default.start()
    default.join()


def window_slots(mg: MusicGen) -> int:
    """Cache slots the longest window needs: [melody prefix | text] + one window + the delay pattern."""
    prefix = 0 if mg.cfg.melody is None else mg.cfg.melody.chroma_length + mg.tokenizer.max_tokens
    return prefix + round(WINDOW * mg.frame_rate) + max(mg.cfg.lm.delays)


def default_max_rows(mg: MusicGen, slots: int) -> int:
    """Rows whose KV cache fits in MEMORY_SHARE of the memory available now, at most MAX_ROWS (even)."""
    cfg = mg.cfg.lm
    per_row = 2 * cfg.num_layers * cfg.num_heads * slots * cfg.head_dim * mg.lm.cache_dtype.itemsize
    available = torch.cuda.mem_get_info(mg.device)[0] if mg.device.type == "cuda" else available_memory()
    rows = int(MEMORY_SHARE * available // per_row) // 2 * 2
    return max(2, min(MAX_ROWS, rows))


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes); 8 GB where there is no such file."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30
