"""musicgen/loudness.py: audio_write's level normalisation, compared with audiocraft 1.3.0's own
`normalize_audio` (audiocraft/data/audio_utils.py, imported by tests/helpers/audiocraft_oracle.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import audiocraft_oracle as oracle

from musicgen import InvalidInputError, dsp, loudness

RATE = 32_000
needs_oracle = pytest.mark.skipif(not oracle.available(), reason=oracle.SKIP_REASON)


def signal(kind: str, channels: int, seconds: float = 3.0, amplitude: float = 0.3) -> torch.Tensor:
    """[channels, S] float32: "noise" (uniform, seeded) or "sine" (a different pitch and level per channel)."""
    n = int(seconds * RATE)
    if kind == "noise":
        g = torch.Generator().manual_seed(1234 + channels)
        return amplitude * (2 * torch.rand(channels, n, generator=g) - 1)
    t = torch.arange(n) / RATE
    return torch.stack([amplitude / (c + 1) * torch.sin(2 * math.pi * 220 * (c + 1.5) * t) for c in range(channels)])


def music(seconds: float = 8.0) -> torch.Tensor:
    """Something music-like, mono: a I-V-vi-IV progression of decaying triads (harmonics 1-4) over a kick on
    every beat and noise hats on the off-beats (120 bpm), at a modest level."""
    n, beat = int(seconds * RATE), RATE // 2
    t = torch.arange(n) / RATE
    out = torch.zeros(n)
    chords = ((261.63, 329.63, 392.0), (196.0, 246.94, 293.66), (220.0, 261.63, 329.63), (174.61, 220.0, 261.63))
    for bar, start in enumerate(range(0, n, 4 * beat)):
        seg = slice(start, min(n, start + 4 * beat))
        local = t[seg] - t[start]
        for f in chords[bar % 4]:
            for h in range(1, 5):
                out[seg] += 0.05 / h * torch.sin(2 * math.pi * f * h * local) * torch.exp(-local / 1.5)
    g = torch.Generator().manual_seed(7)
    for start in range(0, n, beat):
        local = t[start : start + beat] - t[start]
        out[start : start + beat] += 0.15 * torch.sin(2 * math.pi * 55 * local) * torch.exp(-local / 0.08)
        hat = slice(start + beat // 2, min(n, start + beat // 2 + 1600))
        out[hat] += 0.05 * (2 * torch.rand(hat.stop - hat.start, generator=g) - 1)
    return (0.25 * out)[None]


# ------------------------------------------------------------------------------------------- against audiocraft
CASES = [
    {},
    {"loudness_compressor": False},
    {"normalize": False},
    {"peak_clip_headroom_db": 3.0, "rms_headroom_db": 10.0, "loudness_headroom_db": 9.0},  # clips under rms/loudness
]


@needs_oracle
@pytest.mark.parametrize("strategy", loudness.STRATEGIES)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("kind", ["noise", "sine"])
def test_equals_audiocraft_normalize_audio(strategy: str, channels: int, kind: str) -> None:
    reference = oracle.audio_utils().normalize_audio
    for amplitude in (0.3, 0.9):
        wav = signal(kind, channels, amplitude=amplitude)
        for kwargs in CASES:
            ours = loudness.normalize(wav, RATE, strategy, **kwargs)
            options = {"loudness_headroom_db": loudness.LOUDNESS_HEADROOM_DB,
                       "loudness_compressor": loudness.LOUDNESS_COMPRESSOR, **kwargs}
            theirs = reference(wav.clone(), strategy=strategy, sample_rate=RATE, **options)
            assert ours.dtype == torch.float32 and ours.shape == wav.shape
            assert torch.allclose(ours, theirs, rtol=0, atol=1e-5), (amplitude, kwargs)


@needs_oracle
def test_defaults_are_the_demos() -> None:
    """Our defaults are audiocraft's audio_write defaults with the demo's loudness settings (-16 LUFS, tanh)."""
    wav = music()
    theirs = oracle.audio_utils().normalize_audio(wav.clone(), strategy="loudness", loudness_headroom_db=16,
                                                  loudness_compressor=True, sample_rate=RATE)
    assert loudness.DEFAULT_STRATEGY == "loudness"
    assert torch.allclose(loudness.normalize(wav, RATE), theirs, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------- levels
def test_loudness_reaches_minus_16_lufs() -> None:
    wav = music()
    before = dsp.loudness(wav, RATE)
    out = loudness.normalize(wav, RATE)  # -16 LUFS, tanh compressor
    plain = loudness.normalize(wav, RATE, loudness_compressor=False)
    assert abs(before + 16) > 3  # it did have to move
    assert abs(dsp.loudness(out, RATE) + 16) < 1.0
    assert abs(dsp.loudness(plain, RATE) + 16) < 0.05  # exact but for the few kick peaks clipped at +-1
    assert float(out.abs().max()) <= 1.0


@pytest.mark.parametrize("strategy", ["peak", "rms", "loudness"])
def test_stereo_image_is_kept(strategy: str) -> None:
    """One gain for both channels: each channel's level changes by the same factor (no compressor; headroom
    enough that nothing reaches the final clip at +-1)."""
    wav = torch.cat([music(), 0.4 * music().roll(1000, -1)])
    out = loudness.normalize(wav, RATE, strategy, loudness_compressor=False, rms_headroom_db=24,
                             loudness_headroom_db=24)
    assert float(out.abs().max()) < 0.99
    gains = out.pow(2).mean(-1).sqrt() / wav.pow(2).mean(-1).sqrt()
    assert abs(float(gains[0] / gains[1]) - 1) < 1e-5
    assert abs(float(gains[0]) - 1) > 0.01  # it was scaled


def test_peak_and_rms_levels() -> None:
    wav = signal("noise", 2)
    assert abs(float(loudness.normalize(wav, RATE, "peak").abs().max()) - 10 ** (-1 / 20)) < 1e-6
    rms = loudness.normalize(wav, RATE, "rms").mean(0).pow(2).mean().sqrt()
    assert abs(float(rms) - 10 ** (-18 / 20)) < 1e-6
    assert float(loudness.normalize(4 * wav, RATE, "clip").abs().max()) == pytest.approx(10 ** (-1 / 20))


# ------------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("strategy", loudness.STRATEGIES)
@pytest.mark.parametrize("channels", [1, 2])
def test_silence_stays_silent_and_finite(strategy: str, channels: int) -> None:
    """audiocraft returns NaN for silence under "peak" and "rms" (a gain of 1 / 0); we leave it unchanged, as
    audiocraft's own loudness branch does below its energy floor."""
    for wav in (np.zeros((channels, RATE), np.float32), np.full((channels, RATE), 1e-40, np.float32)):
        out = loudness.normalize(wav, RATE, strategy)
        assert np.isfinite(out).all() and np.abs(out).max() <= 1e-39
    antiphase = np.stack([np.ones(RATE), -np.ones(RATE)]).astype(np.float32) * 0.5  # its mono mean is silent
    assert np.array_equal(loudness.normalize(antiphase, RATE, "rms"), antiphase)


