"""The command line (musicgen/cli.py) as a user runs it: `python -m musicgen ...` in a subprocess from the
repository root, on the tiny test checkpoints."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
SR = 32000


def test_cli_writes_a_16_bit_wav(checkpoints, tmp_path: Path) -> None:
    out = tmp_path / "song.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "musicgen", "lofi hip hop beat", "--duration", "0.5", "--model",
         str(checkpoints["current"][1]), "--seed", "1", "-o", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (32000, 1, 25 * 640, "PCM_16")
    assert "seed 1" in proc.stderr and "real-time factor" in proc.stderr


def test_cli_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "musicgen", "x", "--model", str(tmp_path / "missing")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_cli_help_documents_every_option() -> None:
    proc = subprocess.run([sys.executable, "-m", "musicgen", "--help"], cwd=ROOT, capture_output=True, text=True)
    for flag in ("--duration", "--model", "--seed", "--top-k", "--top-p", "--temperature", "--cfg-coef",
                 "--device", "--dtype", "--revision", "--output", "--melody", "--quantize", "--continue",
                 "--extend-stride", "--decoder"):
        assert flag in proc.stdout


def test_cli_continue(checkpoints, tmp_path: Path) -> None:
    head = tmp_path / "head.wav"
    noise = 0.3 * torch.randn(1, int(0.5 * SR), generator=torch.Generator().manual_seed(0))  # 0.5 s, mono
    sf.write(str(head), noise.T.numpy(), SR)
    out = tmp_path / "out.wav"
    proc = subprocess.run([sys.executable, "-m", "musicgen", "jazz", "--duration", "1", "--model",
                           str(checkpoints["current"][1]), "--continue", str(head), "-o", str(out), "--seed", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sf.info(str(out)).frames == 50 * 640


def test_cli_melody_file(melody_models, tmp_path: Path) -> None:
    _, mg = melody_models["stereo"]
    song = tmp_path / "tune.flac"
    a4 = 0.5 * torch.sin(2 * math.pi * 440.0 * (torch.arange(22050) / 22050))  # 1 s at 22,050 Hz
    sf.write(str(song), np.stack([a4.numpy()] * 2, axis=1), 22050)
    out = tmp_path / "out.wav"
    cmd = [sys.executable, "-m", "musicgen", "jazz", "--duration", "0.3", "--model", mg.name, "--melody", str(song),
           "-o", str(out), "--seed", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sf.info(str(out)).channels == 2
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not audio")
    cmd[cmd.index(str(song))] = str(bad)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "cannot read melody file" in proc.stderr
