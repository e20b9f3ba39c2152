"""The melody's stems (musicgen/stems.py): demucs' own apply_model and audiocraft's `_get_stemmed_wav` are the
oracles, on a small HTDemucs with random weights built by demucs' own class; the Hub repo is faked (FakeHub)."""

from __future__ import annotations

import json
import os
import threading
from fractions import Fraction
from pathlib import Path

import julius
import pytest
import torch
import yaml
from demucs.apply import BagOfModels, apply_model
from demucs.hf import load_safetensors_model
from demucs.htdemucs import HTDemucs
from helpers import audiocraft_stems_oracle as oracle
from helpers.fakehub import FakeHub, hub_env, run_json
from safetensors.torch import save_file

from musicgen import MusicGen, stems
from musicgen.cli import parser
from musicgen.errors import CheckpointError, InvalidInputError
from musicgen.longform import melody_wave
from musicgen.options import options
from musicgen.serve import Scheduler

ROOT = Path(__file__).resolve().parents[1]
SR = 32000
SOURCES = ["drums", "bass", "other", "vocals"]
SMALL = dict(channels=4, depth=2, nfft=512, t_layers=1, t_heads=2, dconv_comp=2, segment=Fraction(1))
CPU = torch.device("cpu")


def small_model(seed: int = 0) -> HTDemucs:
    torch.manual_seed(seed)
    return HTDemucs(SOURCES, **SMALL).eval()


def tune(seconds: float = 2.0, f: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return 0.3 * torch.sin(2 * torch.pi * f * t) + 0.2 * torch.sin(2 * torch.pi * 2.5 * f * t) * (t % 0.5 < 0.25)


@pytest.fixture(scope="module")
def sep() -> stems.Separator:
    return stems.Separator(BagOfModels([small_model()]).eval(), "small")


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stems, "cache", stems.StemCache())


def test_separation_equals_demucs_apply_model(sep: stems.Separator) -> None:
    """audiocraft's steps with demucs' own functions, demucs' random shift drawn after random.seed(seed)."""
    wave = torch.stack([tune(), tune(f=330.0)])  # [2, S]: two melodies at once
    ours = stems.separate(wave, SR, 5, SR, CPU, sep=sep)
    mix = julius.resample_frac(wave[:, None].expand(-1, 2, -1), SR, 44100)
    with oracle.shift_from(5), torch.no_grad():
        ref = apply_model(sep.bag, mix)  # shifts=1, split=True, overlap=0.25
    ref = julius.resample_frac(ref[:, [3, 2]].sum(1).mean(1, keepdim=True), 44100, SR)[:, 0]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-7)


@pytest.mark.skipif(not oracle.available(), reason=oracle.SKIP_REASON)
def test_stems_and_chroma_equal_audiocrafts(mel: MusicGen, sep: stems.Separator) -> None:
    wave = tune(3.0)
    ours = stems.separate(wave[None], SR, 11, SR, CPU, sep=sep)
    with oracle.shift_from(11):
        theirs = oracle.StemOracle(sep.bag)._get_stemmed_wav(wave[None, None], SR)  # [1, 1, S]
    torch.testing.assert_close(ours, theirs[:, 0], rtol=0, atol=1e-7)
    assert mel.chroma is not None
    assert torch.equal(mel.chroma.chroma(ours), mel.chroma.chroma(theirs[:, 0]))
    assert not torch.equal(mel.chroma.chroma(ours), mel.chroma.chroma(wave[None]))  # the separation matters


