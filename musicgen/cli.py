"""Command line: `python -m musicgen "lofi hip hop beat" --duration 8 -o out.wav`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import soundfile as sf
import torch
from tqdm import tqdm

from .errors import InvalidInputError, MusicGenError
from .layout import QUANTIZE
from .options import DECODERS, GenerationOptions, options

D = GenerationOptions()  # the defaults (audiocraft's)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m musicgen",
        description="Generate music from text with a MusicGen checkpoint. Weights come from the Hugging Face "
        "Hub on first use (then from the local HF cache) or from a local folder.",
    )
    p.add_argument("prompts", nargs="+", help="one or more text descriptions; \"\" for unconditional music")
    p.add_argument("-o", "--output", default="out.wav",
                   help="16-bit WAV file to write (several prompts: NAME-0.wav, NAME-1.wav, ...) [out.wav]")
    p.add_argument("--duration", type=float, default=8.0,
                   help="seconds of audio, up to 300 (beyond 30 s it is made window by window) [8]")
    p.add_argument("--extend-stride", type=float, default=D.extend_stride,
                   help="beyond 30 s: seconds each new 30 s window adds; the rest of the window is its prompt "
                   f"[{D.extend_stride:g}]")
    p.add_argument("--continue", dest="continue_from", default=None, metavar="FILE",
                   help="audio file to continue (shorter than 30 s): the output starts with it, --duration counts "
                   "the whole result")
    p.add_argument("--model", default="facebook/musicgen-small",
                   help="Hub repo id or local checkpoint folder [facebook/musicgen-small]")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit [main]")
    p.add_argument("--seed", type=int, default=None, help="random seed for a reproducible result [random]")
    p.add_argument("--top-k", type=int, default=D.top_k,
                   help=f"sample among the k most likely tokens; 0 = off [{D.top_k}]")
    p.add_argument("--top-p", type=float, default=D.top_p,
                   help=f"nucleus sampling mass; > 0 overrides top-k [{D.top_p:g}]")
    p.add_argument("--temperature", type=float, default=D.temperature,
                   help=f"softmax temperature; 0 = greedy [{D.temperature:g}]")
    p.add_argument("--cfg-coef", type=float, default=D.cfg_coef,
                   help=f"classifier-free guidance strength [{D.cfg_coef:g}]")
    p.add_argument("--melody", default=None, metavar="FILE",
                   help="audio file (wav/flac/ogg/mp3) whose tune conditions a melody checkpoint, e.g. "
                   "--model facebook/musicgen-melody; only its first 30 s are used")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... [cuda if available, else cpu]")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="language-model precision [float16 on CUDA, float32 on CPU]")
    p.add_argument("--decoder", choices=DECODERS, default=D.decoder,
                   help="tokens to audio: EnCodec, or multi-band diffusion (better quality, much slower; its weights, "
                   "facebook/multiband-diffusion, are fetched on first use) [encodec]")
    p.add_argument("--quantize", choices=[q for q in QUANTIZE if q], default=None,
                   help="int8 language model: ~2.6x faster than float32 on CPU, slightly different output; "
                   "int8-weight-only keeps float activations (closer to float32, ~20 %% slower)")
    return p


def output_paths(output: str, n: int) -> list[Path]:
    out = Path(output)
    if out.suffix.lower() != ".wav":
        out = out.with_suffix(out.suffix + ".wav") if out.suffix else out.with_suffix(".wav")
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]


def read_audio(path: str, what: str) -> tuple[object, int]:
    """An audio file -> ([channels, samples] float32 array, sample rate), with a readable error."""
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as e:
        raise InvalidInputError(f"cannot read {what} file {path}: {e}") from e
    return data.T, sr


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .pipeline import MusicGen  # after argument parsing so --help is instant

    try:
        melody = read_audio(args.melody, "melody") if args.melody else None
        head = read_audio(args.continue_from, "audio to continue") if args.continue_from else None
        t0 = time.perf_counter()
        mg = MusicGen.from_pretrained(args.model, device=args.device, revision=args.revision,
                                      dtype=DTYPES[args.dtype] if args.dtype else None, quantize=args.quantize)
        print(f"loaded {args.model} on {mg.device} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        bar = tqdm(total=None, unit="step", desc="generating", file=sys.stderr)

        def progress(step: int, total: int) -> None:
            bar.total = total
            bar.update(step - bar.n)

        t0 = time.perf_counter()
        o = options(duration=args.duration, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                    cfg_coef=args.cfg_coef, seed=args.seed, melody=melody, continue_from=head,
                    extend_stride=args.extend_stride, decoder=args.decoder)
        out = mg.generate(args.prompts, options=o, progress=progress)
        bar.close()
        elapsed = time.perf_counter() - t0
    except MusicGenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, audio in zip(output_paths(args.output, len(args.prompts)), out.audio):
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), audio.T.numpy(), out.sample_rate, subtype="PCM_16")
        print(f"wrote {path}", file=sys.stderr)
    seconds = out.audio.shape[-1] / out.sample_rate
    print(f"seed {out.seed}; {seconds:.2f} s of audio in {elapsed:.1f} s "
          f"(real-time factor {elapsed / seconds:.2f})", file=sys.stderr)
    return 0
