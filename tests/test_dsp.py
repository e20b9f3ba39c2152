"""musicgen/dsp.py: the torchaudio gateway."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from musicgen import dsp
from musicgen.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]


def test_a_torchaudio_that_cannot_load_names_both_versions(tmp_path: Path) -> None:
    """torchaudio's native library failing to load (a torch/torchaudio pair from different releases) is an
    ImportError at `import musicgen` that names both versions and how to fix it."""
    broken = tmp_path / "torchaudio"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "raise OSError('Could not load this library: libtorchaudio.so: undefined symbol: "
        "torch_exception_get_what_without_backtrace')\n")
    code = "import musicgen"
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: torchaudio ")
    assert f"torch {metadata.version('torch')}" in last and metadata.version("torchaudio") in last
    assert "undefined symbol" in last and "pip install -r requirements.txt" in last


def test_resample_is_identity_at_the_same_rate_and_keeps_a_tone() -> None:
    x = torch.sin(2 * torch.pi * 440 * torch.arange(44_100) / 44_100)[None]
    assert dsp.resample(x, 44_100, 44_100) is x
    y = dsp.resample(x, 44_100, 32_000)
    assert y.shape == (1, 32_000)
    peak = torch.fft.rfft(y[0]).abs().argmax().item()  # 1 Hz bins over one second
    assert peak == 440


def test_power_spectrogram_shape_and_parseval() -> None:
    spec = dsp.power_spectrogram(n_fft=1024, hop_length=256)
    x = torch.randn(2, 8192)
    s = spec(x)
    assert s.shape == (2, 513, 8192 // 256 + 1)
    assert (s >= 0).all()


def test_costly_ratios_are_refused_before_any_memory_is_taken() -> None:
    """44,101 -> 32,000 Hz would need a 1.4-billion-tap kernel (tens of GB): refused with the rates to use,
    for engine callers too (MusicGen.generate(melody=(wave, 44_101)) goes through here)."""
    assert dsp.cheap_ratio(44_100, 32_000) and dsp.cheap_ratio(48_000, 32_000) and dsp.cheap_ratio(176_400, 32_000)
    assert not dsp.cheap_ratio(44_101, 32_000) and not dsp.cheap_ratio(44_056, 32_000)
    assert dsp.sinc_kernel(44_100, 32_000)[0] < dsp.KERNEL_TAPS_MAX
    with pytest.raises(InvalidInputError, match="44,101 Hz does not convert cheaply.*44,100, 48,000"):
        dsp.resample(torch.zeros(1, 44_101), 44_101, 32_000)


def test_melody_at_a_costly_rate_is_refused(mel) -> None:
    wave = torch.sin(torch.arange(44_101) / 10.0)[None]
    with pytest.raises(InvalidInputError, match="does not convert cheaply"):
        mel.generate(["piano"], duration=0.2, melody=(wave, 44_101))
