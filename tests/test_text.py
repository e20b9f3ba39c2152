"""T5 encoder and tokenizer against transformers."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS
from transformers import AutoTokenizer

from musicgen import MusicGen


def test_tokenizer_matches_transformers(mg: MusicGen, checkpoints, layout: str) -> None:
    hf = AutoTokenizer.from_pretrained(checkpoints[layout][1])
    ref = hf(PROMPTS, padding=True, return_tensors="pt")
    ids, mask = mg.tokenizer(PROMPTS)
    assert torch.equal(ids, ref.input_ids)
    assert torch.equal(mask, ref.attention_mask.bool())
    assert ids[0, -1].item() == hf.eos_token_id  # the longer prompt ends with </s>
    assert not mask[1, -1]  # the shorter one is padded


def test_t5_hidden_states_match(mg: MusicGen, ref) -> None:
    ids, mask = mg.tokenizer(PROMPTS)
    with torch.no_grad():
        want = ref.text_encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    got, _ = mg.encode_text(PROMPTS)
    m = mask[..., None]
    torch.testing.assert_close(got * m, want * m, rtol=1e-5, atol=1e-5)
    assert want.abs().max() > 0.5  # not a degenerate all-zero encoder


def test_empty_prompt_is_the_null_condition(small: MusicGen) -> None:
    ids, mask = small.tokenizer(["", "a song"])
    assert not mask[0].any() and mask[1].any()


def test_long_prompt_is_truncated_with_a_warning(small: MusicGen) -> None:
    words = " ".join(["piano drums bass guitar"] * 400)
    with pytest.warns(UserWarning, match="keeping the first 512"):
        ids, mask = small.tokenizer([words, "short"])
    assert ids.shape[1] == 512
    assert ids[0, -1].item() == small.tokenizer.tok.token_to_id("</s>")


def test_whitespace_is_normalised(small: MusicGen) -> None:
    ids, mask = small.tokenizer(["  lofi   hip hop\tbeat \n", "lofi hip hop beat", "   "])
    assert torch.equal(ids[0], ids[1]) and torch.equal(mask[0], mask[1])
    assert not mask[2].any()  # only whitespace: the null condition, like ""