@pytest.mark.skipif(not oracle.available(), reason=oracle.SKIP_REASON)
def test_tokens_with_separation_equal_feeding_audiocrafts_stems(mel: MusicGen, sep: stems.Separator,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(stems._separators, str(mel.device), sep)
    wave = tune(2.0)
    on = mel.generate(["jazz"], 0.3, temperature=0, seed=4, melody=(wave, SR), separate_melody=True).tokens
    prepared = melody_wave(mel.chroma, (wave, SR), 1, 0.3, "")  # [1, S]: what prepare() separates
    with oracle.shift_from(stems.content_seed(prepared[:, None])):  # the shift comes from the melody itself
        theirs = oracle.StemOracle(sep.bag)._get_stemmed_wav(wave[None, None], SR)[0]
    ref = mel.generate(["jazz"], 0.3, temperature=0, seed=4, melody=(theirs, SR), separate_melody=False).tokens
    assert torch.equal(on, ref)
    off = mel.generate(["jazz"], 0.3, temperature=0, seed=4, melody=(wave, SR), separate_melody=False).tokens
    assert not torch.equal(on, off)
    default = mel.generate(["jazz"], 0.3, temperature=0, seed=4, melody=(wave, SR)).tokens  # conftest: env says off
    assert torch.equal(default, off)
    monkeypatch.setenv(stems.ENV_DEFAULT, "1")
    assert torch.equal(mel.generate(["jazz"], 0.3, temperature=0, seed=4, melody=(wave, SR)).tokens, on)


def test_seed_fixes_the_shift(sep: stems.Separator) -> None:
    wave = tune()[None]
    a = stems.separate(wave, SR, 1, SR, CPU, sep=sep)
    stems.cache = stems.StemCache()
    assert torch.equal(a, stems.separate(wave, SR, 1, SR, CPU, sep=sep))
    assert stems.shifts_of(1, 1) != stems.shifts_of(2, 1)
    assert all(0 <= s <= 22050 for seed in range(20) for s in stems.shifts_of(seed, 2))
    assert not torch.equal(a, stems.separate(wave, SR, 2, SR, CPU, sep=sep))


def test_cache_skips_the_network_and_is_bounded(sep: stems.Separator, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    model = sep.bag.models[0]
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: calls.append(1) or forward(x))
    wave = tune()[None]
    first = stems.separate(wave, SR, 3, SR, CPU, sep=sep)
    n = len(calls)
    assert n > 0
    assert torch.equal(stems.separate(wave.clone(), SR, 3, SR, CPU, sep=sep), first) and len(calls) == n
    stems.separate(wave, SR, 3, 16000, CPU, sep=sep)  # another output rate is not served the first's stems
    small = stems.StemCache(max_bytes=3 * 4000)
    for i in range(10):
        small.put(str(i), torch.zeros(1000))  # 4000 bytes each
        assert small.bytes <= small.max_bytes
    assert len(small) == 3 and small.get("9") is not None and small.get("0") is None
    small.put("big", torch.zeros(10_000))
    assert small.get("big") is None


def test_stop_between_chunks(sep: stems.Separator) -> None:
    with pytest.raises(stems.SeparationStopped):
        stems.separate(tune()[None], SR, 1, SR, CPU, stopped=lambda: True, sep=sep)


def test_option_and_cli_flag() -> None:
    assert options().separate_melody is None
    assert options(separate_melody=False).separate_melody is False
    with pytest.raises(InvalidInputError, match="separate_melody"):
        options(separate_melody="yes")
    assert parser().parse_args(["x", "--no-separate"]).separate_melody is False
    assert parser().parse_args(["x"]).separate_melody is None
    assert stems.wanted(True) and not stems.wanted(False)


def _encode(value: object) -> object:  # demucs/hf.py `_decode_json`'s inverse (fractions)
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def write_repo(folder: Path, model: HTDemucs, sig: str = "0a1b2c3d", klass: str = "demucs.htdemucs.HTDemucs") -> Path:
    """The layout of adefossez/HTDemucs: the bag yaml and `<sig>.safetensors` with klass / args / kwargs."""
    folder.mkdir(parents=True, exist_ok=True)
    args, kwargs = model._init_args_kwargs  # demucs' capture_init: how the model was built
    meta = {"klass": klass, "args": json.dumps(_encode(list(args))), "kwargs": json.dumps(_encode(kwargs))}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / f"{sig}.safetensors", meta)
    (folder / "htdemucs.yaml").write_text(yaml.safe_dump({"models": [sig]}))
    return folder


def test_repo_format_is_demucs_own(tmp_path: Path) -> None:
    folder = write_repo(tmp_path / "repo", small_model(1))
    theirs = load_safetensors_model(folder / "0a1b2c3d.safetensors").eval()  # demucs' own reader
    ours = stems.from_folder(folder)
    wave = tune(1.0)[None]
    a = stems.separate(wave, SR, 0, SR, CPU, sep=ours)
    b = stems.separate(wave, SR, 0, SR, CPU, sep=stems.Separator(BagOfModels([theirs]).eval(), "demucs"))
    assert torch.equal(a, b)


