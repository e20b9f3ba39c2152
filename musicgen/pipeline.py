"""`MusicGen`: load a checkpoint, turn prompts into tokens, tokens into audio."""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange

from . import codec as codec_mod
from . import lm as lm_mod
from . import text as text_mod
from .codec import EnCodec
from .config import MusicGenConfig
from .convert import weights_folder
from .diffusion import MultiBandDiffusion
from .errors import InvalidInputError
from .generate import Progress, StepFn, complete_frames, decode_step, iter_steps
from .hub import resolve
from .layout import QUANTIZE, dynamic_int8_available, int8_available
from .lm import LM
from .longform import Window, frames_of, loop_audio, plan_windows, prepare_prompt_audio
from .melody import ChromaExtractor
from .sampling import SamplingParams, undelay
from .streaming import StreamDecoder, can_stream
from .text import T5Encoder, TextTokenizer
from .weights import Checkpoint, release_free_memory

DECODERS = ("encodec", "mbd")
WINDOW = 30.0  # seconds: the window the released models were trained on (audiocraft max_duration)
EXTEND_STRIDE = 18.0  # seconds each further window adds (audiocraft's default extend_stride)
MAX_DURATION = 300.0  # longest piece: made window by window beyond WINDOW
DECODE_CHUNK = 50  # frames (1 s of one channel) per EnCodec decoder pass, split between the batch's items.
# Decoding 60 s in one pass takes 2.2 GB and 8.2 s on 2 CPU cores; in 50-frame chunks (streaming.py, exact)
# 0.16 GB and 3-4.5 s (the activations stay in cache); 100 frames: 0.26 GB, 5-10 % faster


