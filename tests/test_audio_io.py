"""musicgen/audio_io.py, the app's audio files: 16-bit WAV, melody and continuation uploads, the picture.

Uploads under hostile files (issue 12): what any accepted upload may cost in memory, and what is refused.

The hostile files are written with soundfile; each load runs in a child process whose peak RSS growth
(VmHWM after minus VmRSS before, with the high-water mark reset) is measured over the load AND what the
engine does next with it: the melody models' ChromaExtractor.prepare (mono at 32 kHz, via dsp.resample) and,
for audio to continue, longform.prepare_prompt_audio for a stereo model (left, right at 32 kHz)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen import InvalidInputError, audio_io, dsp

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
GROWTH_MAX = 100 * MB  # the bound issue 12 asks for: extra memory any upload the 50 MB limit admits may take
REFUSED_EARLY_MAX = 16 * MB  # refused from the header: nothing decoded (the slack is the interpreter's own)

# Runs in a fresh interpreter: imports once, then forks a child per case (so no case reuses memory another
# freed), which warms up the resampler as a running server is, resets VmHWM, loads and prepares.
PROBE = r"""
import json, os, sys
import torch
from musicgen import dsp, audio_io
from musicgen.config import MelodyConfig
from musicgen.errors import InvalidInputError
from musicgen.longform import prepare_prompt_audio
from musicgen.melody import ChromaExtractor

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

