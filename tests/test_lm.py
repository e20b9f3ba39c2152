"""The language model and the generation loop against transformers (greedy parity), and sensitivity."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import PROMPTS, transformers_tokens

from musicgen import MusicGen
from musicgen.lm import KVCache
from musicgen.sampling import delay

FRAMES = 14  # > 2K - 2, so transformers applies its delay pattern (see the reference doc's traps)


def test_forward_logits_match(mg: MusicGen, ref) -> None:
    """One teacher-forced forward over a delayed sequence: logits within 1e-4 of transformers."""
    B, K, T = 2, mg.num_codebooks, 9
    codes = torch.randint(0, 2048, (B, K, T), generator=torch.Generator().manual_seed(3))
    seq = delay(codes, mg.cfg.lm.delays, 2048)[:, :, :T]
    ids, mask = mg.tokenizer(PROMPTS)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=seq.reshape(B * K, T)).logits
    text, _ = mg.encode_text(PROMPTS)
    cross = mg.lm.condition(text, mask, guided=False)
    with torch.inference_mode():
        got = mg.lm(seq, 0, KVCache.empty(mg.cfg.lm, B, T, mg.device, torch.float32), cross)
    torch.testing.assert_close(got.reshape(B * K, T, -1), want, rtol=1e-4, atol=1e-4)


def test_incremental_equals_full_forward(small: MusicGen) -> None:
    """Step-by-step decoding with the KV cache gives the logits of one full causal forward."""
    B, K, T = 2, small.num_codebooks, 7
    seq = torch.randint(0, 2049, (B, K, T), generator=torch.Generator().manual_seed(4))
    text, mask = small.encode_text(PROMPTS)
    cross = small.lm.condition(text, mask, guided=False)
    with torch.inference_mode():
        full = small.lm(seq, 0, KVCache.empty(small.cfg.lm, B, T, small.device, torch.float32), cross)
        cache = KVCache.empty(small.cfg.lm, B, T, small.device, torch.float32)
        prefix = small.lm(seq[:, :, :3], 0, cache, cross)  # a chunk, then single steps
        steps = [small.lm(seq[:, :, t : t + 1], t, cache, cross) for t in range(3, T)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=2), full, rtol=1e-5, atol=1e-5)


def test_greedy_generation_matches_transformers(mg: MusicGen, ref) -> None:
    ids, mask = mg.tokenizer(PROMPTS)
    with torch.no_grad():
        want = ref.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, guidance_scale=3.0,
                            max_new_tokens=FRAMES + 3, return_dict_in_generate=True)
    seqs = want.sequences  # audio [B, 1, S]; the token ids are recovered from the delayed sequences
    out = mg.generate(PROMPTS, FRAMES / 50, temperature=0, normalize="none")
    assert out.tokens.shape == (2, 4, FRAMES)
    assert out.audio.shape == (2, 1, FRAMES * 640) == seqs.shape
    torch.testing.assert_close(out.audio, seqs.clamp(-1, 1), rtol=1e-4, atol=1e-4)
    # tokens: rerun transformers without decoding and undo its delay pattern
    with torch.no_grad():
        ref_tokens = transformers_tokens(ref, ids, mask, FRAMES)
    assert torch.equal(out.tokens, ref_tokens)
    assert len(set(out.tokens[0, 0].tolist())) > 3  # not a degenerate constant sequence


@pytest.fixture(scope="module")
def greedy(small: MusicGen) -> torch.Tensor:
    return small.generate(PROMPTS, 0.3, temperature=0).tokens


def test_prompt_changes_tokens(small: MusicGen, greedy: torch.Tensor) -> None:
    other = small.generate(["heavy metal with distorted guitars", PROMPTS[1]], 0.3, temperature=0).tokens
    assert not torch.equal(other[0], greedy[0])


def test_cfg_coef_changes_tokens(small: MusicGen, greedy: torch.Tensor) -> None:
    assert not torch.equal(small.generate(PROMPTS, 0.3, temperature=0, cfg_coef=1.0).tokens, greedy)
    assert not torch.equal(small.generate(PROMPTS, 0.3, temperature=0, cfg_coef=6.0).tokens, greedy)


def test_padding_is_masked(small: MusicGen, greedy: torch.Tensor) -> None:
    """A prompt's greedy tokens do not depend on the other prompts in its batch (nor their length)."""
    alone = small.generate([PROMPTS[1]], 0.3, temperature=0).tokens
    assert torch.equal(alone[0], greedy[1])
    with_long = small.generate([PROMPTS[1], PROMPTS[0] * 3], 0.3, temperature=0).tokens
    assert torch.equal(with_long[0], greedy[1])


