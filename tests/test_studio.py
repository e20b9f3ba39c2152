"""The app's engine side without a server (musicgen/studio.py): checkpoint choice and the Space metadata that
lists the checkpoints, seeds and request checks, the GPU budget, the single-model cache and stop requests; plus
app.py's ZeroGPU wrapping and its CPU quantization default."""

from __future__ import annotations

import gc
import sys
import threading
import types
import weakref
from pathlib import Path

import numpy as np
import pytest

from musicgen import InvalidInputError, studio
from musicgen.studio import ModelCache, choose_checkpoint, parse_request, parse_seed

ROOT = Path(__file__).resolve().parents[1]


def test_every_checkpoint_the_app_can_pick() -> None:
    assert sorted([
        "facebook/musicgen-small", "facebook/musicgen-medium", "facebook/musicgen-large",
        "facebook/musicgen-stereo-small", "facebook/musicgen-stereo-medium", "facebook/musicgen-stereo-large",
        "facebook/musicgen-melody", "facebook/musicgen-melody-large",
        "facebook/musicgen-stereo-melody", "facebook/musicgen-stereo-melody-large",
    ]) == studio.ALL_REPOS
    assert choose_checkpoint("large", True, False) == (studio.CHECKPOINTS[("large", True, False)], None)
    assert choose_checkpoint("large", True, True)[0].repo == "facebook/musicgen-stereo-melody-large"
    ckpt, notice = choose_checkpoint("small", False, True)
    assert ckpt.repo == "facebook/musicgen-melody" and "no small melody model" in notice
    assert choose_checkpoint("small", True, True)[0].repo == "facebook/musicgen-stereo-melody"
    assert "≈2.4 GB download" in choose_checkpoint("small", False, False)[0].hint
    with pytest.raises(InvalidInputError):
        choose_checkpoint("huge", False, False)


def test_readme_lists_every_checkpoint_in_the_space_metadata() -> None:
    front = (ROOT / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
    for repo in [*studio.ALL_REPOS, studio.MBD_REPO]:
        assert f"  - {repo}\n" in front
    from musicgen import mbd_checkpoint

    assert studio.MBD_REPO == mbd_checkpoint.REPO_ID


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), (-1, None), (-1.0, None), (0, 0),
                                                 (42, 42), (42.0, 42), ("17", 17), (2**53 - 1, 2**53 - 1)])
def test_seeds(value, expected) -> None:
    assert parse_seed(value) == expected


@pytest.mark.parametrize("value", [1.5, "abc", 2**53, True, float("nan")])
def test_bad_seeds(value) -> None:
    with pytest.raises(InvalidInputError, match="seed"):
        parse_seed(value)


def test_fresh_seeds_fit_in_javascript() -> None:
    assert all(0 <= studio.fresh_seed() < 2**32 for _ in range(100))


def args(**kw):
    base = dict(prompt="lofi", duration=10, model_size="small", stereo=False, decoder="encodec", melody=None,
                top_k=250, top_p=0.0, temperature=1.0, cfg_coef=3.0, seed=-1, continue_audio=None)
    return {**base, **kw}


def test_request_is_normalised() -> None:
    req = parse_request(**args(prompt="  lofi \n beat ", top_k=250.0, seed="12"))
    assert (req.prompt, req.top_k, req.seed, req.melody_path, req.continue_path) == ("lofi beat", 250, 12, None,
                                                                                     None)
    assert parse_request(**args(continue_audio="/tmp/x.wav")).continue_path == "/tmp/x.wav"
    assert isinstance(req.top_k, int)