def measure(loader, path):
    for rate in (44100, 48000):
        dsp.resample(torch.rand(2, rate // 10), rate, 32000)
    chroma = ChromaExtractor(MelodyConfig())  # the model's, loaded before any upload
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    except OSError:
        pass
    base = status("VmRSS")
    try:
        upload = getattr(audio_io, loader)(path)
        wave, rate = upload
        if loader == "load_melody":  # what the engine does next
            x = chroma.prepare(wave, rate, batch=1)
        else:
            x = prepare_prompt_audio(wave, rate, batch=1, channels=2, target_rate=32000, max_seconds=30.0)
        out = {"shape": list(x.shape), "rate": rate, "notice": getattr(upload, "notice", None)}
    except InvalidInputError as e:
        out = {"error": str(e)}
    out["growth"] = status("VmHWM") - base
    out["retained"] = status("VmRSS") - base
    return out

results = {}
for name, loader, path in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            data = measure(loader, path)
        except BaseException as e:
            data = {"crash": repr(e)}
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(data))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, code = os.waitpid(pid, 0)
    results[name] = json.loads(text) if text else {"crash": f"wait status {code}"}
print(json.dumps(results))
"""


def probe(cases: list[tuple[str, str, Path]], root: Path = ROOT) -> dict[str, dict]:
    """(name, "load_melody" | "load_continuation", path) -> name -> {error | shape, rate, notice; growth,
    retained (RSS still held after), in bytes}."""
    arg = json.dumps([(name, loader, str(path)) for name, loader, path in cases])
    proc = subprocess.run([sys.executable, "-c", PROBE, arg], cwd=root, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(root)}, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def write_blocks(path: Path, rate: int, channels: int, seconds: float, block: Callable[[np.ndarray], np.ndarray],
                 **kwargs: object) -> Path:
    """A file of `seconds` written a second at a time: block(t) -> [frames, channels] for times t."""
    with sf.SoundFile(str(path), "w", rate, channels, **kwargs) as f:
        for start in range(0, int(seconds * rate), rate):
            t = np.arange(start, min(start + rate, int(seconds * rate))) / rate
            f.write(block(t))
    return path


def constant(channels: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: np.full((len(t), channels), 0.25, np.float32)


def tone(channels: int, amplitude: float = 0.3) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: np.repeat((amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[:, None], channels, 1)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    d = tmp_path_factory.mktemp("hostile")
    flac = {"format": "FLAC", "subtype": "PCM_16"}
    files = {  # the file first: 180 KB of FLAC, 650 MB as float32 (655,350 Hz is FLAC's highest rate)
        "flac_8ch_655khz": write_blocks(d / "flac_8ch_655khz.flac", 655_350, 8, 31, constant(8), **flac),
        "wav_64ch_1mhz": write_blocks(d / "wav_64ch_1mhz.wav", 1_000_000, 64, 0.7, constant(64), subtype="PCM_U8"),
        "float_1e30": write_blocks(d / "float_1e30.wav", 44_100, 1, 3, tone(1, 1e30), subtype="FLOAT"),
        "odd_rate": write_blocks(d / "odd_rate.wav", 44_056, 1, 3, tone(1)),
        "stereo_192khz_31s": write_blocks(d / "stereo_192khz_31s.wav", 192_000, 2, 31, tone(2), subtype="FLOAT"),
        "stereo_192khz_29s": write_blocks(d / "stereo_192khz_29s.wav", 192_000, 2, 29.5, tone(2), subtype="FLOAT"),
        "flac_8ch_192khz_31s": write_blocks(d / "flac_8ch_192khz_31s.flac", 192_000, 8, 31, constant(8), **flac),
        "flac_8ch_192khz_29s": write_blocks(d / "flac_8ch_192khz_29s.flac", 192_000, 8, 29.5, constant(8), **flac),
        "stereo_48khz_29s": write_blocks(d / "stereo_48khz_29s.wav", 48_000, 2, 29.5, tone(2), subtype="FLOAT"),
        "stereo_16khz_29s": write_blocks(d / "stereo_16khz_29s.wav", 16_000, 2, 29.5, tone(2), subtype="FLOAT"),
    }
    loaders = {"melody": "load_melody", "continue": "load_continuation"}
    cases = [*REFUSED, *ACCEPTED]
    return probe([(case, loaders[case.split("/")[1]], files[case.split("/")[0]]) for case in cases])


REFUSED = {  # case -> what the message must say (what is allowed)
    "flac_8ch_655khz/melody": "sample rate of 655,350 Hz; this server reads 8,000 - 192,000 Hz",
    "flac_8ch_655khz/continue": "sample rate of 655,350 Hz; this server reads 8,000 - 192,000 Hz",
    "wav_64ch_1mhz/melody": "sample rate of 1,000,000 Hz; this server reads 8,000 - 192,000 Hz",
    "wav_64ch_1mhz/continue": "sample rate of 1,000,000 Hz; this server reads 8,000 - 192,000 Hz",
    "float_1e30/melody": r"samples up to 1e\+30: audio stays within \+-1 .* up to \+-10000",
    "float_1e30/continue": r"samples up to 1e\+30",
    "odd_rate/melody": r"44,056 Hz .* convert it to a common rate \(16,000, 22,050, 44,100",
    "odd_rate/continue": r"44,056 Hz .* convert it to a common rate",
    "stereo_192khz_31s/continue": "31.0 s or more long; it must be shorter than 30 s",
    "flac_8ch_192khz_31s/continue": "31.0 s or more long; it must be shorter than 30 s",
}
ACCEPTED = {  # case -> (rate handed on, shape the engine prepares at 32 kHz, notice or None)
    "stereo_192khz_31s/melody": (32000, (1, 30 * 32000), None),
    "stereo_192khz_29s/continue": (32000, (2, 1, int(29.5 * 32000)), None),
    "flac_8ch_192khz_31s/melody": (32000, (1, 30 * 32000), None),
    "flac_8ch_192khz_29s/continue": (32000, (2, 1, int(29.5 * 32000)), "8 channels: they were mixed to mono"),
    # below 48 kHz torchaudio's resample takes more per sample (16 kHz: ~85 B): converted here in segments too
    "stereo_48khz_29s/continue": (32000, (2, 1, int(29.5 * 32000)), None),
    "stereo_16khz_29s/continue": (32000, (2, 1, int(29.5 * 32000)), None),
}


def test_hostile_files_are_refused_with_what_is_allowed(hostile: dict[str, dict]) -> None:
    import re

    for case, message in REFUSED.items():
        got = hostile[case]
        assert "error" in got and re.search(message, got["error"]), (case, got)
        assert got["growth"] < GROWTH_MAX, (case, got["growth"] / MB)
        if "s or more long" not in message:  # refused before anything is decoded
            assert got["growth"] < REFUSED_EARLY_MAX, (case, got["growth"] / MB)


def test_accepted_uploads_cost_at_most_100_mb(hostile: dict[str, dict]) -> None:
    """Load + the engine's preparation at 32 kHz: the worst accepted uploads (192 kHz stereo float, 8-channel
    FLAC at 192 kHz, 48 and 16 kHz stereo float) stay under the bound."""
    for case, (rate, shape, notice) in ACCEPTED.items():
        got = hostile[case]
        assert "error" not in got and "crash" not in got, (case, got)
        assert got["rate"] == rate and tuple(got["shape"]) == shape, (case, got)
        assert (notice is None and got["notice"] is None) or notice in got["notice"], (case, got)
        assert got["growth"] < GROWTH_MAX, (case, got["growth"] / MB)
    print({case: round(got["growth"] / MB, 1) for case, got in hostile.items()})


# ------------------------------------------------------------------------------------------- normal files
@pytest.mark.parametrize("channels", [1, 2])
def test_normal_files_load_as_before(tmp_path: Path, channels: int) -> None:
    """44.1 kHz WAV, 3 s: the values soundfile reads, at their rate (the engine resamples), downmixed for a
    melody and kept as they are to continue."""
    rng = np.random.default_rng(channels)
    path = tmp_path / "normal.wav"
    sf.write(str(path), (0.5 * rng.standard_normal((3 * 44100, channels))).clip(-1, 1), 44100, subtype="PCM_16")
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    melody = audio_io.load_melody(path)
    assert melody.sample_rate == 44100 and melody.notice is None
    assert np.array_equal(melody.wave, data.mean(axis=1)[None])
    clip = audio_io.load_continuation(path)
    assert clip.sample_rate == 44100 and clip.notice is None and np.array_equal(clip.wave, data.T)
    wave, rate = clip  # unpacks as the engine's clip
    assert wave is clip.wave and rate == 44100 and clip.clip == (clip.wave, 44100)


def test_float_above_full_scale_is_scaled_down_with_a_notice(tmp_path: Path) -> None:
    path = write_blocks(tmp_path / "hot.wav", 44100, 2, 3, tone(2, 2.5), subtype="FLOAT")
    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    up = audio_io.load_continuation(path)
    peak = np.abs(data).max()
    assert up.wave.max() == 1.0 and np.allclose(up.wave, data.T / peak)
    assert up.notice and "peaks at 2.5 (+8.0 dBFS)" in up.notice and "scaled down to a peak of 1.0" in up.notice
    sf.write(str(path), np.full((44100, 1), 1e5, np.float32), 44100, subtype="FLOAT")
    with pytest.raises(InvalidInputError, match=r"samples up to 1e\+05"):
        audio_io.load_melody(path)
    sf.write(str(path), np.full((44100, 1), np.nan, np.float32), 44100, subtype="FLOAT")
    with pytest.raises(InvalidInputError, match="invalid samples"):
        audio_io.load_melody(path)


def test_channels_and_rates_allowed(tmp_path: Path) -> None:
    path = tmp_path / "wide.wav"
    sf.write(str(path), np.full((4800, 9), 0.1, np.float32), 48000)
    with pytest.raises(InvalidInputError, match="has 9 channels; this server reads at most 8"):
        audio_io.load_continuation(path)
    sf.write(str(path), np.full((8000, 1), 0.1, np.float32), 4000)
    with pytest.raises(InvalidInputError, match="4,000 Hz; this server reads 8,000 - 192,000 Hz"):
        audio_io.load_continuation(path)
    for rate in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 37800, 44100, 47250, 48000, 50000, 64000, 88200,
                 96000, 176400, 192000):  # the rates recorders write convert cheaply
        audio_io._check_format(rate, 8, "melody", "x.wav")
    for rate in (44101, 22254, 121792):  # kernels of 1.4 G and 179 M taps; 67 M multiply-adds per second of audio
        with pytest.raises(InvalidInputError, match=f"{rate:,} Hz that does not convert cheaply"):
            audio_io._check_format(rate, 1, "melody", "x.wav")


def test_long_uploads_come_at_the_model_rate(tmp_path: Path) -> None:
    """Beyond NATIVE_SAMPLES_MAX the upload is converted here: what the engine's resample would have made."""
    path = write_blocks(tmp_path / "long.wav", 44100, 2, 8, tone(2), subtype="FLOAT")
    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    assert data.size > audio_io.NATIVE_SAMPLES_MAX
    up = audio_io.load_continuation(path)
    whole = dsp.resample(torch.from_numpy(np.ascontiguousarray(data.T)), 44100, 32000).numpy()
    assert up.sample_rate == 32000 and up.wave.shape == whole.shape == (2, 8 * 32000)
    assert np.abs(up.wave - whole).max() < 1e-5


