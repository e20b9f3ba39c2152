"""Benchmark: many requests at once through the continuous-batching scheduler vs one at a time.

    .venv/bin/python bench/bench_serving.py                      # real-size random musicgen-small, int8, 10 s each
    .venv/bin/python bench/bench_serving.py --counts 1,2 --duration 4 --quantize none

For N concurrent requests of --duration seconds (different prompts and seeds) arriving together ("burst") or
one every --gap seconds ("staggered"), through `serve.Scheduler` with room for all of them, and through the
same scheduler with room for one (one at a time, first come first served; the same code otherwise):
aggregate throughput (seconds of audio per wall-clock second, from the first arrival to the last result),
p50 / p95 latency (arrival -> decoded audio) and time to first audio (arrival -> the first second of the piece
generated, what a streaming player needs to start). Every request's tokens are compared with its solo run
(the N = 1 batch of that request): batch invariance, bit for bit.

--kernel per-tensor replaces the row-wise int8 linear by fbgemm's plain per-tensor dynamic quantization (what
we ran before batch invariance) to measure what invariance costs. Without --model it builds a musicgen-small
with transformers' real config and random weights once (as bench_generate.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_generate import ensure_checkpoint  # noqa: E402

PROMPTS = ["lofi hip hop beat with mellow piano", "epic orchestral trailer with brass", "acoustic folk ballad",
           "80s synthwave with gated drums", "funk groove with slap bass", "ambient drone with bells",
           "drum and bass with reese bass", "bossa nova guitar and soft percussion"]


@dataclass
class Timing:
    arrival: float
    first_audio: float = 0.0
    done: float = 0.0
    tokens: torch.Tensor = field(default_factory=lambda: torch.empty(0))


def run(sched, n: int, duration: float, gap: float) -> list[Timing]:
    """n requests, one every `gap` seconds, each from its own thread; -> their timings."""
    from musicgen.pipeline import GenerationOutput, StreamStep

    timings: list[Timing | None] = [None] * n
    start = time.perf_counter()

    def client(i: int) -> None:
        time.sleep(max(0.0, start + i * gap - time.perf_counter()))
        t = Timing(time.perf_counter())
        for event in sched.stream(PROMPTS[i % len(PROMPTS)], duration, seed=1000 + i):
            if isinstance(event, StreamStep) and not t.first_audio and event.tokens.shape[-1] >= 50:
                t.first_audio = time.perf_counter()
            elif isinstance(event, GenerationOutput):
                t.done, t.tokens = time.perf_counter(), event.tokens
        timings[i] = t

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return timings  # type: ignore[return-value]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def report(label: str, timings: list[Timing], duration: float, solo: dict[int, torch.Tensor]) -> str:
    first = min(t.arrival for t in timings)
    wall = max(t.done for t in timings) - first
    lat = [t.done - t.arrival for t in timings]
    ttfa = [t.first_audio - t.arrival for t in timings]
    same = sum(torch.equal(t.tokens, solo[i]) for i, t in enumerate(timings) if i in solo)
    checked = sum(1 for i in range(len(timings)) if i in solo)
    return (f"| {label} | {len(timings) * duration / wall:.2f} | {statistics.median(lat):.1f} | {pct(lat, 0.95):.1f} "
            f"| {statistics.median(ttfa):.1f} | {pct(ttfa, 0.95):.1f} | {same}/{checked} |")


def per_tensor_kernel() -> None:
    """fbgemm's own per-tensor activation quantization: faster, but a row's result depends on the batch."""
    from musicgen.layout import DynamicInt8Linear

    DynamicInt8Linear.forward = lambda self, x: torch.ops.quantized.linear_dynamic(  # type: ignore[method-assign]
        x, self.packed, self.reduce_range)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Hub id or folder [a real-size random musicgen-small]")
    ap.add_argument("--counts", default="1,2,4,8", help="concurrent requests per run [1,2,4,8]")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of audio per request [10]")
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between staggered arrivals [2]")
    ap.add_argument("--sequential-staggered", action="store_true",
                    help="also run the staggered arrivals one at a time (the burst always is)")
    ap.add_argument("--quantize", default="int8", help="int8, int8-weight-only or none [int8]")
    ap.add_argument("--kernel", default="row-wise", choices=["row-wise", "per-tensor"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "musicgen-bench")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the schedulers' loops get args.threads; nothing else may hold an OpenMP pool
    if args.kernel == "per-tensor":
        per_tensor_kernel()
    from musicgen import MusicGen
    from musicgen.serve import Scheduler

    mg = MusicGen.from_pretrained(ensure_checkpoint(args.model, args.cache), device="cpu",
                                  quantize=None if args.quantize == "none" else args.quantize)
    counts = [int(c) for c in args.counts.split(",")]
    lines = [f"{args.duration:g} s requests, {args.quantize} ({args.kernel}), {args.threads} threads", "",
             "| run | audio s / s | p50 latency s | p95 latency s | p50 first audio s | p95 first audio s | "
             "tokens = solo |", "|---|---|---|---|---|---|---|"]
    one = Scheduler(mg, max_rows=2, threads=args.threads)  # one at a time: the baseline, and each request's solo run
    one.generate("warm up", 0.5, seed=0)
    alone = run(one, max(counts), args.duration, 0.0)
    solo = {i: t.tokens for i, t in enumerate(alone)}
    lines.append(report(f"N={max(counts)} burst, one at a time", alone, args.duration, solo))
    print(lines[-1], file=sys.stderr)
    if args.sequential_staggered:
        lines.append(report(f"N={max(counts)} staggered, one at a time", run(one, max(counts), args.duration,
                                                                             args.gap), args.duration, solo))
    one.close()
    batched = Scheduler(mg, max_rows=2 * max(counts), threads=args.threads)
    for n in counts:
        for pattern, gap in (("burst", 0.0), ("staggered", args.gap)):
            lines.append(report(f"N={n} {pattern}, batched", run(batched, n, args.duration, gap), args.duration, solo))
            print(lines[-1], file=sys.stderr)
    batched.close()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
