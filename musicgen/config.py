"""Frozen configuration dataclasses, built from a checkpoint's config.json (transformers layout).

Model variants (mono / stereo, sizes) are read from config.json, never guessed from a repo name.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError

# Model types transformers writes into config.json for the MusicGen family.
TEXT_CONDITIONED = "musicgen"
MELODY_CONDITIONED = "musicgen_melody"
HEAD_DIM = 64  # attention head size of every released MusicGen LM (1024/16, 1536/24, 2048/32)


def _get(d: dict[str, Any], key: str, default: Any = ...) -> Any:
    if key in d and d[key] is not None:
        return d[key]
    if default is ...:
        raise CheckpointError(f"config.json: missing field {key!r}")
    return default


@dataclass(frozen=True)
class T5Config:
    """The T5 encoder that turns prompts into conditioning (t5-base for every released model)."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    num_buckets: int
    max_distance: int
    eps: float
    gated: bool  # "gated-gelu" (T5 v1.1) vs plain "relu" (t5-base)

    @classmethod
    def from_hf_config(cls, d: dict[str, Any]) -> T5Config:
        proj = _get(d, "feed_forward_proj", "relu")
        if proj not in ("relu", "gated-gelu"):
            raise CheckpointError(f"config.json: unsupported T5 feed_forward_proj {proj!r}")
        return cls(
            vocab_size=_get(d, "vocab_size"),
            d_model=_get(d, "d_model"),
            d_kv=_get(d, "d_kv"),
            d_ff=_get(d, "d_ff"),
            num_layers=_get(d, "num_layers"),
            num_heads=_get(d, "num_heads"),
            num_buckets=_get(d, "relative_attention_num_buckets", 32),
            max_distance=_get(d, "relative_attention_max_distance", 128),
            eps=_get(d, "layer_norm_epsilon", 1e-6),
            gated=proj == "gated-gelu",
        )