@pytest.mark.parametrize("rate", [88200, 96000, 192000])
def test_segmented_resample_equals_the_whole(monkeypatch: pytest.MonkeyPatch, rate: int) -> None:
    """Above 48 kHz the upload is converted here, in segments: the same samples as one dsp.resample call."""
    monkeypatch.setattr(audio_io, "SEGMENT_FRAMES", 10_007)  # many segments, and a step not a multiple of orig
    wave = np.random.default_rng(0).uniform(-1, 1, (2, rate + 12345)).astype(np.float32)
    whole = dsp.resample(torch.from_numpy(wave), rate, 32000).numpy()
    parts = audio_io._to_model_rate(wave, rate)
    assert parts.shape == whole.shape and np.abs(parts - whole).max() < 1e-5


# ------------------------------------------------------------------------------------------- trims
@pytest.mark.parametrize("rate", [32000, 44100])
def test_a_trimmed_upload_is_that_part_of_the_file(tmp_path: Path, rate: int) -> None:
    """[start, end) of the file: the same samples as the untrimmed upload's (at the model rate, and at a rate
    handed on as read), both channels kept to continue, mixed to mono for a melody."""
    rng = np.random.default_rng(rate)
    path = tmp_path / "take.wav"
    sf.write(str(path), (0.3 * rng.standard_normal((5 * rate, 2))).astype(np.float32), rate, subtype="FLOAT")
    whole, melody = audio_io.load_continuation(path), audio_io.load_melody(path)
    a, b = round(1.25 * rate), round(3.5 * rate)
    clip = audio_io.load_continuation(path, 1.25, 3.5)
    assert clip.sample_rate == rate and np.array_equal(clip.wave, whole.wave[:, a:b])
    assert np.array_equal(audio_io.load_melody(path, 1.25, 3.5).wave, melody.wave[:, a:b])
    assert np.array_equal(audio_io.load_continuation(path, 1.25, 99).wave, whole.wave[:, a:])  # end clamped
    assert np.array_equal(audio_io.load_melody(path, end=2).wave, melody.wave[:, : 2 * rate])