@pytest.mark.parametrize("klass", ["os.system", "builtins.eval", "demucs.htdemucs.HTDemucsX", "HTDemucs"])
def test_other_classes_are_refused_before_anything_is_built(tmp_path: Path, klass: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_repo(tmp_path / "repo", small_model(), klass=klass)
    monkeypatch.setattr(os, "system", lambda *a: pytest.fail("os.system called"))
    with pytest.raises(CheckpointError, match="only demucs' demucs.htdemucs.HTDemucs"):
        stems.from_folder(folder)


def test_arguments_must_be_plain_json(tmp_path: Path) -> None:
    folder = write_repo(tmp_path / "repo", small_model())
    f = folder / "0a1b2c3d.safetensors"
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as h:
        state = {k: h.get_tensor(k) for k in h.keys()}  # noqa: SIM118
        meta = h.metadata()
    meta["kwargs"] = json.dumps({"segment": {"_type": "fraction", "numerator": "os.system", "denominator": 1}})
    save_file(state, f, meta)
    with pytest.raises(CheckpointError, match="bad fraction"):
        stems.from_folder(folder)


_RUNNER = r"""
import json, sys, torch
from musicgen import MusicGenError, stems
try:
    from pathlib import Path
    sep = stems.from_folder(Path(sys.argv[1])) if len(sys.argv) > 1 else None  # a folder, or the Hub
    out = stems.separate(torch.sin(torch.arange(32000) * 0.07)[None] * 0.3, 32000, 3, 32000, torch.device("cpu"),
                         sep=sep)
    print(json.dumps({"stems": out[0, ::500].tolist()}))
except MusicGenError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def run(env: dict[str, str], *args: str) -> dict:
    return run_json(_RUNNER, env, *args, timeout=120)


def test_download_then_offline_then_unreachable(tmp_path: Path) -> None:
    folder = write_repo(tmp_path / "repo", small_model(2))
    # the same separation straight from the folder, in a fresh interpreter as the runs below (in this process,
    # earlier tests' schedulers have changed MKL's process-wide thread count, and with it the last bits)
    expected = run(hub_env("http://127.0.0.1:9", tmp_path / "none", offline=True), str(folder))["stems"]
    with FakeHub({stems.REPO: folder}) as hub:
        assert run(hub_env(hub.endpoint, tmp_path / "home")) == {"stems": expected}
        assert sorted(hub.requested_files(stems.REPO)) == ["0a1b2c3d.safetensors", "htdemucs.yaml"]
    assert run(hub_env(hub.endpoint, tmp_path / "home", offline=True)) == {"stems": expected}
    got = run(hub_env(hub.endpoint, tmp_path / "empty"))
    assert got["error"] == "SeparatorUnavailable"  # a DownloadError the studio words for its switch
    assert "adefossez/HTDemucs" in got["message"] and "--no-separate" in got["message"]
    assert "separate_melody=False" in got["message"]


def test_takes_with_other_seeds_reuse_the_stems(mel: MusicGen, sep: stems.Separator,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The shift comes from the melody, not the seed: takes (seeds s, s + 1, ...) separate once, and a seed's
    piece is the same alone or as a take."""
    monkeypatch.setitem(stems._separators, str(mel.device), sep)
    calls = []
    model = sep.bag.models[0]
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: calls.append(1) or forward(x))
    stems.cache = stems.StemCache()
    wave = tune(1.5) * 0.9
    a = mel.generate(["jazz"], 0.2, seed=7, melody=(wave, SR), separate_melody=True).tokens
    n = len(calls)
    b = mel.generate(["jazz"], 0.2, seed=8, melody=(wave, SR), separate_melody=True).tokens
    assert n > 0 and len(calls) == n and not torch.equal(a, b)
    stems.cache = stems.StemCache()
    assert torch.equal(mel.generate(["jazz"], 0.2, seed=7, melody=(wave, SR), separate_melody=True).tokens, a)


def test_the_scheduler_separates_in_the_requesters_thread(mel: MusicGen, sep: stems.Separator,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Tens of seconds of demucs must not stall everyone else's decode steps: a scheduled request's melody is
    separated in its own thread before it joins; the result equals the model alone; `stopped()` ends it."""
    monkeypatch.setitem(stems._separators, str(mel.device), sep)
    where: list[str] = []
    real = stems.separate
    monkeypatch.setattr(stems, "separate",
                        lambda *a, **k: where.append(threading.current_thread().name) or real(*a, **k))
    wave = tune(1.2)
    sched = Scheduler(mel, 4)
    try:
        out = sched.generate(["jazz"], 0.2, seed=7, melody=(wave, SR), separate_melody=True, normalize="none")
        assert where == [threading.current_thread().name]
        alone = mel.generate(["jazz"], 0.2, seed=7, melody=(wave, SR), separate_melody=True, normalize="none")
        assert torch.equal(out.tokens, alone.tokens)
        stems.cache = stems.StemCache()
        with pytest.raises(stems.SeparationStopped):
            next(sched.stream(["jazz"], 0.2, seed=8, melody=(wave, SR), separate_melody=True, stopped=lambda: True))
        assert sched.load == (0, 0)
    finally:
        sched.close()
