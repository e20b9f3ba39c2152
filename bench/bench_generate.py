"""Benchmark: our engine (float32 and int8) vs transformers' MusicgenForConditionalGeneration.

    .venv/bin/python bench/bench_generate.py                       # real-size random musicgen-small, 10 s
    .venv/bin/python bench/bench_generate.py --model facebook/musicgen-small --duration 5 --runs 3
    .venv/bin/python bench/bench_generate.py --engines fp32,int8 --ort /tmp/ort-small   # + ONNX Runtime, same run

Without --model it builds a musicgen-small with transformers' real config and random weights, in the
Hub's file layout, once (cached under --cache). The engines run in this process, alternately, on the same
weights and prompt, with CFG 3 and top-k 250 sampling. Steps/s are timed over the decode loop (first to
last step, by a per-step callback in each engine); T5 and EnCodec are timed separately. GB/s is the bytes of
linear-layer weights one decode step reads x steps/s. Peak RSS (VmHWM) is measured per engine in a fresh
process that loads the model and generates. The int8 quality numbers compare against float32: greedy
token agreement, and the mean KL(float32 || int8) of the guided next-token distributions along the float32
greedy sequence. Needs requirements-dev.txt (transformers).
"""

from __future__ import annotations

import argparse
import json
import os
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
    raise RuntimeError("no VmHWM in /proc/self/status")


def ensure_checkpoint(model: str | None, cache: Path) -> str:
    if model:
        return model
    folder = cache / "musicgen-small-random"
    if not (folder / "config.json").is_file():
        from helpers.checkpoints import build_real_size

        print(f"building a real-size random musicgen-small in {folder} (once) ...", file=sys.stderr)
        build_real_size(folder, layout="hub")
    return str(folder)


def weight_bytes(module: torch.nn.Module) -> int:
    """Parameters and buffers, plus weights packed into opaque kernel objects (fbgemm's int8)."""
    packed = sum(getattr(m, "nbytes", 0) for m in module.modules() if type(m).__name__ == "DynamicInt8Linear")
    return packed + sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def step_bytes(lm: torch.nn.Module) -> int:
    """Bytes of linear weights read per decode step (cross-attention K/V projections run once, not per step;
    embeddings are row lookups)."""
    total = 0
    for name, m in lm.named_modules():
        if name.endswith("cross_attn.kv") or name in ("text_proj", "chroma_proj"):
            continue
        if isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        elif type(m).__name__ in ("FloatLinear", "Int8Linear", "DynamicInt8Linear", "Int4Linear"):
            total += weight_bytes(m)
    return total


class StepClock:
    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self, *_: object) -> None:
        self.times.append(time.perf_counter())

    def steps_per_s(self) -> float:
        t = self.times
        return (len(t) - 1) / (t[-1] - t[0])


def run_ours(mg, frames: int, seed: int) -> dict:
    from musicgen.pipeline import StreamStep

    clock = StepClock()
    t0 = time.perf_counter()
    text, mask = mg.encode_text([PROMPT])
    t_text = time.perf_counter() - t0
    t0 = time.perf_counter()
    for event in mg.stream([PROMPT], frames / mg.frame_rate, seed=seed, decode=False):
        if isinstance(event, StreamStep):
            clock.tick()
    tokens = event.tokens
    t_lm = time.perf_counter() - t0 - t_text  # (stream encodes the text again)
    t0 = time.perf_counter()
    mg.decode(tokens)
    t_dec = time.perf_counter() - t0
    return {"steps_per_s": clock.steps_per_s(), "lm_s": t_lm, "t5_s": t_text, "decode_s": t_dec}


def run_transformers(model, ids: tuple[torch.Tensor, torch.Tensor], frames: int, seed: int) -> dict:
    from transformers import LogitsProcessor, LogitsProcessorList

    clock = StepClock()

    class Tick(LogitsProcessor):
        def __call__(self, input_ids, scores):
            clock.tick()
            return scores

    input_ids, mask = ids
    torch.manual_seed(seed)
    with torch.no_grad():
        t0 = time.perf_counter()
        model.text_encoder(input_ids=input_ids, attention_mask=mask)
        t_text = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, top_k=250, guidance_scale=3.0,
                             max_new_tokens=frames + 3, logits_processor=LogitsProcessorList([Tick()]))
        t_all = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.audio_encoder.decode(torch.randint(0, 2048, (1, 1, 4, frames)), [None])
        t_dec = time.perf_counter() - t0
    assert out.shape[-1] == frames * 640
    return {"steps_per_s": clock.steps_per_s(), "lm_s": t_all - t_text - t_dec, "t5_s": t_text, "decode_s": t_dec}


