"""musicgen/config.py: config.json -> frozen configs, and the guards for doubtful real files."""

from __future__ import annotations

import warnings

import pytest

from musicgen.config import HEAD_DIM, LMConfig
from musicgen.errors import CheckpointError


def decoder(hidden: int, heads: int) -> dict:
    return {"vocab_size": 2048, "hidden_size": hidden, "num_hidden_layers": 48, "num_attention_heads": heads,
            "ffn_dim": 4 * hidden, "num_codebooks": 4, "audio_channels": 1}


@pytest.mark.parametrize(("hidden", "heads"), [(1024, 16), (1536, 24), (2048, 32)])
def test_released_shapes_load_quietly(hidden: int, heads: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = LMConfig.from_hf_config(decoder(hidden, heads))
    assert cfg.head_dim == HEAD_DIM


@pytest.mark.parametrize(("hidden", "heads", "fix"), [(1536, 16, 24), (2048, 16, 32)])
def test_a_default_head_count_is_named_with_the_fix(hidden: int, heads: int, fix: int) -> None:
    """Early conversions of medium / large wrote transformers' default 16 heads: it loads, and makes noise."""
    with pytest.warns(UserWarning, match=rf"hidden_size {hidden} / num_attention_heads {heads} .* size "
                                         rf"{hidden // heads}.* num_attention_heads to {fix} "):
        LMConfig.from_hf_config(decoder(hidden, heads))


def test_indivisible_heads_are_an_error() -> None:
    with pytest.raises(CheckpointError, match="not divisible"):
        LMConfig.from_hf_config(decoder(1000, 16))