@dataclass
class GenerationOutput:
    audio: torch.Tensor | None  # [B, C, S] float32 in [-1, 1] on the CPU (None: stream(decode=False))
    tokens: torch.Tensor  # [B, K, frames] long on the CPU
    sample_rate: int
    seed: int  # the seed that reproduces this result
    audio_encodec: torch.Tensor | None = None  # with decoder="mbd": the EnCodec decode, for comparison


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
        """A Hub repo id (e.g. "facebook/musicgen-small") or a local folder with the same files.
        device: CUDA when available, else CPU. dtype (the LM's): float16 on CUDA, float32 on CPU; the
        T5 encoder and EnCodec always run in float32. quantize="int8": int8 linear layers in the LM
        (fbgemm's dynamic int8 on x86 CPUs, weight-only int8 elsewhere; the fast choice on CPUs, see
        layout.py for speed and quality); "int8-weight-only": int8 weights, float activations (closer to
        float32, ~20 % slower on x86). compile=True: torch.compile
        the static-shaped decode step (CUDA graphs on GPU); opt-in, the first generation is slow."""
        if quantize not in QUANTIZE:
            raise InvalidInputError(f"quantize must be None, 'int8' or 'int8-weight-only', got {quantize!r}")
        device = torch.device(device) if device is not None else default_device()
        if quantize is not None and not (int8_available() or quantize == "int8" and dynamic_int8_available(device)):
            raise InvalidInputError(f"quantize={quantize!r} needs torch._weight_int8pack_mm "
                                    f"(torch {torch.__version__})")
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        folder = resolve(name_or_path, revision)
        cfg = MusicGenConfig.from_folder(folder)
        tokenizer = TextTokenizer(folder)
        if cfg.melody is not None:  # the text joins the prefix: keep [chroma | text | one window] within positions
            room = cfg.lm.max_positions - cfg.melody.chroma_length - round(WINDOW * cfg.frame_rate) - max(cfg.lm.delays)
            tokenizer.max_tokens = min(tokenizer.max_tokens, room)
        ckpt = Checkpoint(weights_folder(folder))  # pytorch_model*.bin: its safetensors copy, converted once
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
               progress: Progress | None = None) -> torch.Tensor:
        """tokens [B, K, T] -> audio [B, C, T * 640] float32 in [-1, 1] on the CPU. decoder "mbd": multi-band
        diffusion (stereo: left and right as two mono items), reproducible with `seed`, `progress(step,
        total)` after every diffusion model call."""
        tokens = self._check_tokens(tokens)
        self._check_decoder(decoder)
        C = self.audio_channels
        codes = rearrange(tokens.to(self.device), "b (q c) t -> (b c) q t", c=C)  # stereo: L0 R0 L1 R1 ...
        if decoder == "mbd":
            generator = torch.Generator().manual_seed(self._check_seed(seed))  # MBD draws its noise on the CPU
            audio = self.mbd.decode(codes, self.codec, generator, progress)
        elif tokens.shape[-1] > (chunk := max(DECODE_CHUNK // codes.shape[0], 16)) and self.can_stream:
            return self._decode_chunked(tokens, chunk)
        else:
            audio = self.codec.decode(codes)
        return rearrange(audio, "(b c) 1 s -> b c s", c=C).clamp(-1.0, 1.0).float().cpu()

    def _decode_chunked(self, tokens: torch.Tensor, chunk: int) -> torch.Tensor:
        """EnCodec decode `chunk` frames at a time with the exact streaming decoder (equal to one pass up to
        float rounding): memory stays that of one chunk however long the piece."""
        T = tokens.shape[-1]
        dec = StreamDecoder(self, T)
        audio = torch.cat([dec.push(tokens[..., : min(end, T)]) for end in range(chunk, T + chunk, chunk)], dim=-1)
        release_free_memory()  # glibc keeps the chunks' freed buffers otherwise (~0.25 GB)
        return audio

    def generate(
        self,
        prompts: str | Sequence[str],
        duration: float,
        *,
        top_k: int = 250,
        top_p: float = 0.0,
        temperature: float = 1.0,
        cfg_coef: float = 3.0,
        seed: int | None = None,
        progress: Progress | None = None,
        melody: tuple[object, int] | None = None,
        extend_stride: float = EXTEND_STRIDE,
        decoder: str = "encodec",
    ) -> GenerationOutput:
        """Generate `duration` seconds (up to 300) of music for each prompt ("" = unconditional).

        temperature 0 is greedy; top_p > 0 overrides top_k; `seed` makes the result reproducible (the
        seed used is returned either way); `progress(step, total)` is called after every decode step.
        `melody=(wave, sample_rate)` (melody checkpoints only): a tensor or numpy array [S], [C, S] or
        [B, C, S] (one tune for every prompt, or one per prompt), any rate and channel count. Beyond 30 s
        the piece is made window by window, each new 30 s window prompted with the last
        30 - extend_stride seconds of the previous one. decoder="mbd": the tokens become audio through
        multi-band diffusion (`out.audio_encodec` keeps the EnCodec version; progress covers both stages)."""
        return self._finish(self.stream(prompts, duration, top_k=top_k, top_p=top_p, temperature=temperature,
                                         cfg_coef=cfg_coef, seed=seed, melody=melody, extend_stride=extend_stride,
                                         decoder=decoder, progress=progress), progress)

    def generate_continuation(
        self,
        prompt_audio: object,
        prompt_sample_rate: int,
        prompts: str | Sequence[str],
        duration: float,
        *,
        top_k: int = 250,
        top_p: float = 0.0,
        temperature: float = 1.0,
        cfg_coef: float = 3.0,
        seed: int | None = None,
        progress: Progress | None = None,
        melody: tuple[object, int] | None = None,
        extend_stride: float = EXTEND_STRIDE,
        decoder: str = "encodec",
    ) -> GenerationOutput:
        """Continue `prompt_audio` ([S], [C, S] or [B, C, S], any rate, shorter than 30 s): it is encoded
        with EnCodec and the music goes on from it. The output holds the (re-encoded) prompt followed by
        the continuation; `duration` counts the whole result."""
        return self._finish(self.stream(prompts, duration, top_k=top_k, top_p=top_p, temperature=temperature,
                                         cfg_coef=cfg_coef, seed=seed, melody=melody, extend_stride=extend_stride,
                                         continue_from=(prompt_audio, prompt_sample_rate), decoder=decoder,
                                         progress=progress), progress)

    def stream(
        self,
        prompts: str | Sequence[str],
        duration: float,
        *,
        top_k: int = 250,
        top_p: float = 0.0,
        temperature: float = 1.0,
        cfg_coef: float = 3.0,
        seed: int | None = None,
        melody: tuple[object, int] | None = None,
        extend_stride: float = EXTEND_STRIDE,
        continue_from: tuple[object, int] | None = None,
        decoder: str = "encodec",
        progress: Progress | None = None,
        decode: bool = True,
    ) -> Iterator[StreamStep | GenerationOutput]:
        """`generate` (or, with `continue_from=(wave, sample_rate)`, `generate_continuation`) as an
        iterator: a `StreamStep` after every decode step with the frames of the piece complete so far,
        then the `GenerationOutput`. Everything is validated at the first `next()`; stop iterating to
        cancel. With decoder="mbd" the diffusion steps are reported through `progress(step, total)` (the
        totals of the StreamSteps include them). decode=False skips the final EnCodec decode (the output's
        `audio`, or with "mbd" its `audio_encodec`, is then None), for callers that decode the StreamSteps as
        they come (streaming.StreamDecoder)."""
        prompts = self._check_prompts(prompts)
        frames = self._check_duration(duration)
        params = self._check_sampling(top_k, top_p, temperature, cfg_coef)
        seed = self._check_seed(seed)
        self._check_decoder(decoder)
        B, hop = len(prompts), self.cfg.codec.hop_length
        wave = self._melody_wave(melody, B, frames / self.frame_rate)
        head = None
        if continue_from is not None:
            if not isinstance(continue_from, (tuple, list)) or len(continue_from) != 2:
                raise InvalidInputError("continue_from must be a (wave, sample_rate) pair")
            audio = prepare_prompt_audio(continue_from[0], continue_from[1], B, self.audio_channels,
                                         self.sample_rate, WINDOW)
            if frames_of(audio.shape[-1], hop) >= frames:
                raise InvalidInputError(f"duration {duration} s must be longer than the prompt audio "
                                        f"({audio.shape[-1] / self.sample_rate:.2f} s)")
        if not isinstance(extend_stride, (int, float)) or not 0 < extend_stride <= WINDOW:
            raise InvalidInputError(f"extend_stride must be in (0, {WINDOW:g}] seconds, got {extend_stride!r}")
        if continue_from is not None:
            codes = self.codec.encode(audio.to(self.device))  # [B * C, Q, T]
            head = rearrange(codes, "(b c) q t -> b (q c) t", b=B)  # stereo: L0 R0 L1 R1 ...
        window, stride = round(WINDOW * self.frame_rate), round(extend_stride * self.frame_rate)
        plan = plan_windows(frames, window, stride, 0 if head is None else head.shape[-1])
        generator = torch.Generator(self.device).manual_seed(seed)
        text, mask = self.encode_text(prompts)
        delays, maxd = self.cfg.lm.delays, max(self.cfg.lm.delays)
        lm_total = sum(w.new + maxd for w in plan)
        mbd = self.mbd if decoder == "mbd" else None  # fetched before the long part, so a download error is early
        total = lm_total + (mbd.total_steps if mbd is not None else 0)
        piece = head if head is not None else torch.zeros(B, self.num_codebooks, 0, dtype=torch.long,
                                                          device=self.device)
        done = 0
        for w in plan:
            prompt = piece[..., w.offset : w.offset + w.prompt] if w.prompt else None
            chroma = self._window_chroma(wave, B, w, len(plan) > 1)
            seq = None
            for step, _, seq in iter_steps(self.lm, text, mask, w.frames, params, generator, chroma,
                                           self.step_fn, prompt):
                n = complete_frames(step, delays, w.frames)
                tokens = torch.cat([piece, undelay(seq, delays, n)[..., w.prompt :]], dim=-1)
                yield StreamStep(done + step - w.prompt, total, tokens.cpu())
            assert seq is not None
            piece = torch.cat([piece, undelay(seq, delays, w.frames)[..., w.prompt :]], dim=-1)
            done += w.new + maxd
        del seq
        release_free_memory()  # the KV cache's pages go back to the OS before the decoder needs its own
        audio = self.decode(piece) if decode else None
        if mbd is None:
            yield GenerationOutput(audio, piece.cpu(), self.sample_rate, seed)
            return
        tick = (lambda s, _: progress(lm_total + s, total)) if progress is not None else None
        yield GenerationOutput(self.decode(piece, "mbd", seed=seed, progress=tick), piece.cpu(), self.sample_rate,
                               seed, audio_encodec=audio)

    @staticmethod
    def _finish(events: Iterator[StreamStep | GenerationOutput], progress: Progress | None) -> GenerationOutput:
        for event in events:
            if isinstance(event, GenerationOutput):
                return event
            if progress is not None:
                progress(event.step, event.total)
        raise AssertionError("stream ended without an output")

    def _melody_wave(self, melody: tuple[object, int] | None, batch: int, seconds: float) -> torch.Tensor | None:
        """The user's melody as mono audio at the model rate [N, S] (what the piece needs of it), or None."""
        if self.chroma is None:
            if melody is not None:
                raise InvalidInputError(f"{self.name or 'this checkpoint'} has no melody conditioning: use a melody "
                                        "checkpoint such as facebook/musicgen-melody")
            return None
        if melody is None:
            return None
        if not isinstance(melody, (tuple, list)) or len(melody) != 2:
            raise InvalidInputError("melody must be a (wave, sample_rate) pair")
        return self.chroma.prepare(melody[0], melody[1], batch, max(seconds, self.chroma.cfg.max_seconds))

    def _window_chroma(self, wave: torch.Tensor | None, batch: int, w: Window, windowed: bool) -> torch.Tensor | None:
        """One-hot chroma [B, chroma_length, 12] for window `w` (None for text-only checkpoints). In a
        multi-window piece the melody is looped over the whole piece and each window gets its own span."""
        if self.chroma is None:
            return None
        if wave is None:
            return self.chroma.null(batch).to(self.device)
        if windowed:
            rate = self.chroma.cfg.sample_rate
            start = round(w.offset / self.frame_rate * rate)
            wave = loop_audio(wave, start, round(WINDOW * rate))
        return self.chroma.prefix(wave, batch).to(self.device)

    # ---------------------------------------------------------------- validation
    @staticmethod
    def _check_prompts(prompts: str | Sequence[str]) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence) or len(prompts) == 0:
            raise InvalidInputError("prompts must be a non-empty list of strings")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise InvalidInputError(f"prompt {i} is a {type(p).__name__}, not a string")
        return list(prompts)

    @staticmethod
    def _check_decoder(decoder: str) -> None:
        if decoder not in DECODERS:
            raise InvalidInputError(f"decoder must be one of {DECODERS}, got {decoder!r}")

    @staticmethod
    def _check_seed(seed: int | None) -> int:
        if seed is None:
            return secrets.randbits(63)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise InvalidInputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        return seed

    def _check_duration(self, duration: float) -> int:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
            raise InvalidInputError(f"duration must be a finite number of seconds, got {duration!r}")
        if duration <= 0:
            raise InvalidInputError(f"duration must be positive, got {duration}")
        if duration > self.max_duration:
            raise InvalidInputError(f"duration {duration} s is beyond the {self.max_duration:g} s limit")
        frames = round(duration * self.frame_rate)
        if frames < 1:
            raise InvalidInputError(f"duration {duration} s is shorter than one frame ({1 / self.frame_rate} s)")
        return frames

    @staticmethod
    def _check_sampling(top_k: int, top_p: float, temperature: float, cfg_coef: float) -> SamplingParams:
        def number(name: str, v: object) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidInputError(f"{name} must be a finite number, got {v!r}")
            return float(v)

        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise InvalidInputError(f"top_k must be a non-negative integer (0 = off), got {top_k!r}")
        if not 0.0 <= number("top_p", top_p) <= 1.0:
            raise InvalidInputError(f"top_p must be in [0, 1] (0 = off), got {top_p}")
        if number("temperature", temperature) < 0:
            raise InvalidInputError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if number("cfg_coef", cfg_coef) < 0:
            raise InvalidInputError(f"cfg_coef must be >= 0, got {cfg_coef}")
        return SamplingParams(top_k, float(top_p), float(temperature), float(cfg_coef))

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
            raise InvalidInputError("tokens must be a tensor of shape [B, K, T]")
        if tokens.shape[1] != self.num_codebooks:
            raise InvalidInputError(f"tokens have {tokens.shape[1]} codebooks, this model uses {self.num_codebooks}")
        if tokens.is_floating_point() or tokens.is_complex():
            raise InvalidInputError("tokens must be integers")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.codec.codebook_size):
            raise InvalidInputError(f"tokens must be in [0, {self.cfg.codec.codebook_size})")
        if tokens.shape[-1] == 0:
            raise InvalidInputError("tokens have no frames")
        return tokens.long()
