"""The CUDA check, for a machine with a GPU (the Space's hardware): one prepared run, nothing installed.

    python bench/gpu_check.py --out $OUT                  # on the GPU machine (≈5-8 min on an H100)
    python bench/gpu_check.py --device cpu --quick        # a dry run of the script itself here, on the CPU

It needs torch (CUDA), transformers, safetensors, tokenizers, einops and huggingface_hub, which that machine has;
soundfile and julius travel with the working tree as wheels (pip install --no-index --no-deps them first). With a
real-size random musicgen-small (transformers' real config, random weights, built here in a minute):

1. float16 CUDA tokens against transformers' float16 CUDA generate under greedy decoding (and float32: exact);
2. decode steps/s for one request, eager and `compile=True` (CUDA graphs), and for 8 requests through the
   scheduler (aggregate steps/s and each request's wall time);
3. 10 s of audio end to end (text encoder, tokens, EnCodec, loudness), wall time and real-time factor;
4. a multi-band diffusion decode of 10 s on CUDA, with bench_mbd's likely band network (random weights).

Every number goes to stdout and to OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
PROMPT = "lofi hip hop beat with mellow piano and soft drums"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def greedy_parity(folder: Path, device: torch.device, dtype: torch.dtype, frames: int) -> dict:
    """Our tokens vs transformers' generate (greedy, CFG 3) with the same weights, device and dtype."""
    from conftest import transformers_tokens
    from transformers import MusicgenForConditionalGeneration

    from musicgen import MusicGen

    mg = MusicGen.from_pretrained(folder, device=device, dtype=dtype)
    ours = mg.generate([PROMPT], frames / 50, temperature=0, normalize="none").tokens
    ref = MusicgenForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()
    ids, mask = mg.tokenizer([PROMPT])
    with torch.no_grad():
        theirs = transformers_tokens(ref, ids.to(device), mask.to(device), frames).cpu()
    same = (ours == theirs).all(dim=1)[0]
    first = int((~same).nonzero()[0]) if (~same).any() else frames
    del ref, mg
    return {"dtype": str(dtype), "token_agreement": (ours == theirs).float().mean().item(),
            "identical_frames_before_first_difference": first, "frames": frames}


def steps_per_s(mg, frames: int, runs: int = 2) -> float:
    from musicgen.pipeline import StreamStep

    best = 0.0
    for r in range(runs):
        times = []
        for event in mg.stream([PROMPT], frames / 50, seed=r, decode=False):
            if isinstance(event, StreamStep):
                sync(mg.device)
                times.append(time.perf_counter())
        best = max(best, (len(times) - 1) / (times[-1] - times[0]))
    return best


def serving(mg, n: int, frames: int) -> dict:
    """n requests at once through the scheduler: aggregate decode steps/s and per-request wall times."""
    from musicgen.serve import Scheduler

    sched = Scheduler(mg, max_rows=2 * n)
    walls: list[float] = [0.0] * n

    def one(i: int) -> None:
        t0 = time.perf_counter()
        sched.generate([f"{PROMPT} {i}"], frames / 50, seed=i, decode=False)
        walls[i] = time.perf_counter() - t0

    try:
        one(0)  # warm-up
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        sched.close()
    return {"requests": n, "aggregate_steps_per_s": n * (frames + 3) / wall, "wall_s": wall,
            "p50_s": statistics.median(walls), "max_s": max(walls)}


def end_to_end(mg, seconds: float) -> dict:
    wall, out = timed(lambda: mg.generate([PROMPT], seconds, seed=1), mg.device)
    return {"seconds_of_audio": seconds, "wall_s": wall, "rtf": wall / seconds, "samples": out.audio.shape[-1]}


def mbd(mg, seconds: float) -> dict:
    from bench_mbd import LIKELY_UNET, random_mbd

    diffusion = random_mbd(LIKELY_UNET).to(mg.device)
    mg.mbd = diffusion
    tokens = torch.randint(0, 2048, (1, 4, round(seconds * 50)))
    wall, _ = timed(lambda: mg.decode(tokens, "mbd", seed=0), mg.device)
    return {"seconds_of_audio": seconds, "wall_s": wall, "rtf": wall / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--quick", action="store_true", help="tiny lengths (a dry run of the script)")
    args = ap.parse_args()
    device = torch.device(args.device)
    from helpers.checkpoints import build_real_size

    from musicgen import MusicGen

    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__}
    short, long = (10, 50) if args.quick else (100, 500)  # frames
    with tempfile.TemporaryDirectory() as tmp:
        t, folder = timed(lambda: build_real_size(Path(tmp) / "small", layout="hub"), torch.device("cpu"))
        print(f"built a real-size random musicgen-small in {t:.0f} s", flush=True)
        dtypes = [torch.float32] if device.type == "cpu" else [torch.float16, torch.float32]
        results["parity"] = [greedy_parity(folder, device, d, short) for d in dtypes]
        print(json.dumps(results["parity"]), flush=True)
        half = torch.float16 if device.type == "cuda" else torch.float32
        mg = MusicGen.from_pretrained(folder, device=device, dtype=half)
        results["steps_per_s_eager"] = steps_per_s(mg, long)
        results["serving"] = [serving(mg, n, long) for n in (1, 8)]
        results["end_to_end_10s"] = end_to_end(mg, long / 50)
        print(json.dumps({k: results[k] for k in ("steps_per_s_eager", "serving", "end_to_end_10s")}), flush=True)
        if not args.quick:
            results["mbd_10s"] = mbd(mg, long / 50)
            print(json.dumps(results["mbd_10s"]), flush=True)
        del mg
        compiled = MusicGen.from_pretrained(folder, device=device, dtype=half, compile=True)
        t, _ = timed(lambda: compiled.generate([PROMPT], short / 50, seed=0, decode=False), device)
        results["compile_first_generation_s"] = t
        results["steps_per_s_compiled"] = steps_per_s(compiled, long)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
