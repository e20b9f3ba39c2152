"""The command line (musicgen/cli.py) as a user runs it: `python -m musicgen ...` in a subprocess from the
repository root, on the tiny test checkpoints (or `cli.main(argv)` in this process, where nothing process-wide
is at stake: output formats, loudness, timelines)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen import MusicGen, cli, dsp

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
                 "--extend-stride", "--decoder", "--loudness", "--wav24", "--takes", "--melody-start",
                 "--melody-end", "--continue-start", "--continue-end"):
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
    assert proc.returncode == 2 and "cannot read the melody file bad.wav" in proc.stderr


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """cli.main in this process -> (exit code, stderr)."""
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("name", "fmt", "wav24"), [("a.wav", ("WAV", "PCM_16"), False),
                                                     ("b.WAV", ("WAV", "PCM_24"), True),
                                                     ("c.flac", ("FLAC", "PCM_16"), False),
                                                     ("d.mp3", ("MP3", "MPEG_LAYER_III"), False),
                                                     ("e.ogg", ("OGG", "VORBIS"), False)])
def test_cli_writes_the_format_of_the_extension(checkpoints, tmp_path: Path, capsys, name: str, fmt: tuple,
                                                wav24: bool) -> None:
    out = tmp_path / name
    code, err = run(capsys, "lofi", "--duration", "0.5", "--model", str(checkpoints["current"][1]), "--seed", "1",
                    "-o", str(out), *(["--wav24"] if wav24 else []))
    assert code == 0, err
    info = sf.info(str(out))
    assert (info.format, info.subtype, info.samplerate, info.channels) == (*fmt, SR, 1)
    assert f"wrote {out}" in err


def test_cli_refuses_what_it_cannot_write(checkpoints, tmp_path: Path, capsys) -> None:
    model = str(checkpoints["current"][1])
    code, err = run(capsys, "lofi", "--model", model, "-o", str(tmp_path / "x.aiff"))
    assert code == 2 and "cannot write x.aiff: .aiff files are not written; name it .wav, .flac, .mp3, .ogg" in err
    code, err = run(capsys, "lofi", "--model", model, "-o", str(tmp_path / "x.flac"), "--wav24")
    assert code == 2 and "--wav24 writes 24-bit WAV, but the output x.flac is flac" in err
    code, err = run(capsys, "lofi", "--model", model, "--takes", "5")
    assert code == 2 and "takes must be a whole number from 1 to 4, got 5" in err
    code, err = run(capsys, "lofi", "--model", model, "--melody-start", "2")
    assert code == 2 and "--melody-start / --melody-end trim a file: give it with --melody FILE" in err


def test_output_paths() -> None:
    assert cli.output_paths("out.wav", 1) == [Path("out.wav")]
    assert cli.output_paths("song", 2) == [Path("song-0.wav"), Path("song-1.wav")]
    assert cli.output_paths("d/song.FLAC", 1, 2, "flac") == [Path("d/song-take1.FLAC"), Path("d/song-take2.FLAC")]
    assert cli.output_paths("s.wav", 2, 2, "wav24") == [Path("s-0-take1.wav"), Path("s-0-take2.wav"),
                                                        Path("s-1-take1.wav"), Path("s-1-take2.wav")]


def test_cli_loudness(checkpoints, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written at -16 LUFS by default (audiocraft's demo level); --loudness none writes the decoder's output.
    The tiny model's decoder is turned down first: its own output is noise clipped at full scale, which
    BS.1770 (torchaudio's K-weighting filter clamps at +-1) reads low, as audiocraft does (test_pipeline.py)."""
    load = MusicGen.from_pretrained

    def quiet(*args: object, **kwargs: object) -> MusicGen:
        mg = load(*args, **kwargs)
        with torch.no_grad():
            mg.codec.decoder.layers[-1].conv.weight.mul_(0.05)
            mg.codec.decoder.layers[-1].conv.bias.mul_(0.05)
        return mg

    monkeypatch.setattr(MusicGen, "from_pretrained", quiet)
    common = ["lofi hip hop", "--duration", "2", "--model", str(checkpoints["current"][1]), "--seed", "4"]
    assert run(capsys, *common, "-o", str(tmp_path / "default.wav"))[0] == 0
    assert run(capsys, *common, "--loudness", "none", "-o", str(tmp_path / "none.wav"))[0] == 0
    default, _ = sf.read(str(tmp_path / "default.wav"), dtype="float32", always_2d=True)
    raw, _ = sf.read(str(tmp_path / "none.wav"), dtype="float32", always_2d=True)
    assert abs(dsp.loudness(default.T, SR) + 16) < 1.0
    assert abs(dsp.loudness(raw.T, SR) + 16) > 1.0 and np.abs(default - raw).max() > 0.01


def test_cli_timeline(checkpoints, tmp_path: Path, capsys) -> None:
    model = str(checkpoints["current"][1])
    out = tmp_path / "t.wav"
    code, err = run(capsys, "0:00 lofi beat | 0:00.5 drums", "--duration", "1", "--model", model, "-o", str(out))
    assert code == 0, err
    assert sf.info(str(out)).frames == 50 * 640
    assert "0:00-0:01 'lofi beat'" in err  # the schedule: one window, one prompt
    assert "note: 0:00.5 'drums' is not heard" in err
    code, err = run(capsys, "0:00 lofi | 0:05 drums", "--duration", "1", "--model", model, "-o", str(out))
    assert code == 2 and "0:05 ('drums') is at or beyond the end of the 1 s piece" in err
    code, err = run(capsys, "0:00 lofi | drums", "--model", model, "-o", str(out))
    assert code == 2 and "timeline entry 2 ('drums') does not start with a time" in err


def test_cli_takes(checkpoints, tmp_path: Path) -> None:
    """--takes 3: three seeds from --seed, made together by one serve.Scheduler, three files."""
    proc = subprocess.run([sys.executable, "-m", "musicgen", "jazz", "--duration", "0.5", "--model",
                           str(checkpoints["current"][1]), "--seed", "5", "--takes", "3", "-o",
                           str(tmp_path / "jam.flac")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    audio = []
    for k, seed in ((1, 5), (2, 6), (3, 7)):
        path = tmp_path / f"jam-take{k}.flac"
        assert f"wrote {path} (seed {seed})" in proc.stderr
        audio.append(sf.read(str(path), dtype="float32")[0])
    assert "seed 5, 6, 7;" in proc.stderr
    assert all(a.shape == (25 * 640,) for a in audio)
    assert not np.allclose(audio[0], audio[1]) and not np.allclose(audio[1], audio[2])
    assert not np.allclose(audio[0], audio[2])
