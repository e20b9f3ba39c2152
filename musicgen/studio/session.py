"""One generation for the web app, as a stream of events: progress, audio chunks to play while the model
is still generating, then the result.

The engine's `MusicGen.stream` runs in a worker thread that hands its steps over through a queue, so
progress keeps flowing while the engine is busy in one long call (the multi-band diffusion decoder reports
its steps through a callback), and decoding chunks for playback overlaps with generation. Chunks come
from a `StreamDecoder` over the growing token prefix, so they concatenate to the EnCodec decode of the
final tokens; with the diffusion decoder they are the EnCodec preview and the result carries both.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from .. import loudness
from ..options import Clip, GenerationOptions, options, take_seeds
from ..pipeline import GenerationOutput, MusicGen, StreamStep
from ..serve import Queued, Scheduler
from ..streaming import StreamDecoder
from .request import MAX_SEED, Request, fresh_seed


@dataclass(frozen=True)
class Progress:
    stage: str  # "queue" (waiting: `done` requests ahead), "frames" (token generation) or "diffusion" (its steps)
    done: int
    total: int


@dataclass(frozen=True)
class Chunk:
    audio: np.ndarray  # [C, s] float32: the samples after the previous chunk's
    start: int  # index of its first sample in the whole clip
    sample_rate: int


@dataclass(frozen=True)
class Result:
    audio: np.ndarray  # [C, S] float32 from the chosen decoder
    encodec: np.ndarray | None  # [C, S] the EnCodec version when the diffusion decoder made `audio`
    sample_rate: int
    seed: int
    elapsed: float  # seconds from the start of generation to the decoded audio

    @property
    def seconds(self) -> float:
        return self.audio.shape[-1] / self.sample_rate

    @property
    def rtf(self) -> float:
        """Real-time factor: generation time / audio length (below 1 is faster than real time)."""
        return self.elapsed / self.seconds if self.seconds else float("inf")


Event = Progress | Chunk | Result


def generation_options(req: Request, seed: int, melody: Clip | None, continuation: Clip | None = None,
                       ) -> GenerationOptions:
    """The engine's options for a web request (its uploads already read)."""
    return options(duration=req.duration, top_k=req.top_k, top_p=req.top_p, temperature=req.temperature,
                   cfg_coef=req.cfg_coef, seed=seed, melody=melody, continue_from=continuation, decoder=req.decoder,
                   separate_melody=req.separate_melody,
                   normalize="none")  # the session normalises the result itself (live chunks are decoded raw)


def ready_to_play(buffered: float, remaining: float, rate: float, margin: float) -> bool:
    """Can playback start now and run to the end without stalling, if generation keeps its `rate` (seconds
    of audio per second)? While the rest is generated (remaining / rate seconds), playback consumes
    buffered audio and what arrives: the buffer must cover the lag, remaining / rate - remaining, plus a
    `margin` for chunk intervals and the player's own latency."""
    if remaining <= 0:
        return True
    if rate <= 0:
        return False
    return buffered >= remaining / rate - remaining + margin


class _Stopped(Exception):
    """Raised inside the engine's progress callback to abandon a run nobody listens to any more."""


_END = object()


def _engine_items(engine: MusicGen | Scheduler, prompt: str, o: GenerationOptions, decode: bool,
                  cancel: threading.Event | None = None) -> Iterator[object]:
    """The engine's steps, produced in a worker thread: Queued (a scheduler's line), StreamStep, ("tick", step,
    total) from the progress callback, GenerationOutput. Closing this iterator, or setting `cancel`, stops the
    worker at its next step (and takes the request out of a scheduler's batch or line)."""
    items: queue.Queue = queue.Queue()
    stop = threading.Event()

    def stopped() -> bool:
        return stop.is_set() or (cancel is not None and cancel.is_set())

    def tick(step: int, total: int) -> None:
        if stopped():
            raise _Stopped
        items.put(("tick", step, total))

    progress = tick if o.decoder != "encodec" else None  # the diffusion decoder's steps after the tokens
    extra = {"stopped": stopped} if isinstance(engine, Scheduler) else {}  # leaves its line without news too

    def work() -> None:
        steps = None
        try:
            steps = engine.stream(prompt, options=o, progress=progress, decode=decode, **extra)
            for item in steps:
                items.put(item)
                if stopped():
                    break
        except _Stopped:
            pass
        except BaseException as e:  # handed to the consumer, which raises it in its own thread
            items.put(e)
        finally:
            if steps is not None:
                steps.close()
            items.put(_END)  # always: the consumer waits for it

    threading.Thread(target=work, name="musicgen-session", daemon=True).start()
    try:
        while (item := items.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, StreamStep):  # only the newest prefix matters: skip the ones already queued
                while isinstance(_peek(items), StreamStep):
                    item = items.get()
            yield item
    finally:
        stop.set()


