"""Benchmark: what the web app adds on top of the engine, through its `/generate` API.

    .venv/bin/python bench/bench_app.py                    # real-size random musicgen-small, int8, six 4 s requests

Serves the app in this process (as app.py's main does: the scheduler's loop owns the intra-op threads) with
the model loaded from a folder instead of the Hub, sends --requests requests of --duration seconds in a row
with gradio_client and times each from the call to the WAV on disk; then the same requests straight to the
engine (`Scheduler.generate`, decoded audio, no app). --batch-rows 0 runs the app without the scheduler (one
generation at a time in a session thread, as before continuous batching).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_generate import ensure_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="folder [a real-size random musicgen-small]")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--batch-rows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "musicgen-bench")
    args = ap.parse_args()
    folder = ensure_checkpoint(args.model, args.cache)
    if args.batch_rows:
        torch.set_num_threads(1)  # as app.main: the decode loop owns the threads
    else:
        torch.set_num_threads(args.threads)
    from gradio_client import Client

    from musicgen import MusicGen
    from musicgen.studio import backend, launch

    st = backend.Studio(device="cpu", batch_rows=args.batch_rows, threads=args.threads)
    st.cache._loader = lambda repo: MusicGen.from_pretrained(folder, device="cpu", quantize="int8")
    demo, url = launch.serve(st, prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False)
    client.predict(prompt="warm up", duration=1, seed=0, api_name="/generate")
    app_s = []
    for i in range(args.requests):
        t0 = time.perf_counter()
        client.predict(prompt=f"lofi hip hop beat {i}", duration=args.duration, seed=i, api_name="/generate")
        app_s.append(time.perf_counter() - t0)
    engine_s = []
    with st.cache.lease("facebook/musicgen-small") as (_, engine):
        for i in range(args.requests):
            t0 = time.perf_counter()
            engine.generate(f"lofi hip hop beat {i}", args.duration, seed=i)
            engine_s.append(time.perf_counter() - t0)
    demo.close()
    print(f"{args.requests} requests of {args.duration:g} s in a row, batch rows {args.batch_rows}, "
          f"{args.threads} threads")
    print(f"app /generate: {sum(app_s):.1f} s in all, {statistics.mean(app_s):.2f} s each "
          f"(min {min(app_s):.2f}, max {max(app_s):.2f})")
    print(f"engine alone:  {sum(engine_s):.1f} s in all, {statistics.mean(engine_s):.2f} s each")


if __name__ == "__main__":
    main()
