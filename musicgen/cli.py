"""Command line: `python -m musicgen "lofi hip hop beat" --duration 8 -o out.wav`.

The output format is the `-o` file's extension (.wav 16-bit, or 24-bit with --wav24; .flac; .mp3; .ogg:
audio_io.write_audio). A prompt may be a timeline, "0:00 ambient pads | 0:30 drums come in" (timeline.py).
`--takes N` makes N variations of every prompt with consecutive seeds, run together through one
serve.Scheduler so they share decode steps (a decode step costs nearly the same for 2 rows as for 8).
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from . import audio_io, loudness, timeline
from .errors import InvalidInputError, MusicGenError
from .layout import QUANTIZE
from .options import DECODERS, MAX_TAKES, GenerationOptions, options, seed_of, take_seeds

if TYPE_CHECKING:
    from .pipeline import GenerationOutput, MusicGen

D = GenerationOptions()  # the defaults (audiocraft's)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m musicgen",
        description="Generate music from text with a MusicGen checkpoint. Weights come from the Hugging Face "
        "Hub on first use (then from the local HF cache) or from a local folder.",
    )
    p.add_argument("prompts", nargs="+", help="one or more text descriptions; \"\" for unconditional music; a "
                   "timeline such as \"0:00 ambient pads | 0:30 drums come in\" changes the prompt over a long piece "
                   "(each 30 s window plays the prompt in force where its new audio starts)")
    p.add_argument("-o", "--output", default="out.wav",
                   help="file to write, its format from the extension: .wav (16-bit), .flac, .mp3, .ogg (no "
                   "extension: .wav). Several prompts: NAME-0.wav, NAME-1.wav, ...; --takes: NAME-take1.wav, ... "
                   "[out.wav]")
    p.add_argument("--wav24", action="store_true", help="write 24-bit WAV (the output must be .wav)")
    p.add_argument("--loudness", choices=loudness.STRATEGIES, default=D.normalize,
                   help="level of the audio written: loudness = -16 LUFS with a soft clipper (audiocraft's demo), "
                   "peak = -1 dBFS peak, rms = -18 dBFS RMS, clip = clipped at -1 dBFS, none = as decoded "
                   f"[{D.normalize}]")
    p.add_argument("--duration", type=float, default=8.0,
                   help="seconds of audio, up to 300 (beyond 30 s it is made window by window) [8]")
    p.add_argument("--extend-stride", type=float, default=D.extend_stride,
                   help="beyond 30 s: seconds each new 30 s window adds; the rest of the window is its prompt "
                   f"[{D.extend_stride:g}]")
    p.add_argument("--takes", type=int, default=1,
                   help=f"variations of each prompt (1-{MAX_TAKES}), seeds SEED, SEED+1, ..., made together [1]")
    p.add_argument("--continue", dest="continue_from", default=None, metavar="FILE",
                   help="audio file to continue (the part used shorter than 30 s): the output starts with it, "
                   "--duration counts the whole result")
    trim_flags(p, "continue", "the audio to continue", "the end of the file")
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
                   "--model facebook/musicgen-melody; 30 s of it are used at most")
    trim_flags(p, "melody", "the melody", "the end of the file, 30 s at most")
    p.add_argument("--no-separate", dest="separate_melody", action="store_false", default=None,
                   help="use the melody's whole mix for its chroma instead of keeping its vocals + other stems "
                   "(demucs htdemucs, as audiocraft does; its weights, adefossez/HTDemucs, are fetched on first use)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... [cuda if available, else cpu]")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="language-model precision [float16 on CUDA, float32 on CPU]")
    p.add_argument("--decoder", choices=DECODERS, default=D.decoder,
                   help="tokens to audio: EnCodec, or multi-band diffusion (better quality, much slower; its weights, "
                   "facebook/multiband-diffusion, are fetched on first use) [encodec]")
    p.add_argument("--quantize", choices=[q for q in QUANTIZE if q], default=None,
                   help="int8 language model: ~2.6x faster than float32 on CPU, slightly different output; "
                   "int8-weight-only keeps float activations (closer to float32, ~20 %% slower); int4: int4 "
                   "weights, bf16 activations (CPU only, fastest, further from float32)")
    return p


def trim_flags(p: argparse.ArgumentParser, name: str, what: str, end: str) -> None:
    """--NAME-start / --NAME-end: the part of the file that is used."""
    p.add_argument(f"--{name}-start", type=float, default=0.0, metavar="SECONDS",
                   help=f"use {what} from this time in its file [0]")
    p.add_argument(f"--{name}-end", type=float, default=None, metavar="SECONDS", help=f"... up to this time [{end}]")


def output_format(output: str, wav24: bool = False) -> str:
    """The audio_io.FORMATS name the output file asks for (a name without extension: wav)."""
    fmt = audio_io.format_of_path(output) if Path(output).suffix else "wav"
    if wav24 and fmt != "wav":
        raise InvalidInputError(f"--wav24 writes 24-bit WAV, but the output {Path(output).name} is {fmt}: name it "
                                ".wav or leave out --wav24")
    return "wav24" if wav24 else fmt


def output_paths(output: str, n: int, takes: int = 1, fmt: str = "wav") -> list[Path]:
    """Files for `n` prompts x `takes` takes, prompt by prompt: NAME.ext; NAME-0.ext, NAME-1.ext, ... for
    several prompts; NAME-take1.ext, ... (NAME-0-take1.ext, ...) for several takes. The extension is the
    format's (added when the name has none)."""
    out = Path(output)
    suffix = audio_io.FORMATS[fmt][0]
    if out.suffix.lower() != suffix:  # "song.WAV" stays as it is
        out = out.with_suffix(suffix) if out.suffix.lower() in audio_io.SUFFIXES else Path(f"{out}{suffix}")
    names = [out.stem] if n == 1 else [f"{out.stem}-{i}" for i in range(n)]
    if takes > 1:
        names = [f"{name}-take{k}" for name in names for k in range(1, takes + 1)]
    return [out.with_name(f"{name}{out.suffix}") for name in names]