def test_empty_prompt_is_unconditional(small: MusicGen) -> None:
    """"" is the null condition: with it, cond == uncond, so any cfg_coef gives the same greedy tokens."""
    a = small.generate([""], 0.2, temperature=0, cfg_coef=3.0).tokens
    b = small.generate([""], 0.2, temperature=0, cfg_coef=1.0).tokens
    assert torch.equal(a, b)


def test_seed_reproducible_and_seed_changes_tokens(small: MusicGen) -> None:
    a = small.generate(PROMPTS, 0.3, seed=1234)
    b = small.generate(PROMPTS, 0.3, seed=1234)
    c = small.generate(PROMPTS, 0.3, seed=4321)
    assert a.seed == 1234 and torch.equal(a.tokens, b.tokens) and torch.equal(a.audio, b.audio)
    assert not torch.equal(a.tokens, c.tokens)
    d = small.generate(PROMPTS, 0.3)  # no seed: a fresh one is drawn and reported
    assert torch.equal(small.generate(PROMPTS, 0.3, seed=d.seed).tokens, d.tokens)


def test_sampling_controls_take_effect(small: MusicGen) -> None:
    base = small.generate(PROMPTS, 0.3, seed=7).tokens
    assert not torch.equal(small.generate(PROMPTS, 0.3, seed=7, top_k=1).tokens, base)
    assert torch.equal(small.generate(PROMPTS, 0.3, seed=7, top_k=1).tokens,
                       small.generate(PROMPTS, 0.3, temperature=0).tokens)  # top-1 sampling is greedy
    assert not torch.equal(small.generate(PROMPTS, 0.3, seed=7, top_p=0.5).tokens, base)
    assert not torch.equal(small.generate(PROMPTS, 0.3, seed=7, temperature=0.5).tokens, base)


def test_progress_called_every_step(small: MusicGen) -> None:
    calls: list[tuple[int, int]] = []
    out = small.generate(["a"], 0.1, progress=lambda s, t: calls.append((s, t)))
    frames = out.tokens.shape[-1]
    assert frames == 5
    assert calls == [(s, frames + 3) for s in range(1, frames + 4)]


def test_static_shape_step_matches_eager(small: MusicGen) -> None:
    """The compile-ready step (tensor position, whole-cache masked attention) gives the eager tokens."""
    from musicgen.generate import decode_step

    want = small.generate(PROMPTS, 0.2, temperature=0).tokens
    small.step_fn = decode_step  # the uncompiled static path
    try:
        assert torch.equal(small.generate(PROMPTS, 0.2, temperature=0).tokens, want)
    finally:
        small.step_fn = None


def test_static_shape_step_with_a_melody_prefix(tmp_path_factory) -> None:
    from helpers.melody_checkpoints import build_melody_checkpoint

    from musicgen.generate import decode_step

    _, folder = build_melody_checkpoint(tmp_path_factory.mktemp("mel-static") / "m", seed=3)
    mg = MusicGen.from_pretrained(folder, device="cpu")
    want = mg.generate(PROMPTS, 0.2, temperature=0).tokens
    mg.step_fn = decode_step  # the uncompiled static path
    assert torch.equal(mg.generate(PROMPTS, 0.2, temperature=0).tokens, want)


@pytest.mark.skipif(os.environ.get("MUSICGEN_SLOW_TESTS") != "1", reason="set MUSICGEN_SLOW_TESTS=1 (compiles)")
def test_compiled_step_matches_eager(checkpoints) -> None:
    mg = MusicGen.from_pretrained(checkpoints["current"][1], device="cpu", compile=True)
    eager = MusicGen.from_pretrained(checkpoints["current"][1], device="cpu")
    want = eager.generate(PROMPTS, 0.2, temperature=0).tokens
    assert torch.equal(mg.generate(PROMPTS, 0.2, temperature=0).tokens, want)
