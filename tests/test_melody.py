"""Melody (chroma) conditioning against transformers' MusicgenMelody, and the edge cases of user audio."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from conftest import PROMPTS, transformers_tokens
from transformers import MusicgenMelodyFeatureExtractor

from musicgen import InvalidInputError, MusicGen
from musicgen.lm import KVCache
from musicgen.sampling import delay

SR = 32000
FRAMES = 13


def tone(freqs: list[float], seconds: float, sr: int = SR) -> torch.Tensor:
    """Consecutive sine tones, `seconds` each."""
    t = torch.arange(int(seconds * sr)) / sr
    return torch.cat([0.5 * torch.sin(2 * math.pi * f * t) for f in freqs])


@pytest.fixture(scope="module")
def extractor() -> MusicgenMelodyFeatureExtractor:
    return MusicgenMelodyFeatureExtractor()


def ours_chroma(mg: MusicGen, wave, sr: int) -> torch.Tensor:
    return mg.chroma.chroma(mg.chroma.prepare(wave, sr, 1))


@pytest.mark.parametrize("seconds", [0.4, 3.0, 6.0, 31.0])
def test_chroma_identical_to_the_feature_extractor(mel: MusicGen, extractor, seconds: float) -> None:
    g = torch.Generator().manual_seed(int(seconds * 10))
    wave = tone([220.0, 330.0, 392.0], seconds / 3) + 0.05 * torch.randn(3 * int(seconds / 3 * SR), generator=g)
    want = extractor(wave.numpy(), sampling_rate=SR, return_tensors="pt").input_features
    got = ours_chroma(mel, wave, SR)
    assert got.shape == want.shape
    assert torch.equal(got, want)


def test_chroma_identical_after_resampling_and_downmix(mel: MusicGen, extractor) -> None:
    sr = 44100
    t = torch.arange(int(2.5 * sr)) / sr
    stereo = torch.stack([torch.sin(2 * math.pi * 261.6 * t), 0.5 * torch.sin(2 * math.pi * 440 * t)])
    want = extractor(stereo.mean(0), sampling_rate=sr, return_tensors="pt").input_features  # (numpy breaks it)
    assert torch.equal(ours_chroma(mel, stereo, sr), want)


def test_sine_tones_give_their_pitch_classes(mel: MusicGen) -> None:
    """A4, C5, E5 for 2 s each: the chroma argmax is A (9), C (0), E (4), in that order."""
    chroma = ours_chroma(mel, tone([440.0, 523.25, 659.26], 2.0), SR)[0]  # [F, 12], hop 4096 = 0.128 s
    bins = chroma.argmax(-1)
    frame = 4096 / SR
    for i, want in enumerate((9, 0, 4)):
        inner = bins[int((2 * i + 0.5) / frame) : int((2 * i + 1.5) / frame)]  # away from the tone changes
        assert (inner == want).all(), (i, inner)


def test_forward_logits_match(melody_models, extractor) -> None:
    ref, mg = melody_models["hub"]
    wave = tone([440.0, 523.25], 1.5)
    chroma = extractor(wave.numpy(), sampling_rate=SR, return_tensors="pt").input_features.repeat(2, 1, 1)
    prompts = ["lofi hip hop", "heavy metal."]  # same token length: transformers does not mask text padding
    ids, mask = mg.tokenizer(prompts)
    assert mask.all()
    B, K, T = 2, mg.num_codebooks, 8
    codes = torch.randint(0, 2048, (B, K, T), generator=torch.Generator().manual_seed(0))
    seq = delay(codes, mg.cfg.lm.delays, 2048)[:, :, :T]
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask.long(), input_features=chroma,
                   decoder_input_ids=seq.reshape(B * K, T)).logits
    text, _ = mg.encode_text(prompts)
    with torch.inference_mode():
        cond = mg.lm.condition(text, mask, guided=False, chroma=mg.chroma.condition(chroma))
        cache = KVCache.empty(mg.cfg.lm, B, cond.prefix_len + T, mg.device, torch.float32)
        mg.lm.prefill(cond, cache)
        got = mg.lm(seq, cond.prefix_len, cache, cond)
    torch.testing.assert_close(got.reshape(B * K, T, -1), want.reshape(B * K, -1, want.shape[-1])[:, -T:],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["current", "hub", "stereo"])
def test_greedy_generation_matches_transformers(melody_models, extractor, name: str) -> None:
    ref, mg = melody_models[name]
    wave = tone([440.0, 523.25, 659.26], 1.0)
    feats = extractor(wave.numpy(), sampling_rate=SR, return_tensors="pt").input_features
    ids, mask = mg.tokenizer([PROMPTS[0]])
    # first make sure transformers' generate really uses the chroma (some releases ignored it)
    with torch.no_grad():
        a = transformers_tokens(ref, ids, mask, FRAMES, input_features=feats)
        b = transformers_tokens(ref, ids, mask, FRAMES, input_features=torch.roll(feats, 5, dims=-1))
    assert not torch.equal(a, b), "transformers' melody generate ignores input_features"
    out = mg.generate([PROMPTS[0]], FRAMES / 50, temperature=0, melody=(wave, SR), separate_melody=False)
    assert torch.equal(out.tokens, a)
    assert out.audio.shape == (1, mg.audio_channels, FRAMES * 640)


def test_no_melody_is_the_null_melody(melody_models) -> None:
    ref, mg = melody_models["current"]
    ids, mask = mg.tokenizer([PROMPTS[1]])
    with torch.no_grad():
        want = transformers_tokens(ref, ids, mask, FRAMES)  # transformers' default: one-hot bin 0
    assert torch.equal(mg.generate([PROMPTS[1]], FRAMES / 50, temperature=0).tokens, want)


def test_melody_changes_tokens_and_seed_repeats(mel: MusicGen) -> None:
    a = mel.generate(["jazz"], 0.3, seed=3, melody=(tone([440.0], 2.0), SR)).tokens
    b = mel.generate(["jazz"], 0.3, seed=3, melody=(tone([440.0], 2.0), SR)).tokens
    c = mel.generate(["jazz"], 0.3, seed=3, melody=(tone([311.1], 2.0), SR)).tokens
    greedy = [mel.generate(["jazz"], 0.3, temperature=0, melody=(tone([f], 2.0), SR)).tokens for f in (440.0, 311.1)]
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(*greedy)


def test_batch_independence_and_one_melody_per_prompt(mel: MusicGen) -> None:
    m1, m2 = tone([440.0], 1.0), tone([349.2], 1.0)
    alone = mel.generate(["80s synthwave"], 0.2, temperature=0, melody=(m2, SR)).tokens
    batch = mel.generate(["a much longer prompt about lofi hip hop beats", "80s synthwave"], 0.2, temperature=0,
                         melody=(torch.stack([m1, m2])[:, None], SR)).tokens
    assert torch.equal(batch[1], alone[0])  # text padding is masked and positions count per row


def test_integer_formats_and_channels(mel: MusicGen) -> None:
    wave = tone([440.0, 587.3], 1.0).numpy()
    want = ours_chroma(mel, wave, SR)
    as_int16 = (wave * 32767).astype(np.int16)
    as_uint8 = np.clip(wave * 127 + 128, 0, 255).astype(np.uint8)
    assert torch.equal(ours_chroma(mel, as_int16, SR), want)
    assert torch.equal(ours_chroma(mel, as_uint8, SR), want)
    six = np.tile(wave, (6, 1)).astype(np.float64)
    assert torch.equal(ours_chroma(mel, six, SR), want)
    mel.generate(["a"], 0.1, melody=(as_int16, SR))  # end to end


def test_short_and_very_long_melodies(mel: MusicGen) -> None:
    short = mel.generate(["a"], 0.1, melody=(tone([440.0], 0.2), SR))
    assert short.tokens.shape == (1, 4, 5)
    sr = 8000
    long = np.tile((tone([440.0, 523.25], 1.0, sr).numpy() * 20000).astype(np.int16), 330)  # 11 minutes
    t0 = time.perf_counter()
    chroma = ours_chroma(mel, long, sr)
    assert time.perf_counter() - t0 < 5.0  # only the first 30 s are processed
    assert chroma.shape[1] == 1 + 30 * SR // 4096


@pytest.mark.parametrize(("wave", "sr", "message"), [
    (torch.zeros(SR), SR, "silent"),
    (torch.full((SR,), float("nan")), SR, "NaN"),
    (torch.tensor([0.1, float("inf")]).repeat(SR), SR, "NaN or infinite"),
    (torch.zeros(0), SR, "empty"),
    (torch.ones(2, 3, 4, 5), SR, "shape"),
    (torch.ones(3, 1, SR), SR, "3 melodies for 1 prompts"),
    (torch.ones(SR), 0, "sample rate"),
    ("song.wav", SR, "tensor or numpy"),
])
def test_bad_melodies(mel: MusicGen, wave, sr: int, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        mel.generate(["a"], 0.1, melody=(wave, sr))


def test_melody_on_a_text_only_checkpoint(small: MusicGen) -> None:
    with pytest.raises(InvalidInputError, match="no melody conditioning"):
        small.generate(["a"], 0.1, melody=(tone([440.0], 1.0), SR))
