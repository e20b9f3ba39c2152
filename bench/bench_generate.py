"""Benchmark: our engine vs transformers' MusicgenForConditionalGeneration, same weights, same machine.

    .venv/bin/python bench/bench_generate.py                      # real-size random musicgen-small
    .venv/bin/python bench/bench_generate.py --model facebook/musicgen-small --duration 10

Without --model it builds a musicgen-small with transformers' real config and random weights, in the
Hub's file layout, once (cached under --cache). Both engines run in this process, alternately, with CFG
and top-k sampling; steps/s are timed over the decode loop only (from the first to the last step, by a
per-step callback in each engine), T5 and EnCodec are timed separately. Peak RSS while loading is
measured in a fresh subprocess. Needs requirements-dev.txt (transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = "lofi hip hop beat with mellow piano and soft drums"


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; unlike ru_maxrss it is not inherited from a forking parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ensure_checkpoint(model: str | None, cache: Path) -> str:
    if model:
        return model
    folder = cache / "musicgen-small-random"
    if not (folder / "config.json").is_file():
        from checkpoints import build_real_size

        print(f"building a real-size random musicgen-small in {folder} (once) ...", file=sys.stderr)
        build_real_size(folder, layout="hub")
    return str(folder)


def load_rss(model: str) -> dict:
    """Peak RSS of a fresh process that loads our engine (minus the process after imports)."""
    code = (
        "import json, sys, torch\n"
        "sys.path.insert(0, 'bench')\n"
        "from bench_generate import peak_rss_mb\n"
        "from musicgen import MusicGen\n"
        "base = peak_rss_mb()\n"
        "mg = MusicGen.from_pretrained(sys.argv[1], device='cpu')\n"
        "peak = peak_rss_mb()\n"
        "size = sum(p.numel() * p.element_size() for m in (mg.t5, mg.lm, mg.codec) for p in m.parameters())\n"
        "print(json.dumps({'base_mb': base, 'peak_mb': peak, 'weights_mb': size / 2**20}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def lm_linear_bytes(module: torch.nn.Module) -> int:
    """Bytes of every Linear weight: what one decode step must read (embeddings are row lookups)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in module.modules() if isinstance(m, torch.nn.Linear))


class StepClock:
    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self, *_: object) -> None:
        self.times.append(time.perf_counter())

    def steps_per_s(self) -> float:
        t = self.times
        return (len(t) - 1) / (t[-1] - t[0])


def run_ours(mg, frames: int, seed: int) -> dict:
    clock = StepClock()
    t0 = time.perf_counter()
    text, mask = mg.encode_text([PROMPT])
    t_text = time.perf_counter() - t0
    from musicgen.generate import generate_tokens
    from musicgen.sampling import SamplingParams

    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    tokens = generate_tokens(mg.lm, text, mask, frames, SamplingParams(), gen, clock.tick)
    t_lm = time.perf_counter() - t0
    t0 = time.perf_counter()
    mg.decode(tokens)
    t_dec = time.perf_counter() - t0
    return {"steps_per_s": clock.steps_per_s(), "lm_s": t_lm, "t5_s": t_text, "decode_s": t_dec}


def run_transformers(model, processor_ids, frames: int, seed: int) -> dict:
    from transformers import LogitsProcessor, LogitsProcessorList

    clock = StepClock()

    class Tick(LogitsProcessor):
        def __call__(self, input_ids, scores):
            clock.tick()
            return scores

    ids, mask = processor_ids
    torch.manual_seed(seed)
    with torch.no_grad():
        t0 = time.perf_counter()
        model.text_encoder(input_ids=ids, attention_mask=mask)
        t_text = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=250, guidance_scale=3.0,
                             max_new_tokens=frames + 3, logits_processor=LogitsProcessorList([Tick()]),
                             return_dict_in_generate=True)
        t_all = time.perf_counter() - t0
        codes = torch.randint(0, 2048, (1, 1, 4, frames))
        t0 = time.perf_counter()
        model.audio_encoder.decode(codes, [None])
        t_dec = time.perf_counter() - t0
    assert out.sequences.shape[-1] == frames * 640
    return {"steps_per_s": clock.steps_per_s(), "lm_s": t_all - t_text - t_dec, "t5_s": t_text, "decode_s": t_dec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Hub id or folder [a real-size random musicgen-small]")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of audio per run [5]")
    ap.add_argument("--runs", type=int, default=2, help="alternating runs per engine [2]")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads [2]")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "musicgen-bench")
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = ensure_checkpoint(args.model, args.cache)
    frames = round(args.duration * 50)

    rss = load_rss(model)
    print(f"load (ours, fresh process): peak RSS {rss['peak_mb']:.0f} MB, after imports {rss['base_mb']:.0f} MB, "
          f"weights {rss['weights_mb']:.0f} MB -> load overhead {rss['peak_mb'] - rss['base_mb']:.0f} MB "
          f"= {(rss['peak_mb'] - rss['base_mb']) / rss['weights_mb']:.2f}x the weights")

    from musicgen import MusicGen

    mg = MusicGen.from_pretrained(model, device="cpu")
    step_bytes = lm_linear_bytes(mg.lm)
    hf = ids = None
    if not args.skip_transformers:
        from transformers import MusicgenForConditionalGeneration

        hf = MusicgenForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()
        ids_, mask = mg.tokenizer([PROMPT])
        ids = (ids_, mask.long())
    results: dict[str, list[dict]] = {"ours": [], "transformers": []}
    for r in range(args.runs):
        results["ours"].append(run_ours(mg, frames, seed=r))
        if hf is not None:
            results["transformers"].append(run_transformers(hf, ids, frames, seed=r))

    audio_s = frames / 50
    print(f"\n{args.duration:g} s of audio = {frames} frames, {frames + 3} decode steps, CFG 3, top-k 250, "
          f"{args.threads} threads, float32")
    print(f"{'engine':<13}{'steps/s':>9}{'RTF':>7}{'GB/s':>7}{'T5 s':>7}{'EnCodec s':>10}{'total s':>9}")
    best = {}
    for name, runs in results.items():
        if not runs:
            continue
        b = max(runs, key=lambda x: x["steps_per_s"])
        best[name] = b
        total = b["t5_s"] + b["lm_s"] + b["decode_s"]
        print(f"{name:<13}{b['steps_per_s']:>9.2f}{total / audio_s:>7.2f}{b['steps_per_s'] * step_bytes / 1e9:>7.1f}"
              f"{b['t5_s']:>7.2f}{b['decode_s']:>10.2f}{total:>9.1f}")
    if len(best) == 2:
        print(f"ratio ours / transformers: {best['ours']['steps_per_s'] / best['transformers']['steps_per_s']:.2f}x "
              "decode steps/s")
    print(f"peak RSS of this process (both engines loaded): {peak_rss_mb():.0f} MB; all runs: "
          + json.dumps({k: [round(x["steps_per_s"], 2) for x in v] for k, v in results.items()}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
