"""scripts/make_assets.py: the example audio is reproducible (the same bytes every run, and the committed
files are exactly what the script makes) and loads as a melody / audio to continue."""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from musicgen import audio_io

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_assets.py"


@functools.cache
def load_script() -> types.ModuleType:
    """scripts/ is not a package: the script imported from its file (registered, as dataclasses need)."""
    spec = importlib.util.spec_from_file_location("make_assets", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Relative path -> bytes, from running main() twice into two folders (checked equal)."""
    script = load_script()
    runs = []
    for name in ("first", "second"):
        out = tmp_path_factory.mktemp(name)
        paths = script.main(out)
        runs.append({p.relative_to(out).as_posix(): p.read_bytes() for p in paths})
    assert runs[0].keys() == runs[1].keys()
    for rel in runs[0]:
        assert runs[0][rel] == runs[1][rel], f"{rel} differs between two runs"
    return runs[0]


def test_the_script_is_deterministic_and_makes_enough(made: dict[str, bytes]) -> None:
    melodies = [rel for rel in made if rel.startswith("melodies/")]
    continues = [rel for rel in made if rel.startswith("continue/")]
    assert len(melodies) >= 3 and len(continues) >= 1 and len(made) == len(melodies) + len(continues)
    assert all(rel.endswith(".wav") and 0 < len(data) < 1_000_000 for rel, data in made.items())


def test_committed_assets_are_what_the_script_makes(made: dict[str, bytes]) -> None:
    committed = {p.relative_to(ROOT / "assets").as_posix() for p in (ROOT / "assets").glob("*/*.wav")}
    assert committed == set(made), "assets/ is out of date: run scripts/make_assets.py"
    for rel, data in made.items():
        assert (ROOT / "assets" / rel).read_bytes() == data, f"assets/{rel} differs: run scripts/make_assets.py"


def test_assets_load_as_uploads(made: dict[str, bytes]) -> None:
    for rel in made:
        path = ROOT / "assets" / rel
        melody = rel.startswith("melodies/")
        upload = audio_io.load_melody(path) if melody else audio_io.load_continuation(path)
        wave, rate = upload
        seconds = wave.shape[-1] / rate
        assert rate == 32_000 and wave.shape[0] == 1 and upload.notice is None
        assert (8.0 <= seconds <= 15.0) if melody else (6.0 <= seconds <= 8.0), (rel, seconds)
        peak = float(np.abs(wave).max())
        assert 10 ** (-12 / 20) < peak < 10 ** (-2 / 20), (rel, peak)  # a modest level, well below full scale


def test_note_names() -> None:
    script = load_script()
    assert script.frequency("A4") == 440.0
    assert script.frequency("C4") == pytest.approx(261.6256, abs=1e-4)
    assert script.frequency("Bb3") == script.frequency("A#3") == pytest.approx(233.0819, abs=1e-4)
    with pytest.raises(ValueError, match="not a note name"):
        script.frequency("H2")