def test_only_the_trimmed_part_is_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_blocks(tmp_path / "long.flac", 32000, 1, 20, tone(1), format="FLAC", subtype="PCM_16")
    read, seeks = [], []
    original_read, original_seek = sf.SoundFile.read, sf.SoundFile.seek
    monkeypatch.setattr(sf.SoundFile, "read", lambda f, *a, **k: read.append(len(r := original_read(f, *a, **k)))
                        or r)
    monkeypatch.setattr(sf.SoundFile, "seek", lambda f, *a, **k: seeks.append(a) or original_seek(f, *a, **k))
    up = audio_io.load_melody(path, 12.0, 14.5)
    assert up.wave.shape == (1, 80000) and sum(read) == 80000
    assert seeks[0] == (12 * 32000,)  # straight to the start (soundfile's own seeks, tell(), come after)


def test_trim_errors_say_what_to_change(tmp_path: Path) -> None:
    path = tmp_path / "five.wav"
    sf.write(str(path), np.full((5 * 32000, 1), 0.2, np.float32), 32000)
    for load, what in ((audio_io.load_melody, "melody"), (audio_io.load_continuation, "audio to continue")):
        with pytest.raises(InvalidInputError, match=f"the {what}'s start must be a number of seconds, 0 or more, "
                                                    "got -1"):
            load(path, -1)
        with pytest.raises(InvalidInputError, match=rf"the {what}'s end \(2 s\) must come after its start \(3 s\)"):
            load(path, 3, 2)
        with pytest.raises(InvalidInputError, match=rf"the {what}'s end \(3 s\) must come after its start"):
            load(path, 3, 3)
        with pytest.raises(InvalidInputError, match=rf"the {what} is to start at 6 s, but the file five.wav is only "
                                                    r"5.00 s long: choose an earlier start"):
            load(path, 6)
        with pytest.raises(InvalidInputError, match="end must be a number of seconds"):
            load(path, 0, float("nan"))
    with pytest.raises(InvalidInputError, match=r"the melody from 4.8 s to 5.00 s is only 0.20 s long; give at "
                                                "least 0.5 s"):
        audio_io.load_melody(path, 4.8)
    long = tmp_path / "forty.flac"
    sf.write(str(long), np.full(40 * 16000, 0.1, np.float32), 16000)
    with pytest.raises(InvalidInputError, match=r"the audio to continue from 5 s to 36.00 s is 31.0 s or more long"):
        audio_io.load_continuation(long, 5)
    assert audio_io.load_continuation(long, 15).clip[0].shape == (1, 25 * 16000)  # the last 25 s fit the window


