"""How long a multi-band diffusion (MBD) decode will take here, measured on this machine, so that a person can
be told before a long wait (the studio asks before one above `CONFIRM_ABOVE`).

An MBD decode is `total_steps` calls of the band networks over the whole clip (80 for the released decoder:
4 bands x 20 steps), and one call costs about `fixed + per_second * seconds` (timed on 2 cores, audiocraft's
band shape with random weights, 1 thread: 1.28 s at 0.5 s of audio, 1.94 at 1, 3.26 at 2, 6.10 at 4: affine
within 5 % from 1 s on). `DiffusionClock.estimate` times each distinct band network once at two lengths on
first use (in the caller's thread, so with its torch threads, as the decode will run), then corrects the
prediction by the ratio measured on the last real decode (other visitors' work, the takes' threads and the
re-EQ are in it).
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

import torch

from ..diffusion import DecodeTiming, MultiBandDiffusion

CONFIRM_ABOVE = 120.0  # seconds of expected diffusion after which the page asks first (issue 15: two minutes)
# seconds of audio each band network is timed on (after one warm-up call): far enough apart that timing noise
# barely moves the slope (0.5 and 1 s gave +19 % for 10 s in one run of bench/bench_mbd.py), short enough to
# cost a few seconds (real-size band, 2 cores: 0.8 + 1.9 s, plus the warm-up)
CALIBRATION = (0.5, 2.0)


@dataclass(frozen=True)
class CallCost:
    """Wall seconds of one band-network call over `seconds` of one item's audio: fixed + per_second x seconds."""

    fixed: float
    per_second: float

    def __call__(self, seconds: float) -> float:
        return self.fixed + self.per_second * seconds


@dataclass(frozen=True)
class Wait:
    """An expected decode: its total, the per-call time it comes from, the calls."""

    seconds: float  # wall seconds for the whole decode (every take)
    per_call: float  # seconds per band-network call over the clip (one item)
    calls: int  # band-network calls per item


def time_call(mbd: MultiBandDiffusion, band: int, samples: int, frames: int) -> float:
    """Seconds of one call of band `band`'s network on [1, C, samples] noise and a random condition."""
    unet = mbd.bands[band].unet  # type: ignore[union-attr]
    cfg, dev = unet.cfg, mbd.device
    x = torch.randn(1, cfg.channels, samples, device=dev)
    cond = torch.randn(1, cfg.codec_dim or 1, frames, device=dev) if cfg.codec_dim else None
    step = torch.full((1,), cfg.num_steps - 1, dtype=torch.long, device=dev)
    with torch.inference_mode():
        start = time.perf_counter()
        unet(x, step, cond)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start


def measure(mbd: MultiBandDiffusion, hop: int) -> list[CallCost]:
    """Each band's call cost, fitted from two timed lengths (bands with the same network shape share one
    measurement). `hop`: audio samples per codec frame."""
    shapes: dict[object, CallCost] = {}
    costs = []
    for i, band in enumerate(mbd.bands):
        key = band.unet.cfg  # type: ignore[union-attr]
        if key not in shapes:
            frames = [max(1, round(s * mbd.sample_rate / hop)) for s in CALIBRATION]
            time_call(mbd, i, frames[0] * hop, frames[0])  # warm-up (first-call allocations)
            (f0, t0), (f1, t1) = ((f, time_call(mbd, i, f * hop, f)) for f in frames)
            s0, s1 = f0 * hop / mbd.sample_rate, f1 * hop / mbd.sample_rate
            slope = max((t1 - t0) / (s1 - s0), 0.0) if s1 > s0 else t1 / s1
            shapes[key] = CallCost(max(t1 - slope * s1, 0.0), slope)
        costs.append(shapes[key])
    return costs


def parallel_threads() -> int:
    """CPUs this process may use: takes decode in threads of their own, at most this many at once."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class DiffusionClock:
    """Expected MBD decode times for one decoder instance: measured on first use, then corrected by the
    decodes it has run since (`MultiBandDiffusion.last_decode`). Thread-safe."""

    def __init__(self, mbd: MultiBandDiffusion, hop: int) -> None:
        self.mbd, self.hop = mbd, hop
        self._lock = threading.Lock()
        self._costs: list[CallCost] | None = None
        self._ratio = 1.0  # measured / predicted, on the last decode seen
        self._seen: DecodeTiming | None = None

    @property
    def measured(self) -> bool:
        return self._costs is not None

    def _work(self, seconds: float, items: int) -> float:
        """Predicted seconds of one decode of `items` clips of `seconds` in one thread (before correction)."""
        assert self._costs is not None
        steps = [len(b.schedule.coefficients()) for b in self.mbd.bands]  # type: ignore[union-attr]
        return items * sum(n * cost(seconds) for n, cost in zip(steps, self._costs, strict=True))

    def estimate(self, seconds: float, channels: int = 1, takes: int = 1) -> Wait:
        """The expected wall time of decoding `takes` takes of `seconds` (each `channels` items, decoded as one
        batch; the takes in parallel threads, as many at once as there are CPUs)."""
        with self._lock:
            if self._costs is None:
                self._costs = measure(self.mbd, self.hop)
            seen = self.mbd.last_decode
            if seen is not None and seen is not self._seen and seen.wall > 0:  # a real decode: follow it
                self._seen, self._ratio = seen, seen.wall / max(self._work(seen.seconds, seen.items), 1e-9)
            one = self._work(seconds, channels) * self._ratio
        calls = self.mbd.total_steps
        return Wait(one * math.ceil(takes / parallel_threads()), one / (calls * channels), calls)