def run_ort(python: str, folder: str, frames: int, int8: bool, threads: int, seed: int) -> dict:
    """ONNX Runtime on optimum's export (bench/ort_engine.py, in its own environment: .venv-onnx)."""
    cmd = [python, str(ROOT / "bench" / "ort_engine.py"), "run", folder, "--frames", str(frames), "--threads",
           str(threads), "--seed", str(seed), "--prompt", PROMPT] + (["--int8"] if int8 else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


@torch.inference_mode()
def guided_logits(mg, seq: torch.Tensor, frames: int) -> torch.Tensor:
    """Teacher-force the delayed sequence `seq` [1, K, 1 + steps]: guided log-probs [steps, K, card]."""
    from musicgen.generate import decode_step
    from musicgen.lm import KVCache

    text, mask = mg.encode_text([PROMPT])
    cond = mg.lm.condition(text, mask, guided=True)
    steps = seq.shape[-1] - 1
    cache = KVCache.empty(mg.cfg.lm, 2, steps, mg.device, mg.lm.cache_dtype)
    out = []
    for s in range(steps):
        c, u = decode_step(mg.lm, seq[:, :, s].repeat(2, 1), torch.tensor(s), cache, cond).chunk(2)
        out.append((u + (c - u) * 3.0)[0].log_softmax(-1))
    return torch.stack(out)


def int8_quality(fp32, int8, frames: int) -> dict:
    """Greedy agreement and mean KL(fp32 || int8) along the float32 greedy sequence."""
    from musicgen.sampling import delay

    a = fp32.generate([PROMPT], frames / 50, temperature=0).tokens
    b = int8.generate([PROMPT], frames / 50, temperature=0).tokens
    same = (a == b).all(dim=1)[0]  # [frames]: every codebook equal
    first_diff = int((~same).nonzero()[0]) if (~same).any() else frames
    seq = delay(a, fp32.cfg.lm.delays, fp32.cfg.lm.card)
    lp, lq = guided_logits(fp32, seq, frames), guided_logits(int8, seq, frames)
    kl = (lp.exp() * (lp - lq)).sum(-1)  # [steps, K]
    top1 = (lp.argmax(-1) == lq.argmax(-1)).float().mean().item()
    return {"token_agreement": (a == b).float().mean().item(), "frames_identical_before_first_divergence": first_diff,
            "mean_kl": kl.mean().item(), "max_kl": kl.max().item(), "teacher_forced_top1_agreement": top1}


VARIANTS = ("-torch", "-fbgemm", "-unfused")  # engine suffixes: parts of the C++ kernels off (see --engines)


def variant_of(engine: str) -> tuple[str, str]:
    """"int8-weight-only-torch" -> ("int8-weight-only", "-torch"); no variant: (engine, "")."""
    suffix = next((v for v in VARIANTS if engine.endswith(v)), "")
    return engine.removesuffix(suffix) if suffix else engine, suffix


def rss_of(engine: str, model: str, frames: int) -> dict:
    """Load `engine` and generate in a fresh process: peak RSS and the size of what it keeps."""
    code = f"""
import json, sys, torch
sys.path[:0] = {[str(ROOT), str(ROOT / 'bench')]!r}
from bench_generate import peak_rss_mb, weight_bytes
torch.set_num_threads(2)
base = peak_rss_mb()
engine, model, frames = {engine!r}, {model!r}, {frames}
if engine == "transformers":
    from transformers import MusicgenForConditionalGeneration
    m = MusicgenForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()
    size = weight_bytes(m)
    loaded = peak_rss_mb()
    ids = torch.ones(1, 8, dtype=torch.long)
    with torch.no_grad():
        m.generate(input_ids=ids, do_sample=True, top_k=250, guidance_scale=3.0, max_new_tokens=frames + 3)
else:
    from musicgen import MusicGen
    mg = MusicGen.from_pretrained(model, device="cpu", quantize=None if engine == "fp32" else engine)
    size = sum(weight_bytes(x) for x in (mg.t5, mg.lm, mg.codec))
    loaded = peak_rss_mb()
    mg.generate(["x"], frames / 50, seed=0)
print(json.dumps({{"base": base, "loaded": loaded, "peak": peak_rss_mb(), "weights": size / 2**20}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="Hub id or folder [a real-size random musicgen-small]")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of audio per run [10]")
    ap.add_argument("--runs", type=int, default=2, help="alternating runs per engine [2]")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads [2]")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "musicgen-bench")
    ap.add_argument("--engines", default="fp32,int8,transformers",
                    help="comma list of fp32, int8, int8-weight-only, int4, transformers, and any of ours + '-torch' "
                    "(without the C++ decode kernels), int8-fbgemm (the C++ kernels with fbgemm's int8 GEMM instead of "
                    "ours, unfused), int8-unfused (our kernels called layer op by layer op from Python) "
                    "[fp32,int8,transformers]")
    ap.add_argument("--no-rss", action="store_true", help="skip the per-engine peak-RSS processes")
    ap.add_argument("--ort", default=None, help="an optimum ONNX export of the same weights (scripts/export_onnx.sh): "
                    "adds the engines ort (float32) and ort-int8 (its q8 decoders)")
    ap.add_argument("--ort-python", default=str(ROOT / ".venv-onnx" / "bin" / "python"),
                    help="the python of the ONNX environment [.venv-onnx]")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engines = args.engines.split(",") + (["ort", "ort-int8"] if args.ort else [])
    model = ensure_checkpoint(args.model, args.cache)
    frames = round(args.duration * 50)
    from musicgen import MusicGen

    loaded: dict[str, object] = {}
    for e in engines:
        if e.startswith("ort"):
            continue  # runs in its own process, each run
        if e == "transformers":
            from transformers import MusicgenForConditionalGeneration

            loaded[e] = MusicgenForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()
        else:
            quantize = variant_of(e)[0]
            loaded[e] = MusicGen.from_pretrained(model, device="cpu", quantize=None if quantize == "fp32" else quantize)
            lm = loaded[e].lm
            if e.endswith("-unfused"):  # the C++ kernels, each layer's ops called from Python (Layer.decode)
                lm.fused = False
            if e.endswith("-fbgemm"):  # the C++ kernels, but fbgemm's int8 GEMM instead of our AVX512-VNNI one
                for m in lm.modules():
                    if getattr(m, "vnni", None) is not None:
                        m.packed  # noqa: B018 (made from ours, before ours is dropped)
                        m.vnni = None
            if e.endswith("-torch"):  # without the C++ decode kernels (native.py): torch ops, as before them
                lm.kv_dtype = None  # (a float32 KV cache)
                for m in lm.modules():
                    if hasattr(m, "native"):
                        m.native = False
    tok_source = next((m for m in loaded.values() if isinstance(m, MusicGen)), None)
    if tok_source is None:
        tok_source = MusicGen.from_pretrained(model, device="cpu")
    ids, mask = tok_source.tokenizer([PROMPT])
    results: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.runs):
        for e in engines:
            if e.startswith("ort"):
                res = run_ort(args.ort_python, args.ort, frames, e == "ort-int8", args.threads, r)
            elif e == "transformers":
                res = run_transformers(loaded[e], (ids, mask.long()), frames, r)
            else:
                res = run_ours(loaded[e], frames, r)
            results[e].append(res)
            print(f"run {r} {e}: {res['steps_per_s']:.2f} steps/s", file=sys.stderr)

    audio_s = frames / 50
    print(f"\n{args.duration:g} s of audio = {frames} frames, {frames + 3} decode steps, CFG 3, top-k 250, "
          f"{args.threads} threads; best of {args.runs} alternating runs")
    print(f"{'engine':<18}{'steps/s':>9}{'RTF':>7}{'GB/s':>7}{'T5 s':>7}{'EnCodec s':>10}{'total s':>9}")
    best = {}
    for e, runs in results.items():
        b = best[e] = max(runs, key=lambda x: x["steps_per_s"])
        m = loaded.get(e)
        lm = None if m is None else m.lm if isinstance(m, MusicGen) else m.decoder
        gbs = f"{b['steps_per_s'] * step_bytes(lm) / 1e9:>7.1f}" if lm is not None else f"{'-':>7}"
        total = b["t5_s"] + b["lm_s"] + b["decode_s"]
        print(f"{e:<18}{b['steps_per_s']:>9.2f}{total / audio_s:>7.2f}{gbs}{b['t5_s']:>7.2f}"
              f"{b['decode_s']:>10.2f}{total:>9.1f}")
    for e in best:
        anchors = ["transformers"] + (["ort"] if e.startswith("fp32") else ["ort-int8"] if e.startswith("int") else [])
        for anchor in anchors:
            if anchor in best and e != anchor and not e.startswith(("ort", "transformers")):
                ratio = best[e]["steps_per_s"] / best[anchor]["steps_per_s"]
                print(f"ratio {e} / {anchor}: {ratio:.2f}x decode steps/s")
    print("all runs (steps/s): " + json.dumps({k: [round(x["steps_per_s"], 2) for x in v] for k, v in results.items()}))
    for e in [e for e in engines if e.startswith("int") and not variant_of(e)[1] and "fp32" in loaded]:
        q = int8_quality(loaded["fp32"], loaded[e], frames)
        print(f"{e} vs float32 over {frames} frames: greedy token agreement {q['token_agreement']:.3f} "
              f"(identical for the first {q['frames_identical_before_first_divergence']} frames), teacher-forced "
              f"top-1 agreement {q['teacher_forced_top1_agreement']:.3f}, mean KL {q['mean_kl']:.4f} nats "
              f"(max {q['max_kl']:.3f})")
    if not args.no_rss:
        del loaded
        for e in [e for e in engines if not e.startswith("ort") and not variant_of(e)[1]]:
            r = rss_of(e, model, frames)
            ratio = (r["peak"] - r["base"]) / r["weights"]
            print(f"peak RSS {e:<18} {r['peak']:7.0f} MB (after imports {r['base']:.0f}, after load "
                  f"{r['loaded']:.0f}); weights held {r['weights']:.0f} MB; peak - imports = {ratio:.2f}x the weights")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
