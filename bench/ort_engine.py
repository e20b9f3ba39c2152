"""ONNX Runtime as a MusicGen engine: optimum's export, run as transformers.js runs it (the anchor of issue 23).

Runs in the ONNX environment (.venv-onnx, scripts/export_onnx.sh), never in the project's:

    .venv-onnx/bin/python bench/ort_engine.py run FOLDER --frames 500 [--int8] [--threads 2] [--seed 0]
    .venv-onnx/bin/python bench/ort_engine.py quantize FOLDER      # the int8 decoders (transformers.js "q8")

`run` prints one JSON line: decode steps/s (first to last step), T5, language-model and EnCodec seconds. The
generation is MusicGen's: T5 once, then classifier-free guidance as two rows (the prompt; zero states with a
zero mask), `decoder_model.onnx` for the first step and `decoder_with_past_model.onnx` after, top-k 250 sampling
at temperature 1 and guidance 3 on the guided logits, the delay pattern forcing token 2048 where codebook k has
no token yet (frames + K - 1 steps), then `encodec_decode.onnx`. `quantize` is onnxruntime's quantize_dynamic
with QInt8 weights per tensor (what transformers.js publishes as q8) on both decoders.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PAD = 2048  # the start / pad token (card)
DECODERS = ("decoder_model", "decoder_with_past_model")


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def top_k(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[K, V] guided logits -> one token per codebook, sampled among the k largest (temperature 1)."""
    idx = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    top = np.take_along_axis(logits, idx, axis=-1)
    p = np.exp(top - top.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.array([idx[i, rng.choice(k, p=p[i])] for i in range(len(p))])


def run(folder: Path, frames: int, int8: bool, threads: int, seed: int, prompt: str) -> dict:
    from tokenizers import Tokenizer

    suffix = "_int8" if int8 else ""
    t5 = session(folder / "text_encoder.onnx", threads)
    first, rest = (session(folder / f"{d}{suffix}.onnx", threads) for d in DECODERS)
    codec = session(folder / "encodec_decode.onnx", threads)
    K = json.loads((folder / "config.json").read_text())["decoder"]["num_codebooks"]
    ids = np.array([Tokenizer.from_file(str(folder / "tokenizer.json")).encode(prompt).ids], dtype=np.int64)
    rng = np.random.default_rng(seed)

    t0 = time.perf_counter()
    (states,) = t5.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    t_text = time.perf_counter() - t0
    states = np.concatenate([states, np.zeros_like(states)])  # [2, L, D]: the prompt, then the null condition
    mask = np.concatenate([np.ones_like(ids), np.zeros_like(ids)])
    names = [o.name for o in rest.get_outputs()]
    tokens = np.full((K, frames + K - 1), PAD, dtype=np.int64)
    step_in = np.full((2 * K, 1), PAD, dtype=np.int64)
    past: dict[str, np.ndarray] = {}
    times = []
    t0 = time.perf_counter()
    for s in range(frames + K - 1):
        if s == 0:
            out = first.run(None, {"input_ids": step_in, "encoder_hidden_states": states,
                                   "encoder_attention_mask": mask})
            out_names = [o.name for o in first.get_outputs()]
        else:
            out = rest.run(None, {"input_ids": step_in, "encoder_attention_mask": mask, **past})
            out_names = names
        results = dict(zip(out_names, out))
        for name, value in results.items():
            if name.startswith("present.") and (s == 0 or ".decoder." in name):
                past[name.replace("present.", "past_key_values.")] = value
        logits = results["logits"].reshape(2, K, -1)
        guided = logits[1] + (logits[0] - logits[1]) * 3.0  # [K, V]
        new = top_k(guided, 250, rng)
        for k in range(K):
            if k <= s < frames + k:  # delay pattern: codebook k starts k steps late
                tokens[k, s] = new[k]
        step_in = np.concatenate([tokens[:, s], tokens[:, s]])[:, None]
        times.append(time.perf_counter())
    t_lm = time.perf_counter() - t0
    codes = np.stack([tokens[k, k : k + frames] for k in range(K)])[None, None]  # undo the delay: [1, 1, K, T]
    t0 = time.perf_counter()
    codec.run(None, {"audio_codes": codes})
    t_dec = time.perf_counter() - t0
    return {"steps_per_s": (len(times) - 1) / (times[-1] - times[0]), "lm_s": t_lm, "t5_s": t_text,
            "decode_s": t_dec}


def quantize(folder: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for d in DECODERS:
        quantize_dynamic(folder / f"{d}.onnx", folder / f"{d}_int8.onnx", weight_type=QuantType.QInt8,
                         per_channel=False, reduce_range=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "quantize"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default="lofi hip hop beat with mellow piano and soft drums")
    args = ap.parse_args()
    if args.command == "quantize":
        quantize(args.folder)
    else:
        print(json.dumps(run(args.folder, args.frames, args.int8, args.threads, args.seed, args.prompt)))


if __name__ == "__main__":
    main()