@pytest.mark.parametrize(("kw", "message"), [
    ({"prompt": None}, "prompt is empty"),
    ({"duration": 0.5}, "duration must be between 1 and 300"),
    ({"duration": 301}, "between 1 and 300"),
    ({"duration": "ten"}, "duration must be a number"),
    ({"model_size": "xl"}, "model_size must be one of"),
    ({"stereo": "yes"}, "stereo must be true or false"),
    ({"decoder": "hifigan"}, "decoder must be one of"),
    ({"top_k": 2.5}, "top_k must be a whole number"),
    ({"top_p": -0.1}, "top_p must be between"),
    ({"temperature": float("inf")}, "temperature must be a number"),
    ({"cfg_coef": -1}, "cfg_coef must be between"),
    ({"melody": 3}, "melody must be an uploaded audio file"),
    ({"continue_audio": 3}, "continue_audio must be an uploaded audio file"),
])
def test_request_errors(kw, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_request(**args(**kw))


def test_duration_must_leave_room_after_the_clip() -> None:
    clip = (np.zeros((1, 5 * 32000), np.float32), 32000)
    studio.check_continuation(5.5, clip)
    for duration in (5, 4):
        with pytest.raises(InvalidInputError, match="audio to continue is 5.0 s long and the duration counts it"):
            studio.check_continuation(duration, clip)


def test_gpu_budget_grows_with_the_request() -> None:
    small = studio.gpu_seconds("small", 10, "encodec")
    assert 30 <= small < studio.gpu_seconds("large", 30, "encodec") < studio.gpu_seconds("large", 30, "mbd") <= 300


class FakeModel:
    def __init__(self, repo: str) -> None:
        self.repo = repo


def test_model_cache_holds_one_model_and_frees_the_previous() -> None:
    loads: list[str] = []
    cache = ModelCache(loader=lambda repo: loads.append(repo) or FakeModel(repo))
    announced: list[str] = []
    a = cache.get("a", on_load=announced.append)
    assert cache.get("a", on_load=announced.append) is a and loads == ["a"] and announced == ["a"]
    gone = weakref.ref(a)
    del a
    b = cache.get("b")
    gc.collect()
    assert gone() is None and cache.current == "b" and b.repo == "b"
    cache.free()
    assert cache.current is None


def test_model_cache_loads_once_under_concurrency() -> None:
    loads: list[str] = []
    started = threading.Event()

    def slow(repo: str) -> FakeModel:
        started.set()
        loads.append(repo)
        threading.Event().wait(0.2)
        return FakeModel(repo)

    cache = ModelCache(loader=slow)
    got: list[FakeModel] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("a"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["a"] and len({id(m) for m in got}) == 1


def test_model_cache_failed_load_leaves_it_empty() -> None:
    def fail(repo: str):
        raise studio.InvalidInputError("no such model")

    cache = ModelCache(loader=fail)
    with pytest.raises(InvalidInputError):
        cache.get("x")
    assert cache.current is None


def test_zero_gpu_wraps_generation_with_a_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import app

    calls = {}

    def gpu(duration):
        def wrap(fn):
            calls["duration"], calls["fn"] = duration, fn
            return fn
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    st = app.Studio(device="cpu", stream=False)
    assert calls["fn"] == st._run_events
    req = parse_request(**args(model_size="medium", duration=20))
    assert calls["duration"]("facebook/musicgen-medium", req, None, None, True) == studio.gpu_seconds("medium", 20,
                                                                                                 "encodec")
    monkeypatch.delitem(sys.modules, "spaces")
    plain = app.Studio(device="cpu", stream=False)
    assert plain.run_events == plain._run_events  # no `spaces` package: called as is


def test_space_sdk_version_is_the_pinned_gradio() -> None:
    import gradio

    front = (ROOT / "README.md").read_text().split("---")[1]
    pinned = next(line.split("==")[1].split()[0] for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if line.startswith("gradio=="))
    assert f"sdk_version: {pinned}\n" in front and gradio.__version__ == pinned


def test_stop_requests_only_reach_an_armed_run() -> None:
    stops = studio.StopRequests()
    assert not stops.request("a")  # nothing armed: ignored, and the next run is not affected
    run = stops.arm("a")
    assert not stops.requested(run)
    other = stops.arm("b")
    assert stops.request("a") and stops.requested(run) and not stops.requested(other)
    stops.disarm(run)
    assert not stops.requested(run)
    assert not stops.requested(stops.arm("a"))  # a new run starts clean
    assert not stops.requested(None)


def test_stop_is_per_run() -> None:
    """Two runs in one session: the first one's disarm keeps the second armed, and a new arm does not clear
    a pending stop (both raced when the flag was per session)."""
    stops = studio.StopRequests()
    first, second = stops.arm("s"), stops.arm("s")
    stops.disarm(first)  # the first run ends
    assert stops.request("s") and stops.requested(second)
    third = stops.arm("s")  # Generate again before the second run noticed its Stop
    assert stops.requested(second) and not stops.requested(third)
    stops.max_age = 0.0
    stops.arm("t")  # long-forgotten runs are dropped
    assert not stops.requested(second)


def test_app_quantizes_by_default_on_cpu() -> None:
    import app

    assert app.default_quantize("auto", "cpu") == "int8"
    assert app.default_quantize("auto", "cuda") is None
    assert app.default_quantize("none", "cpu") is None and app.default_quantize("int8", "cuda") == "int8"
    assert app.parser().parse_args([]).quantize == "auto"