def test_ffmpeg_seeks_to_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files libsndfile does not read: ffmpeg is asked for the part only (-ss before -i, -t its length)."""
    fake_ffmpeg(tmp_path, monkeypatch, f'echo "$@" > {tmp_path / "args"}\nexec cat /dev/zero')
    junk = tmp_path / "clip.m4a"
    junk.write_bytes(b"\x00" * 100)
    wave, rate, channels = audio_io._read(junk, "melody", 1.5, 4.0, 30.0, False)
    assert (rate, channels) == (32000, 1) and wave.shape == (1, int(2.5 * 32000))
    args = (tmp_path / "args").read_text().split()
    assert args.index("-ss") < args.index("-i") and args[args.index("-ss") + 1] == "1.5"
    assert args[args.index("-t") + 1] == "2.5"


# ------------------------------------------------------------------------------------------- ffmpeg
def fake_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    script = tmp_path / "bin" / "ffmpeg"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")


def test_ffmpeg_output_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ffmpeg that ignores -t and writes forever: no more than -t's samples are read, then it is killed."""
    fake_ffmpeg(tmp_path, monkeypatch, "exec cat /dev/zero")
    wave, rate = audio_io._decode_with_ffmpeg(tmp_path / "any.m4a", 2.0)
    assert rate == 32000 and wave.shape == (1, 64000)
    fake_ffmpeg(tmp_path, monkeypatch, "exec sleep 30")  # one that hangs: killed after FFMPEG_SECONDS
    monkeypatch.setattr(audio_io, "FFMPEG_SECONDS", 0.5)
    with pytest.raises(ValueError, match="could not decode"):
        audio_io._decode_with_ffmpeg(tmp_path / "any.m4a", 2.0)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_ffmpeg_fallback_decodes(tmp_path: Path) -> None:
    wav = write_blocks(tmp_path / "tone.wav", 44100, 2, 3, tone(2))
    m4a = tmp_path / "tone.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), str(m4a)], check=True, timeout=60)
    up = audio_io.load_continuation(m4a)
    assert up.sample_rate == 32000 and up.wave.shape[0] == 1 and abs(up.wave.shape[1] - 3 * 32000) < 3000
    assert 0.25 < np.abs(up.wave).max() <= 1.0


