"""`MusicGen`: load a checkpoint, turn prompts into tokens, tokens into audio."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from . import audiocraft_format, lora, loudness
from . import codec as codec_mod
from . import lm as lm_mod
from . import text as text_mod
from .codec import EnCodec
from .config import MusicGenConfig
from .convert import weights_folder
from .diffusion import MultiBandDiffusion
from .errors import InvalidInputError
from .generate import StepFn, decode_step, decode_steps
from .hub import resolve
from .layout import QUANTIZE, dynamic_int8_available, int4_available, int8_available
from .lm import LM
from .melody import ChromaExtractor
from .options import MAX_DURATION, WINDOW, GenerationOptions, ProgressFn, check_tokens, seed_of
from .options import options as make_options
from .prepare import prepare, separate_melody
from .streaming import ChunkedDecode, can_stream
from .text import T5Encoder, TextTokenizer
from .timeline import Prompts
from .weights import release_free_memory

DECODE_CHUNK = 50  # frames (1 s of one channel) per EnCodec decoder pass, split between the batch's items.
# Decoding 60 s in one pass takes 2.2 GB and 8.2 s on 2 CPU cores; in 50-frame chunks (streaming.py, exact)
# 0.16 GB and 3-4.5 s (the activations stay in cache); 100 frames: 0.26 GB, 5-10 % faster


@dataclass
class GenerationOutput:
    audio: torch.Tensor | None  # [B, C, S] float32 in [-1, 1] on the CPU, levelled by options.normalize (None:
    # stream(decode=False))
    tokens: torch.Tensor  # [B, K, frames] long on the CPU
    sample_rate: int
    seed: int  # the seed that reproduces this result
    audio_encodec: torch.Tensor | None = None  # with decoder="mbd": the EnCodec decode (levelled), for comparison


@dataclass
class StreamStep:
    """One decode step of `MusicGen.stream`: `tokens` holds every frame complete so far [B, K, n]."""

    step: int
    total: int
    tokens: torch.Tensor


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class MusicGen:
    """Text-to-music with a MusicGen checkpoint (mono or stereo, any size)."""

    def __init__(self, cfg: MusicGenConfig, tokenizer: TextTokenizer, t5: T5Encoder, lm: LM, codec: EnCodec,
                 device: torch.device, dtype: torch.dtype, name: str = "", quantize: str | None = None) -> None:
        self.cfg, self.tokenizer, self.t5, self.lm, self.codec = cfg, tokenizer, t5, lm, codec
        self.device, self.dtype, self.name, self.quantize = device, dtype, name, quantize
        self.chroma = ChromaExtractor(cfg.melody) if cfg.melody is not None else None
        self.step_fn: StepFn | None = None  # a compiled static-shape decode step (from_pretrained(compile=True))
        self._mbd: MultiBandDiffusion | None = None

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, revision: str | None = None,
                        quantize: str | None = None, compile: bool = False) -> MusicGen:
        """A Hub repo id (e.g. "facebook/musicgen-small") or a local folder with the same files; or a PEFT LoRA
        adapter's (adapter_config.json): its base model with the adapter merged into the weights (lora.py).
        device: CUDA when available, else CPU. dtype (the LM's): float16 on CUDA, float32 on CPU; the
        T5 encoder and EnCodec always run in float32. quantize="int8": int8 linear layers in the LM
        (fbgemm's dynamic int8 on x86 CPUs, weight-only int8 elsewhere; the fast choice on CPUs, see
        layout.py for speed and quality); "int8-weight-only": int8 weights, float activations (closer to
        float32, ~20 % slower on x86); "int4": int4 weights in groups of 64, bf16 activations (CPU only: the
        fastest there, with a larger quality cost: see README's Speed). compile=True: torch.compile
        the static-shaped decode step (CUDA graphs on GPU); opt-in, the first generation is slow."""
        if quantize not in QUANTIZE:
            raise InvalidInputError(f"quantize must be None, 'int8', 'int8-weight-only' or 'int4', got {quantize!r}")
        device = torch.device(device) if device is not None else default_device()
        if quantize == "int4" and not int4_available(device):
            raise InvalidInputError(f"quantize='int4' runs on the CPU only (torch._weight_int4pack_mm_for_cpu, torch "
                                    f"{torch.__version__}); on {device.type} use 'int8' or float16")
        if quantize in ("int8", "int8-weight-only") and not (
                int8_available() or quantize == "int8" and dynamic_int8_available(device)):
            raise InvalidInputError(f"quantize={quantize!r} needs torch._weight_int8pack_mm "
                                    f"(torch {torch.__version__})")
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        folder = resolve(name_or_path, revision)
        folder, adapter = lora.find_adapter(folder)  # a PEFT LoRA adapter: its base model, merged with it at load
        if audiocraft_format.is_export(folder):  # audiocraft's own export: its transformers-layout copy
            folder = audiocraft_format.transformers_folder(folder)
        cfg = MusicGenConfig.from_folder(folder)
        tokenizer = TextTokenizer(folder)
        if cfg.melody is not None:  # the text joins the prefix: keep [chroma | text | one window] within positions
            room = cfg.lm.max_positions - cfg.melody.chroma_length - round(WINDOW * cfg.frame_rate) - max(cfg.lm.delays)
            tokenizer.max_tokens = min(tokenizer.max_tokens, room)
        # pytorch_model*.bin: its safetensors copy, converted once; an adapter's deltas are added as weights are read
        ckpt = lora.open_checkpoint(weights_folder(folder), adapter)
        t5 = T5Encoder.from_checkpoint(cfg.text, ckpt, device)
        num_chroma = cfg.melody.num_chroma if cfg.melody is not None else None
        lm = LM.from_checkpoint(cfg.lm, cfg.text.d_model, num_chroma, ckpt, device, dtype, quantize)
        codec = EnCodec.from_checkpoint(cfg.codec, ckpt, device)
        ckpt.check_all_used(lambda k: text_mod.is_ignored(k) or lm_mod.is_ignored(k) or codec_mod.is_ignored(k))
        mg = cls(cfg, tokenizer, t5, lm, codec, device, dtype, str(name_or_path), quantize)
        if compile:
            mode = "reduce-overhead" if device.type == "cuda" else None  # reduce-overhead = CUDA graphs
            mg.step_fn = torch.compile(decode_step, mode=mode, dynamic=False)
        return mg

    # ---------------------------------------------------------------- properties
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.cfg.frame_rate

    @property
    def audio_channels(self) -> int:
        return self.cfg.lm.audio_channels

    @property
    def num_codebooks(self) -> int:
        return self.cfg.lm.num_codebooks

    @property
    def can_stream(self) -> bool:
        """Exact chunked EnCodec decoding (streaming.StreamDecoder) applies; else one decode pass at the end."""
        return can_stream(self.codec)

    @property
    def max_duration(self) -> float:
        return MAX_DURATION

    # ---------------------------------------------------------------- stages
    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> T5 states [B, L, d_text] and mask [B, L] (empty prompts fully masked)."""
        ids, mask = self.tokenizer(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.t5(ids, mask), mask

    @property
    def mbd(self) -> MultiBandDiffusion:
        """The multi-band diffusion decoder, fetched from the Hub (facebook/multiband-diffusion) on first use;
        assign a `MultiBandDiffusion` to use another one."""
        if self._mbd is None:
            self._mbd = MultiBandDiffusion.from_pretrained(device=self.device)
        return self._mbd

    @mbd.setter
    def mbd(self, model: MultiBandDiffusion) -> None:
        self._mbd = model

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, decoder: str = "encodec", *, seed: int | None = None,
               progress: ProgressFn | None = None) -> torch.Tensor:
        """tokens [B, K, T] -> audio [B, C, T * 640] float32 in [-1, 1] on the CPU. decoder "mbd": multi-band
        diffusion (stereo: left and right as two mono items), reproducible with `seed`, `progress(step,
        total)` after every diffusion model call."""
        tokens = check_tokens(tokens, self.num_codebooks, self.cfg.codec.codebook_size)
        o = make_options(decoder=decoder, seed=seed)
        C = self.audio_channels
        codes = rearrange(tokens.to(self.device), "b (q c) t -> (b c) q t", c=C)  # stereo: L0 R0 L1 R1 ...
        if decoder == "mbd":
            generator = torch.Generator().manual_seed(seed_of(o))  # MBD draws its noise on the CPU
            audio = self.mbd.decode(codes, self.codec, generator, progress)
        elif (chunked := self.chunked_decode(tokens.shape[0], tokens.shape[-1])) is not None:
            chunked.push(tokens)
            release_free_memory()  # glibc keeps the chunks' freed buffers otherwise (~0.25 GB)
            assert chunked.audio is not None
            return chunked.audio
        else:
            audio = self.codec.decode(codes)
        return rearrange(audio, "(b c) 1 s -> b c s", c=C).clamp(-1.0, 1.0).float().cpu()

    def chunked_decode(self, batch: int, frames: int) -> ChunkedDecode | None:
        """How `decode` decodes `batch` items of `frames` frames with EnCodec when it goes chunk by chunk (the exact
        streaming decoder, DECODE_CHUNK frames a pass: memory stays that of one chunk however long the piece), to
        be fed as frames complete; None where it decodes in one pass (short pieces, codecs it cannot stream)."""
        chunk = max(DECODE_CHUNK // (batch * self.audio_channels), 16)
        if frames <= chunk or not self.can_stream:
            return None
        return ChunkedDecode(self.codec, self.audio_channels, chunk, frames)

    def generate(self, prompts: Prompts, duration: float | None = None, *,
                 options: GenerationOptions | None = None, progress: ProgressFn | None = None,
                 **changes: Any) -> GenerationOutput:
        """Generate `duration` seconds (up to 300) of music for each prompt ("" = unconditional).

        `prompts`: a str, a list of str (one piece each), or one piece's timeline as (seconds, prompt) pairs,
        `[(0, "ambient pads"), (30, "drums come in")]`; any str may be a timeline itself, "0:00 ambient pads |
        0:30 drums come in" (timeline.py: each 30 s window plays the prompt in force where its new audio
        starts).

        The keywords are `GenerationOptions`' fields (options.py), on top of `options` if given: top_k,
        top_p (> 0 overrides top_k), temperature (0 = greedy), cfg_coef, seed (the seed used is returned
        either way), melody=(wave, sample_rate) (melody checkpoints: a tensor or array [S], [C, S] or
        [B, C, S], one tune for every prompt or one per prompt, any rate), continue_from=(wave, sample_rate)
        (see `generate_continuation`), extend_stride (beyond 30 s the piece is made window by window, each
        new 30 s window prompted with the last 30 - extend_stride seconds of the previous one), decoder
        ("mbd": multi-band diffusion; `out.audio_encodec` keeps the EnCodec version), normalize (the level of
        the audio returned, loudness.STRATEGIES: by default -16 LUFS as audiocraft's demo writes; "none": the
        decoder's output as `decode` gives it). `progress(step, total)` is called after every decode (and
        diffusion) step."""
        return finish(self.stream(prompts, duration, options=options, progress=progress, **changes), progress)

    def generate_continuation(self, prompt_audio: object, prompt_sample_rate: int, prompts: Prompts,
                              duration: float | None = None, **kwargs: Any) -> GenerationOutput:
        """Continue `prompt_audio` ([S], [C, S] or [B, C, S], any rate, shorter than 30 s): it is encoded
        with EnCodec and the music goes on from it. The output holds the (re-encoded) prompt followed by
        the continuation; `duration` counts the whole result. Keywords as `generate`."""
        return self.generate(prompts, duration, continue_from=(prompt_audio, prompt_sample_rate), **kwargs)

    def stream(self, prompts: Prompts, duration: float | None = None, *,
               options: GenerationOptions | None = None, progress: ProgressFn | None = None, decode: bool = True,
               **changes: Any) -> Iterator[StreamStep | GenerationOutput]:
        """`generate` as an iterator: a `StreamStep` after every decode step with the frames of the piece
        complete so far, then the `GenerationOutput`. Everything is validated at the first `next()`; stop
        iterating to cancel. With decoder="mbd" the diffusion steps are reported through `progress(step,
        total)` (the totals of the StreamSteps include them). decode=False skips the final EnCodec decode (the
        output's `audio`, or with "mbd" its `audio_encodec`, is then None), for callers that decode the
        StreamSteps as they come (streaming.StreamDecoder)."""
        o = make_options(options, **({} if duration is None else {"duration": duration}), **changes)
        gen, seed = prepare(self, prompts, separate_melody(self, prompts, o))
        mbd = self.mbd if o.decoder == "mbd" else None  # fetched before the long part, so a download error is early
        total = gen.total + (mbd.total_steps if mbd is not None else 0)
        gen.begin()
        while not gen.done:
            decode_steps(self.lm, [gen], self.step_fn)
            yield StreamStep(gen.step, total, gen.frames().cpu())
        yield self.output(gen.frames(), o.decoder, seed, decode=decode, progress=progress, steps_before=gen.total,
                          normalize=o.normalize)

    def output(self, tokens: torch.Tensor, decoder: str, seed: int, *, decode: bool = True,
               progress: ProgressFn | None = None, steps_before: int = 0,
               normalize: str = loudness.DEFAULT_STRATEGY, decoded: torch.Tensor | None = None) -> GenerationOutput:
        """Finished tokens [B, K, T] -> the `GenerationOutput` (decoded unless decode=False; with "mbd" the
        diffusion steps are reported to `progress` after the `steps_before` decode steps), each item's audio
        levelled by `normalize` (loudness.STRATEGIES; "none": as `decode` gives it). `decoded`: `decode(tokens)`'s
        result, when it was computed already (the scheduler decodes as it generates)."""
        if normalize not in loudness.STRATEGIES:  # before the work: GenerationOptions checked it already
            raise InvalidInputError(f"normalize must be one of {', '.join(loudness.STRATEGIES)}, got {normalize!r}")
        release_free_memory()  # the KV cache's pages go back to the OS before the decoder needs its own
        if decode and decoded is None:
            decoded = self.decode(tokens)
        audio = loudness.level_items(decoded, self.sample_rate, normalize) if decode else None
        if decoder != "mbd":
            return GenerationOutput(audio, tokens.cpu(), self.sample_rate, seed)
        total = steps_before + self.mbd.total_steps
        tick = (lambda s, _: progress(steps_before + s, total)) if progress is not None else None
        mbd = loudness.level_items(self.decode(tokens, "mbd", seed=seed, progress=tick), self.sample_rate, normalize)
        return GenerationOutput(mbd, tokens.cpu(), self.sample_rate, seed, audio_encodec=audio)


def finish(events: Iterator[StreamStep | GenerationOutput], progress: ProgressFn | None) -> GenerationOutput:
    """Run a `MusicGen.stream` to its output, reporting its steps to `progress`."""
    for event in events:
        if isinstance(event, GenerationOutput):
            return event
        if progress is not None:
            progress(event.step, event.total)
    raise AssertionError("stream ended without an output")