@dataclass(frozen=True)
class CodecConfig:
    """EnCodec (SEANet encoder / decoder + residual vector quantizer)."""

    sample_rate: int
    channels: int
    dim: int  # latent width = codebook_dim
    num_filters: int
    num_residual_layers: int
    ratios: tuple[int, ...]  # decoder (upsampling) order
    kernel_size: int
    last_kernel_size: int
    residual_kernel_size: int
    dilation_growth_rate: int
    causal: bool
    pad_mode: str
    compress: int
    num_lstm_layers: int
    trim_right_ratio: float
    codebook_size: int
    num_quantizers: int
    conv_shortcut: bool

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @classmethod
    def from_hf_config(cls, d: dict[str, Any]) -> CodecConfig:
        if _get(d, "norm_type", "weight_norm") != "weight_norm":
            raise CheckpointError("config.json: only weight-normed EnCodec is supported (norm_type)")
        if _get(d, "normalize", False):
            raise CheckpointError("config.json: EnCodec with normalize=true is not supported")
        if d.get("chunk_length_s") is not None:
            raise CheckpointError("config.json: chunked EnCodec (chunk_length_s) is not supported")
        codebook_size = _get(d, "codebook_size")
        ratios = tuple(_get(d, "upsampling_ratios"))
        sample_rate = _get(d, "sampling_rate")
        # transformers: num_quantizers = 1000 * max bandwidth // (frame_rate * bits per code)
        frame_rate = math.ceil(sample_rate / math.prod(ratios))
        bits = math.ceil(math.log2(codebook_size))
        num_quantizers = int(1000 * max(_get(d, "target_bandwidths")) // (frame_rate * bits))
        return cls(
            sample_rate=sample_rate,
            channels=_get(d, "audio_channels", 1),
            dim=_get(d, "codebook_dim", None) or _get(d, "hidden_size"),
            num_filters=_get(d, "num_filters"),
            num_residual_layers=_get(d, "num_residual_layers", 1),
            ratios=ratios,
            kernel_size=_get(d, "kernel_size", 7),
            last_kernel_size=_get(d, "last_kernel_size", 7),
            residual_kernel_size=_get(d, "residual_kernel_size", 3),
            dilation_growth_rate=_get(d, "dilation_growth_rate", 2),
            causal=_get(d, "use_causal_conv", False),
            pad_mode=_get(d, "pad_mode", "reflect"),
            compress=_get(d, "compress", 2),
            num_lstm_layers=_get(d, "num_lstm_layers", 2),
            trim_right_ratio=_get(d, "trim_right_ratio", 1.0),
            codebook_size=codebook_size,
            num_quantizers=num_quantizers,
            conv_shortcut=_get(d, "use_conv_shortcut", True),
        )


@dataclass(frozen=True)
class LMConfig:
    """The autoregressive transformer over codebook tokens."""

    card: int  # codebook size; token id `card` is the special (start / pad) token
    dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    num_codebooks: int
    audio_channels: int
    max_positions: int
    scale_embedding: bool
    cross_attention: bool = True  # text through cross-attention (False: melody models' conditioning prefix)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def delays(self) -> tuple[int, ...]:
        """Delay of each codebook: k for mono; pairs (L_q, R_q) share delay q for stereo."""
        return tuple(k // self.audio_channels for k in range(self.num_codebooks))

    @classmethod
    def from_hf_config(cls, d: dict[str, Any], cross_attention: bool = True) -> LMConfig:
        act = _get(d, "activation_function", "gelu")
        if act != "gelu":
            raise CheckpointError(f"config.json: unsupported decoder activation {act!r}")
        channels = _get(d, "audio_channels", 1)
        if channels not in (1, 2):
            raise CheckpointError(f"config.json: audio_channels must be 1 or 2, got {channels}")
        cfg = cls(
            card=_get(d, "vocab_size"),
            dim=_get(d, "hidden_size"),
            num_layers=_get(d, "num_hidden_layers"),
            num_heads=_get(d, "num_attention_heads"),
            ffn_dim=_get(d, "ffn_dim"),
            num_codebooks=_get(d, "num_codebooks"),
            audio_channels=channels,
            max_positions=_get(d, "max_position_embeddings", 2048),
            scale_embedding=_get(d, "scale_embedding", False),
            cross_attention=cross_attention,
        )
        if cfg.dim % cfg.num_heads:
            raise CheckpointError("config.json: decoder hidden_size is not divisible by num_attention_heads")
        if cfg.head_dim != HEAD_DIM:
            warnings.warn(
                f"config.json: decoder hidden_size {cfg.dim} / num_attention_heads {cfg.num_heads} gives attention "
                f"heads of size {cfg.head_dim}, but every MusicGen model uses {HEAD_DIM}. Early Hub conversions "
                f"wrote a default head count, which loads but generates noise: if this is an official checkpoint, "
                f"set the decoder's num_attention_heads to {cfg.dim // HEAD_DIM} in config.json", stacklevel=2)
        return cfg


@dataclass(frozen=True)
class MelodyConfig:
    """Chroma conditioning of the melody models: config.json's num_chroma / chroma_length and the feature
    extractor's STFT settings (preprocessor_config.json; defaults are transformers' and audiocraft's)."""

    num_chroma: int = 12
    chroma_length: int = 235  # frames of chroma in the prefix: 30 s at 32 kHz / hop 4096, rounded
    sample_rate: int = 32000
    n_fft: int = 16384
    hop_length: int = 4096
    max_seconds: float = 30.0  # melody audio beyond this is not used (feature extractor chunk_length)

    @classmethod
    def from_hf_config(cls, d: dict[str, Any], pre: dict[str, Any]) -> MelodyConfig:
        return cls(
            num_chroma=_get(d, "num_chroma", 12),
            chroma_length=_get(d, "chroma_length", 235),
            sample_rate=_get(pre, "sampling_rate", 32000),
            n_fft=_get(pre, "n_fft", 16384),
            hop_length=_get(pre, "hop_length", 4096),
            max_seconds=_get(pre, "chunk_length", 30),
        )


@dataclass(frozen=True)
class MusicGenConfig:
    text: T5Config
    codec: CodecConfig
    lm: LMConfig
    melody: MelodyConfig | None = None  # set for chroma-conditioned (melody) checkpoints

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    @classmethod
    def from_hf_config(cls, d: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> MusicGenConfig:
        model_type = d.get("model_type")
        if model_type not in (TEXT_CONDITIONED, MELODY_CONDITIONED):
            raise CheckpointError(f"config.json: model_type {model_type!r} is not a MusicGen checkpoint")
        for part in ("text_encoder", "audio_encoder", "decoder"):
            if not isinstance(d.get(part), dict):
                raise CheckpointError(f"config.json: missing section {part!r}")
        melody = model_type == MELODY_CONDITIONED
        cfg = cls(
            text=T5Config.from_hf_config(d["text_encoder"]),
            codec=CodecConfig.from_hf_config(d["audio_encoder"]),
            lm=LMConfig.from_hf_config(d["decoder"], cross_attention=not melody),
            melody=MelodyConfig.from_hf_config(d, preprocessor or {}) if melody else None,
        )
        if cfg.codec.channels != 1:
            raise CheckpointError("config.json: MusicGen needs a mono EnCodec (audio_channels 1)")
        if cfg.lm.num_codebooks != cfg.codec.num_quantizers * cfg.lm.audio_channels:
            raise CheckpointError(
                f"config.json: decoder has {cfg.lm.num_codebooks} codebooks but EnCodec gives "
                f"{cfg.codec.num_quantizers} per channel x {cfg.lm.audio_channels} channel(s)"
            )
        if cfg.lm.card != cfg.codec.codebook_size:
            raise CheckpointError("config.json: decoder vocab_size differs from EnCodec codebook_size")
        return cfg

    @classmethod
    def from_folder(cls, folder: str | Path) -> MusicGenConfig:
        """config.json (+ preprocessor_config.json for melody models) of a checkpoint folder."""
        folder = Path(folder)
        pre = folder / "preprocessor_config.json"
        return cls.from_hf_config(_read_json(folder / "config.json"), _read_json(pre) if pre.is_file() else None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return d