# ------------------------------------------------------------------------------------------- WAV, uploads
def test_wav_bytes_round_trip() -> None:
    audio = np.stack([np.linspace(-1, 1, 1000), np.zeros(1000)]).astype(np.float32)
    data, sr = sf.read(io.BytesIO(audio_io.wav_bytes(audio, 32000)), dtype="float32", always_2d=True)
    assert sr == 32000 and data.shape == (1000, 2)
    assert np.abs(data.T - audio).max() < 1e-4


def test_melody_files(tmp_path) -> None:
    t = np.arange(32000 * 40) / 32000
    sf.write(str(tmp_path / "long.flac"), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 32000)
    wave, sr = audio_io.load_melody(tmp_path / "long.flac")
    assert sr == 32000 and wave.shape == (1, 30 * 32000)  # only the first 30 s are read
    sf.write(str(tmp_path / "short.wav"), np.full(3000, 0.5, np.float32), 32000)
    with pytest.raises(InvalidInputError, match="only 0.09 s long"):
        audio_io.load_melody(tmp_path / "short.wav")
    sf.write(str(tmp_path / "quiet.wav"), np.full(32000, 1e-4, np.float32), 32000)
    with pytest.raises(InvalidInputError, match="silent"):
        audio_io.load_melody(tmp_path / "quiet.wav")
    (tmp_path / "junk.mp3").write_bytes(b"\x00" * 1000)
    with pytest.raises(InvalidInputError, match="cannot read the melody file junk.mp3"):
        audio_io.load_melody(tmp_path / "junk.mp3")
    with pytest.raises(InvalidInputError, match="was not received"):
        audio_io.load_melody(tmp_path / "missing.wav")


def test_audio_to_continue_files(tmp_path) -> None:
    """Unlike a melody, a clip to continue is refused (not cut) when it does not fit the model's window."""
    from musicgen.pipeline import WINDOW

    assert audio_io.CONTINUE_MAX_SECONDS == WINDOW
    t = np.arange(int(32000 * 29.5)) / 32000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(str(tmp_path / "fits.wav"), np.stack([tone, tone], axis=1), 32000)
    wave, sr = audio_io.load_continuation(tmp_path / "fits.wav")
    assert sr == 32000 and wave.shape == (2, tone.shape[0])  # all of it, both channels
    sf.write(str(tmp_path / "30s.flac"), np.zeros(30 * 32000, np.float32) + 0.1, 32000)
    with pytest.raises(InvalidInputError, match="audio to continue is 30.0 s long; it must be shorter than 30 s"):
        audio_io.load_continuation(tmp_path / "30s.flac")
    sf.write(str(tmp_path / "long.ogg"), np.zeros(45 * 16000, np.float32) + 0.1, 16000)
    with pytest.raises(InvalidInputError, match="31.0 s or more long.*trim it"):
        audio_io.load_continuation(tmp_path / "long.ogg")
    sf.write(str(tmp_path / "quiet.wav"), np.zeros(32000, np.float32), 32000)
    with pytest.raises(InvalidInputError, match="audio to continue file quiet.wav is silent"):
        audio_io.load_continuation(tmp_path / "quiet.wav")
    (tmp_path / "junk.wav").write_text("not audio")
    with pytest.raises(InvalidInputError, match="cannot read the audio to continue file junk.wav"):
        audio_io.load_continuation(tmp_path / "junk.wav")


