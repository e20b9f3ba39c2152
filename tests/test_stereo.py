"""Stereo checkpoints: 8 codebooks interleaved per channel (L0, R0, L1, R1, ...), delays [0,0,1,1,2,2,3,3]."""

from __future__ import annotations

import torch
from conftest import PROMPTS, transformers_tokens

from musicgen import MusicGen

FRAMES = 13


def test_stereo_config(stereo_pair: tuple[object, MusicGen]) -> None:
    _, mg = stereo_pair
    assert mg.audio_channels == 2 and mg.num_codebooks == 8
    assert mg.cfg.lm.delays == (0, 0, 1, 1, 2, 2, 3, 3)


def test_stereo_greedy_matches_transformers(stereo_pair: tuple[object, MusicGen]) -> None:
    ref, mg = stereo_pair
    ids, mask = mg.tokenizer(PROMPTS)
    with torch.no_grad():
        want = ref.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, guidance_scale=3.0,
                            max_new_tokens=FRAMES + 3)
    out = mg.generate(PROMPTS, FRAMES / 50, temperature=0, normalize="none")
    assert out.tokens.shape == (2, 8, FRAMES)
    assert out.audio.shape == want.shape == (2, 2, FRAMES * 640)
    torch.testing.assert_close(out.audio, want.clamp(-1, 1), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert torch.equal(out.tokens, transformers_tokens(ref, ids, mask, FRAMES))
    left, right = out.audio[:, 0], out.audio[:, 1]
    assert (left - right).abs().max() > 1e-2  # two different channels, not a copied mono signal
    # each channel is the mono codec applied to that channel's codebooks
    torch.testing.assert_close(left, mg.codec.decode(out.tokens[:, 0::2])[:, 0].clamp(-1, 1))
    torch.testing.assert_close(right, mg.codec.decode(out.tokens[:, 1::2])[:, 0].clamp(-1, 1))