def _peek(q: queue.Queue) -> object:
    with q.mutex:
        return q.queue[0] if q.queue else None


class _Preview:
    """The live preview of one run: the token prefix decoded exactly (StreamDecoder) every `chunk_seconds` of wall
    time (every 0.25 s until playback starts), chunks held back until playback started then would not stall at
    the measured generation speed, then sent in pieces of at most `max_piece` seconds."""

    def __init__(self, mg: MusicGen, frames: int, chunk_seconds: float, max_piece: float,
                 clock: Callable[[], float], start: float) -> None:
        self.dec = StreamDecoder(mg.codec, mg.audio_channels, frames)
        self.sr, self.frame_rate, self.frames = mg.sample_rate, mg.frame_rate, frames
        self.chunk_seconds, self.max_piece, self.clock = chunk_seconds, max_piece, clock
        self.pending: list[np.ndarray] = []  # decoded, not sent yet
        self.decoded: list[np.ndarray] = []  # every sample decoded, sent or not
        self.sent = 0  # samples already sent in chunks
        self.playing = False
        self.last = start  # the run's start: the first decode waits a chunk interval from there
        self.first: tuple[float, int] | None = None  # (time, frames) at the first decode step: the speed reference

    def push(self, tokens: torch.Tensor) -> Iterator[Chunk]:
        """A decode step's complete frames [1, K, n] -> the chunks to send now (often none)."""
        n, now = tokens.shape[-1], self.clock()
        self.first = self.first or (now, n)
        interval = self.chunk_seconds if self.playing else min(self.chunk_seconds, 0.25)  # often until it plays
        if n <= self.dec.seen or (n < self.frames and now - self.last < interval):
            return
        self.last = now
        audio = self.dec.push(tokens)[0].numpy()
        if audio.shape[-1]:
            self.pending.append(audio)
            self.decoded.append(audio)
        if not self.playing:
            rate = (n - self.first[1]) / self.frame_rate / max(now - self.first[0], 1e-6)
            buffered = (self.dec.emitted - self.sent) / self.sr
            self.playing = ready_to_play(buffered, (self.frames - n) / self.frame_rate, rate, self.chunk_seconds)
        if self.playing and self.pending:
            whole = np.concatenate(self.pending, axis=-1)
            self.pending = []
            step = max(1, int(self.max_piece * self.sr))
            for i in range(0, whole.shape[-1], step):
                yield Chunk(whole[:, i : i + step], self.sent, self.sr)
                self.sent += whole[:, i : i + step].shape[-1]

    def audio(self) -> np.ndarray | None:
        """The whole EnCodec decode [C, S] once every frame went through the preview, else None."""
        return np.concatenate(self.decoded, axis=-1) if self.dec.done else None