# ------------------------------------------------------------------------------------------- output formats
def test_format_of_path() -> None:
    names = ("a.wav", "b.FLAC", "dir.x/c.mp3", "d.ogg")
    assert [audio_io.format_of_path(p) for p in names] == ["wav", "flac", "mp3", "ogg"]
    with pytest.raises(InvalidInputError, match=r"cannot write song.aiff: .aiff files are not written; name it .wav"):
        audio_io.format_of_path("song.aiff")
    with pytest.raises(InvalidInputError, match="song: it has no extension"):
        audio_io.format_of_path("out/song")


@pytest.mark.parametrize("fmt", list(audio_io.FORMATS))
@pytest.mark.parametrize("channels", [1, 2])
def test_each_format_reads_back(tmp_path: Path, fmt: str, channels: int) -> None:
    """Written as that container / subtype, with its channels and rate; lossless formats to the last bit
    (PCM_16: x 32767, PCM_24: x (2^23 - 1), rounded), lossy ones close on a tone."""
    suffix, container, subtype = audio_io.FORMATS[fmt]
    t = np.arange(2 * 32000) / 32000
    audio = np.stack([(0.5 / (c + 1)) * np.sin(2 * np.pi * 440 * (c + 1) * t) for c in range(channels)])
    audio[:, 1000:1002] = [1.0, -1.0]  # full scale both ways
    audio = audio.astype(np.float32)
    path = audio_io.write_audio(tmp_path / "take", audio, 32000, fmt)
    assert path == tmp_path / f"take{suffix}" and path.is_file()
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.channels, info.samplerate) == (container, subtype, channels, 32000)
    if subtype == "PCM_16":
        data, _ = sf.read(str(path), dtype="int16", always_2d=True)
        assert np.abs(data.T / 32767 - audio).max() <= 0.5 / 32767 + 1e-7
    elif subtype == "PCM_24":
        data, _ = sf.read(str(path), dtype="int32", always_2d=True)
        assert np.abs((data.T >> 8) / (2**23 - 1) - audio).max() <= 1 / 2**23
    else:
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
        n = min(len(data), audio.shape[1])
        assert abs(len(data) - audio.shape[1]) < 2048
        for c in range(channels):
            assert np.corrcoef(data[:n, c], audio[c, :n])[0, 1] > 0.99
            assert abs(np.std(data[:n, c]) / np.std(audio[c, :n]) - 1) < 0.1


def test_write_audio_names_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audio = np.zeros((1, 3200), np.float32)
    assert audio_io.write_audio(tmp_path / "a.flac", audio, 32000, "wav") == tmp_path / "a.wav"  # extension replaced
    assert audio_io.write_audio(tmp_path / "take.1", audio, 32000, "ogg") == tmp_path / "take.1.ogg"  # added
    assert audio_io.write_audio(tmp_path / "b.WAV", audio, 32000, "wav24") == tmp_path / "b.WAV"
    assert audio_io.write_audio(tmp_path / "c.mp3", audio, 32000) == tmp_path / "c.wav"  # wav is the default
    with pytest.raises(InvalidInputError, match="unknown output format 'aac': choose one of wav, wav24, flac, mp3"):
        audio_io.write_audio(tmp_path / "d", audio, 32000, "aac")
    with pytest.raises(InvalidInputError, match="MP3 .* has no 96,000 Hz"):
        audio_io.write_audio(tmp_path / "e", audio, 96000, "mp3")
    assert not (tmp_path / "e.mp3").exists()
    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "WAV", "FLAC": "FLAC", "OGG": "OGG"})
    with pytest.raises(InvalidInputError, match=r"cannot write mp3: this libsndfile .* lacks MPEG_LAYER_III"):
        audio_io.write_audio(tmp_path / "f", audio, 32000, "mp3")


def test_write_wav_is_the_streamed_wav(tmp_path: Path) -> None:
    audio = np.stack([np.linspace(-1.2, 1.2, 5000), np.zeros(5000)]).astype(np.float32)
    path = audio_io.write_wav(tmp_path / "x.wav", audio, 32000)
    assert path == tmp_path / "x.wav" and path.read_bytes() == audio_io.wav_bytes(audio, 32000)
