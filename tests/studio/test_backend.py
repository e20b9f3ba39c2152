"""musicgen/studio/backend.py without a server: the ZeroGPU wrapping and stop requests."""

from __future__ import annotations

import sys
import types

import pytest
from test_request import args

from musicgen.studio import backend, catalog
from musicgen.studio.request import parse_request


def test_zero_gpu_wraps_generation_with_a_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {}

    def gpu(duration):
        def wrap(fn):
            calls["duration"], calls["fn"] = duration, fn
            return fn
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    st = backend.Studio(device="cpu", stream=False)
    assert calls["fn"] == st._run_events
    req = parse_request(**args(model_size="medium", duration=20))
    assert calls["duration"]("facebook/musicgen-medium", req, None, None, True) == catalog.gpu_seconds("medium", 20,
                                                                                                 "encodec")
    monkeypatch.delitem(sys.modules, "spaces")
    plain = backend.Studio(device="cpu", stream=False)
    assert plain.run_events == plain._run_events  # no `spaces` package: called as is


def test_stop_requests_only_reach_an_armed_run() -> None:
    stops = backend.StopRequests()
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
    stops = backend.StopRequests()
    first, second = stops.arm("s"), stops.arm("s")
    stops.disarm(first)  # the first run ends
    assert stops.request("s") and stops.requested(second)
    third = stops.arm("s")  # Generate again before the second run noticed its Stop
    assert stops.requested(second) and not stops.requested(third)
    stops.max_age = 0.0
    stops.arm("t")  # long-forgotten runs are dropped
    assert not stops.requested(second)
