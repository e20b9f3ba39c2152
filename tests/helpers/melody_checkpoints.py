"""Tiny random MusicGen-melody checkpoints (chroma prefix conditioning), built with transformers' Musicgen
Melody classes in the Hub file layouts of `checkpoints.py`, plus the feature extractor's config."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    MusicgenMelodyConfig,
    MusicgenMelodyDecoderConfig,
    MusicgenMelodyFeatureExtractor,
    MusicgenMelodyForConditionalGeneration,
)

from .checkpoints import _generation_kwargs, reinit_weights, save_checkpoint, tiny_config


def tiny_melody_config(audio_channels: int = 1) -> MusicgenMelodyConfig:
    """The tiny text model's T5 and EnCodec, and a 48-wide decoder without cross-attention."""
    base = tiny_config(audio_channels)
    decoder = MusicgenMelodyDecoderConfig(**{
        k: getattr(base.decoder, k) for k in (
            "vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "ffn_dim", "num_codebooks", "audio_channels", "activation_function", "dropout", "pad_token_id",
            "bos_token_id")
    })
    return MusicgenMelodyConfig(text_encoder=base.text_encoder, audio_encoder=base.audio_encoder, decoder=decoder,
                                num_chroma=12, chroma_length=235)


def build_melody_model(seed: int = 0, audio_channels: int = 1) -> MusicgenMelodyForConditionalGeneration:
    torch.manual_seed(seed)
    model = MusicgenMelodyForConditionalGeneration(tiny_melody_config(audio_channels)).to(torch.float32).eval()
    reinit_weights(model, seed)
    model.generation_config = GenerationConfig(**_generation_kwargs())
    return model


def build_melody_checkpoint(folder: Path, layout: str = "current", seed: int = 0, audio_channels: int = 1,
                            ) -> tuple[MusicgenMelodyForConditionalGeneration, Path]:
    model = build_melody_model(seed, audio_channels)
    folder = save_checkpoint(model, Path(folder), layout)
    MusicgenMelodyFeatureExtractor().save_pretrained(folder)  # preprocessor_config.json, as the Hub repos have
    return model, folder