def run(mg: MusicGen, req: Request, melody: Clip | None = None, *, continuation: Clip | None = None,
        stream: bool = True, engine: MusicGen | Scheduler | None = None, cancel: threading.Event | None = None,
        chunk_seconds: float = 1.5, max_piece: float = 2.0, clock: Callable[[], float] = time.perf_counter,
        ) -> Iterator[Event]:
    """Generate `req` with `mg`: `Progress` as decode (and diffusion) steps complete, `Chunk`s of new
    audio (when `stream`), the `Result` last; with a scheduler as `engine`, `Progress("queue", ahead, 0)` while
    the request waits for room in its batch. Closing the iterator (or setting `cancel`, from any thread)
    stops the engine; a cancelled run ends without a result. With
    `continuation` the piece starts with that audio (re-encoded) and the chunks play it first.

    The token prefix is decoded every `chunk_seconds` of wall time (every 0.25 s until playback starts).
    Chunks are held back until playback started then would not stall at the measured generation speed (at
    once on a fast GPU, around half-way through on a slow CPU), then sent in pieces of at most `max_piece`
    seconds (small segments keep a streaming player's playlist polling fast)."""
    seed = req.seed if req.seed is not None else fresh_seed()
    frames = round(req.duration * mg.frame_rate)
    start = clock()
    live = _Preview(mg, frames, chunk_seconds, max_piece, clock, start) if stream and mg.can_stream else None
    lm_steps = 0  # decode steps, where the engine's progress ticks for the diffusion decoder start
    out: GenerationOutput | None = None
    o = generation_options(req, seed, melody, continuation)
    # with a live preview every sample is decoded on the way: no second EnCodec pass at the end
    for item in _engine_items(engine or mg, req.prompt, o, decode=live is None, cancel=cancel):
        if isinstance(item, Queued):
            start = clock()  # the generation's time counts from when it leaves the line
            yield Progress("queue", item.ahead, 0)
        elif isinstance(item, tuple):  # ("tick", step, total): the diffusion decoder's steps after the tokens
            yield Progress("diffusion", item[1] - lm_steps, item[2] - lm_steps)
        elif isinstance(item, GenerationOutput):
            out = item
        elif isinstance(item, StreamStep):
            lm_steps = item.step
            yield Progress("frames", item.tokens.shape[-1], frames)
            if live is not None:
                yield from live.push(item.tokens)
    if out is None:
        if cancel is not None and cancel.is_set():
            return
        raise RuntimeError("the engine stopped without returning the generated audio")
    yield _result(mg, req, out, live, clock() - start)


def _result(mg: MusicGen, req: Request, out: GenerationOutput, live: _Preview | None, elapsed: float) -> Result:
    """The finished run's `Result`, levelled now that the piece is whole (its loudness can be measured); the
    EnCodec version from the engine, else from the live preview, else decoded here."""

    def encodec_audio(kept: torch.Tensor | None) -> np.ndarray:
        if kept is not None:
            return kept[0].numpy()
        whole = live.audio() if live is not None else None
        return whole if whole is not None else mg.decode(out.tokens)[0].numpy()

    def level(audio: np.ndarray) -> np.ndarray:
        return loudness.normalize(audio, out.sample_rate, req.loudness)

    if req.decoder == "encodec":
        return Result(level(encodec_audio(out.audio)), None, out.sample_rate, out.seed, elapsed)
    return Result(level(out.audio[0].numpy()), level(encodec_audio(out.audio_encodec)), out.sample_rate, out.seed,
                  elapsed)


@dataclass(frozen=True)
class Take:
    """An event of take `index` (0-based) of a request with several takes."""

    index: int
    event: Event


def take_requests(req: Request) -> list[Request]:
    """One request per take: the same settings with seeds seed, seed + 1, ... (a fresh first one if None)."""
    first = req.seed if req.seed is not None else fresh_seed()
    return [replace(req, seed=s, takes=1) for s in take_seeds(first, req.takes, MAX_SEED + 1)]


def run_takes(mg: MusicGen, req: Request, melody: Clip | None = None, *, continuation: Clip | None = None,
              stream: bool = True, engine: MusicGen | Scheduler | None = None) -> Iterator[Take]:
    """`run` for each of `req.takes` takes (consecutive seeds), as `Take` events; chunks (when `stream`) only of
    the first. With a scheduler the takes run at once, sharing decode steps (each exactly as it would alone);
    with the model itself, one after another. Closing the iterator stops every take."""
    reqs = take_requests(req)
    if len(reqs) == 1 or not isinstance(engine, Scheduler):
        for k, r in enumerate(reqs):
            for event in run(mg, r, melody, continuation=continuation, stream=stream and k == 0, engine=engine):
                yield Take(k, event)
        return
    merged: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def work(k: int, r: Request) -> None:
        try:
            for event in run(mg, r, melody, continuation=continuation, stream=stream and k == 0, engine=engine,
                             cancel=cancel):
                merged.put(Take(k, event))
        except BaseException as e:  # handed to the consumer, which raises it in its own thread
            merged.put(e)
        finally:
            merged.put(_END)

    for k, r in enumerate(reqs):
        threading.Thread(target=work, args=(k, r), name=f"musicgen-take-{k + 1}", daemon=True).start()
    try:
        running = len(reqs)
        while running:
            item = merged.get()
            if item is _END:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        cancel.set()