def read_clip(path: str | None, start: float, end: float | None, melody: bool) -> tuple[Any, int] | None:
    """An audio file -> the engine's (wave, rate), [start, end) seconds of it, read by audio_io.load_melody /
    load_continuation (bounded decoding, clear errors); their notice goes to stderr."""
    if path is None:
        if start != 0.0 or end is not None:
            flag = "--melody" if melody else "--continue"
            raise InvalidInputError(f"{flag}-start / {flag}-end trim a file: give it with {flag} FILE")
        return None
    what = "melody" if melody else "audio to continue"
    if not Path(path).is_file():
        raise InvalidInputError(f"cannot read the {what} file {path}: there is no such file")
    upload = (audio_io.load_melody if melody else audio_io.load_continuation)(path, start, end)
    if upload.notice:
        print(upload.notice, file=sys.stderr)
    return upload.clip


def run_takes(mg: MusicGen, prompts: list[str], o: GenerationOptions, takes: int, bar: tqdm
              ) -> list[GenerationOutput]:
    """One take: `MusicGen.generate`; several: `serve.generate_takes` (together, consecutive seeds). The bar
    shows the sum of the takes' steps."""
    steps, totals = [0] * takes, [0] * takes
    lock = threading.Lock()

    def report(k: int, step: int, total: int) -> None:
        with lock:
            steps[k], totals[k] = step, total
            bar.total = sum(totals)
            bar.update(sum(steps) - bar.n)

    if takes == 1:
        return [mg.generate(prompts, options=o, progress=functools.partial(report, 0))]
    from .serve import generate_takes

    return generate_takes(mg, prompts, takes, options=o, progress=report)


def show_timelines(prompts: list[str], o: GenerationOptions, head: float) -> None:
    """For each prompt that is a timeline, which prompt each window plays (stderr)."""
    for i, p in enumerate(prompts):
        if (entries := timeline.parse(p)) is None:
            continue
        entries = timeline.check(entries, o.duration)
        spans = timeline.schedule(entries, o.duration, o.extend_stride, head=head)
        where = f"prompt {i}: " if len(prompts) > 1 else ""
        print(where + "; ".join(f"{timeline.fmt(a)}-{timeline.fmt(b)} {p!r}" for a, b, p in spans), file=sys.stderr)
        for note in timeline.unheard(entries, o.duration, o.extend_stride, head=head):
            print(f"note: {note}; move it earlier, make the piece longer or lower --extend-stride", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .pipeline import MusicGen  # after argument parsing so --help is instant

    try:
        fmt = output_format(args.output, args.wav24)
        seed = take_seeds(seed_of(options(seed=args.seed)), args.takes)[0]  # (takes checked before loading)
        melody = read_clip(args.melody, args.melody_start, args.melody_end, melody=True)
        head = read_clip(args.continue_from, args.continue_start, args.continue_end, melody=False)
        o = options(duration=args.duration, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                    cfg_coef=args.cfg_coef, melody=melody, continue_from=head, extend_stride=args.extend_stride,
                    decoder=args.decoder, normalize=args.loudness, seed=seed, separate_melody=args.separate_melody)
        show_timelines(args.prompts, o, 0.0 if head is None else head[0].shape[-1] / head[1])
        t0 = time.perf_counter()
        mg = MusicGen.from_pretrained(args.model, device=args.device, revision=args.revision,
                                      dtype=DTYPES[args.dtype] if args.dtype else None, quantize=args.quantize)
        print(f"loaded {args.model} on {mg.device} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        bar = tqdm(total=None, unit="step", desc="generating", file=sys.stderr)
        t0 = time.perf_counter()
        outs = run_takes(mg, args.prompts, o, args.takes, bar)
        bar.close()
        elapsed = time.perf_counter() - t0
        paths = output_paths(args.output, outs[0].audio.shape[0], args.takes, fmt)
        for i, path in enumerate(paths):
            out = outs[i % args.takes]
            path.parent.mkdir(parents=True, exist_ok=True)
            written = audio_io.write_audio(path, out.audio[i // args.takes].numpy(), out.sample_rate, fmt)
            print(f"wrote {written}" + (f" (seed {out.seed})" if args.takes > 1 else ""), file=sys.stderr)
    except MusicGenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = outs[0].audio.shape[-1] / outs[0].sample_rate
    print(f"seed {', '.join(str(out.seed) for out in outs)}; {seconds:.2f} s of audio in {elapsed:.1f} s "
          f"(real-time factor {elapsed / seconds:.2f})", file=sys.stderr)
    return 0
