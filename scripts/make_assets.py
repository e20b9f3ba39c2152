"""Example audio for the studio, synthesised from note lists: public-domain tunes to condition the melody
models with, and a clip for a model to continue. Run `python scripts/make_assets.py [folder]` (default:
assets/ beside this folder); tests/test_assets.py checks that the committed files are what it makes.

Deterministic: every sample is a function of the note lists below, computed in float64 (no clock, no global
random state; the drums' noise comes from numpy's legacy RandomState with a fixed seed, whose stream numpy
keeps stable across releases), and the files are written with Python's `wave` module (a fixed 44-byte header,
no metadata). Only numpy is needed.

- assets/melodies/*.wav: 16-bit mono at 32 kHz (the rate of the models and their chroma extractor), 9-14 s,
  a plucked-string-like additive voice (8 harmonics, the higher ones dying faster), peaking at -9 dBFS.
  Ode to Joy (Beethoven, 1824), Twinkle Twinkle Little Star (18th-century French tune), Frere Jacques
  (18th-century round).
- assets/continue/pop_progression.wav: 7.5 s, 16-bit mono at 32 kHz: I-V-vi-IV in C (128 bpm, a bar
  each) as plucked chords over a bass, with kick, snare and eighth-note hi-hats, peaking at -3 dBFS.
"""

from __future__ import annotations

import argparse
import re
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 32_000  # the models' rate: no resampling on upload
MELODY_PEAK = 0.35  # -9 dBFS: about -16 LUFS for these steady tones, a modest level
CLIP_PEAK = 0.7  # -3 dBFS: the drums are what peaks; about -19 LUFS
TAIL_SECONDS = 0.5  # after the last note, for its release
FADE_SECONDS = 0.02  # linear fade at the end of each note (no clicks)
SEED = 1770  # the drums' noise
ASSETS = Path(__file__).resolve().parents[1] / "assets"
_NOTE = re.compile(r"^([A-G])([#b]?)(-?\d)$")
_STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


@dataclass(frozen=True)
class Tune:
    """A melody: `notes` is "NAME:BEATS ..." with scientific pitch names (A4 = 440 Hz, "R" a rest)."""

    file: str
    bpm: float
    notes: str


TUNES = (
    # Beethoven, Symphony No. 9 (1824), "Ode to Joy": the first two phrases, in D major
    Tune("ode_to_joy.wav", 150, "F#4:1 F#4:1 G4:1 A4:1 A4:1 G4:1 F#4:1 E4:1 D4:1 D4:1 E4:1 F#4:1 F#4:1.5 E4:0.5 "
         "E4:2 F#4:1 F#4:1 G4:1 A4:1 A4:1 G4:1 F#4:1 E4:1 D4:1 D4:1 E4:1 F#4:1 E4:1.5 D4:0.5 D4:2"),
    # "Ah ! vous dirai-je, maman" (France, 1761), sung as Twinkle Twinkle Little Star: the first verse, C major
    Tune("twinkle_twinkle.wav", 100, "C4:1 C4:1 G4:1 G4:1 A4:1 A4:1 G4:2 F4:1 F4:1 E4:1 E4:1 D4:1 D4:1 C4:2"),
    # Frere Jacques (France, 18th century), once through, in F major
    Tune("frere_jacques.wav", 150, "F4:1 G4:1 A4:1 F4:1 F4:1 G4:1 A4:1 F4:1 A4:1 Bb4:1 C5:2 A4:1 Bb4:1 C5:2 "
         "C5:0.5 D5:0.5 C5:0.5 Bb4:0.5 A4:1 F4:1 C5:0.5 D5:0.5 C5:0.5 Bb4:0.5 A4:1 F4:1 F4:1 C4:1 F4:2 F4:1 C4:1 "
         "F4:2"),
)
# The clip to continue: one chord per bar (root-position triads; the bass plays the root two octaves down)
PROGRESSION_BPM = 128
PROGRESSION = (("C4", "E4", "G4"), ("G3", "B3", "D4"), ("A3", "C4", "E4"), ("F3", "A3", "C4"))


def frequency(name: str) -> float:
    """Scientific pitch name -> Hz, equal temperament with A4 = 440 Hz."""
    m = _NOTE.match(name)
    if m is None:
        raise ValueError(f"not a note name: {name!r}")
    letter, accidental, octave = m.groups()
    midi = 12 * (int(octave) + 1) + _STEPS[letter] + {"#": 1, "b": -1, "": 0}[accidental]
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def pluck(freq: float, seconds: float, decay: float = 1.2) -> np.ndarray:
    """A plucked-string-like note of `seconds`: harmonics h = 1..8 (below 15 kHz) at 1 / h^1.3, each decaying
    with a time of decay / h^0.7 s, a 5 ms attack and a FADE_SECONDS fade-out; peak about 1."""
    n = int(round(seconds * RATE))
    t = np.arange(n) / RATE
    out = np.zeros(n)
    for h in range(1, 9):
        if h * freq < 15_000:
            out += np.sin(2 * np.pi * h * freq * t) * np.exp(-t * h**0.7 / decay) / h**1.3
    envelope = np.minimum(1.0, t / 0.005) * np.clip((seconds - t) / FADE_SECONDS, 0.0, 1.0)
    return out * envelope