def test_too_short_to_measure_is_left_alone() -> None:
    """Shorter than one 400 ms BS.1770 block: torchaudio cannot measure it (audiocraft fails)."""
    wav = signal("sine", 2, seconds=0.2)
    assert math.isnan(dsp.loudness(wav, RATE))
    assert torch.equal(loudness.normalize(wav, RATE), wav)


def test_types_shapes_and_the_input_kept() -> None:
    wav = signal("noise", 2).numpy().astype(np.float64)
    kept = wav.copy()
    for strategy in loudness.STRATEGIES:
        out = loudness.normalize(wav, RATE, strategy)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == wav.shape
        assert not np.shares_memory(out, wav)
    assert np.array_equal(wav, kept)
    mono = signal("sine", 1)[0]
    out = loudness.normalize(mono, RATE, "peak")
    assert isinstance(out, torch.Tensor) and out.shape == mono.shape
    assert torch.allclose(out, loudness.normalize(mono[None], RATE, "peak")[0])
    assert loudness.normalize(mono, RATE, "none").data_ptr() != mono.data_ptr()


def test_bad_input_is_refused() -> None:
    wav = signal("sine", 1)
    with pytest.raises(InvalidInputError, match="unknown loudness strategy 'lufs': choose one of loudness, peak"):
        loudness.normalize(wav, RATE, "lufs")
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        loudness.normalize(torch.full((1, RATE), math.nan), RATE, "peak")
    with pytest.raises(InvalidInputError, match="must be float"):
        loudness.normalize(np.zeros((1, RATE), np.int16), RATE)
    with pytest.raises(InvalidInputError, match="channels, samples"):
        loudness.normalize(np.zeros((1, 1, 10), np.float32), RATE)
    with pytest.raises(InvalidInputError, match="1 to 5 channels"):
        dsp.loudness(torch.zeros(6, RATE), RATE)