def _peak(x: np.ndarray, peak: float) -> np.ndarray:
    return x * (peak / np.abs(x).max())


def render_tune(tune: Tune) -> np.ndarray:
    """The tune as mono float64 at RATE, a note after another (no overlap), TAIL_SECONDS of release after."""
    beat = 60.0 / tune.bpm
    notes = [(name, float(beats)) for name, beats in (item.split(":") for item in tune.notes.split())]
    total = sum(beats for _, beats in notes) * beat + TAIL_SECONDS
    out = np.zeros(int(round(total * RATE)))
    at = 0.0
    for name, beats in notes:
        if name != "R":
            note = pluck(frequency(name), beats * beat)
            start = int(round(at * RATE))
            out[start : start + len(note)] += note
        at += beats * beat
    return _peak(out, MELODY_PEAK)


def _kick(rng: np.random.RandomState) -> np.ndarray:
    """A sine whose pitch falls from 110 to 45 Hz, 0.25 s."""
    t = np.arange(int(0.25 * RATE)) / RATE
    freq = 45.0 + 65.0 * np.exp(-t / 0.03)
    return np.sin(2 * np.pi * np.cumsum(freq) / RATE) * np.exp(-t / 0.12)


def _snare(rng: np.random.RandomState) -> np.ndarray:
    """Noise (first difference: brighter) and a 190 Hz body, 0.2 s."""
    t = np.arange(int(0.2 * RATE)) / RATE
    noise = np.diff(rng.uniform(-1.0, 1.0, len(t) + 1))
    return 0.5 * noise * np.exp(-t / 0.06) + 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05)


def _hat(rng: np.random.RandomState) -> np.ndarray:
    """Noise differenced twice (mostly above 5 kHz), 50 ms."""
    t = np.arange(int(0.05 * RATE)) / RATE
    return 0.25 * np.diff(rng.uniform(-1.0, 1.0, len(t) + 2), n=2) * np.exp(-t / 0.015)


def _add(out: np.ndarray, sound: np.ndarray, seconds: float, gain: float) -> None:
    start = int(round(seconds * RATE))
    part = sound[: len(out) - start]
    out[start : start + len(part)] += gain * part


def render_progression() -> np.ndarray:
    """PROGRESSION at PROGRESSION_BPM in 4/4, a bar a chord: the chord plucked on beats 1 and 3, the bass on
    every beat, kick on 1 and 3, snare on 2 and 4, hi-hat on every eighth."""
    beat = 60.0 / PROGRESSION_BPM
    rng = np.random.RandomState(SEED)
    out = np.zeros(int(round(4 * len(PROGRESSION) * beat * RATE)))
    for bar, chord in enumerate(PROGRESSION):
        root = frequency(chord[0]) / 4
        for b in range(4):
            at = (4 * bar + b) * beat
            if b % 2 == 0:
                for name in chord:
                    _add(out, pluck(frequency(name), 2 * beat, decay=0.8), at, 0.22)
                _add(out, _kick(rng), at, 0.6)
            else:
                _add(out, _snare(rng), at, 0.5)
            _add(out, pluck(root, beat, decay=0.6), at, 0.5)
            for eighth in (0.0, 0.5):
                _add(out, _hat(rng), at + eighth * beat, 0.3)
    return _peak(out, CLIP_PEAK)


def build() -> dict[str, np.ndarray]:
    """Relative path -> mono float64 audio at RATE, peaking at MELODY_PEAK / CLIP_PEAK."""
    files = {f"melodies/{tune.file}": render_tune(tune) for tune in TUNES}
    files["continue/pop_progression.wav"] = render_progression()
    return files


def write_wav(path: Path, audio: np.ndarray) -> None:
    """Mono float in [-1, 1] -> 16-bit PCM WAV (x 32767, rounded, as musicgen.audio_io writes)."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(pcm.tobytes())


def main(out_dir: str | Path = ASSETS) -> list[Path]:
    """Write every asset under `out_dir`; returns the paths written."""
    paths = []
    for rel, audio in build().items():
        path = Path(out_dir) / rel
        write_wav(path, audio)
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default=ASSETS, type=Path, help="where to write (default: assets/)")
    for written in main(parser.parse_args().out_dir):
        print(f"{written}  {written.stat().st_size:,} bytes")
