"""The C++ decode layer (musicgen/fused.py) against lm.Layer.decode: the same tokens to the bit, for one request
and for several at different positions (the scheduler's steps), with cross-attention (text models) and with a
melody prefix (per-row masks and positions, no cross-attention)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.melody_checkpoints import build_melody_checkpoint

from musicgen import MusicGen, fused, native
from musicgen.generate import decode_steps
from musicgen.options import options
from musicgen.prepare import prepare

pytestmark = pytest.mark.skipif(not native.vnni(), reason="the fused layer runs our AVX512-VNNI int8 kernel")


@pytest.fixture(scope="module")
def int8(checkpoints) -> MusicGen:
    return MusicGen.from_pretrained(checkpoints["current"][1], device="cpu", quantize="int8")


@pytest.fixture(scope="module")
def melody_int8(tmp_path_factory: pytest.TempPathFactory) -> MusicGen:
    _, folder = build_melody_checkpoint(tmp_path_factory.mktemp("melody-int8") / "m", layout="hub", seed=7)
    return MusicGen.from_pretrained(Path(folder), device="cpu", quantize="int8")


def staggered(mg: MusicGen, fuse: bool) -> list[torch.Tensor]:
    """Two requests sharing decode steps, the second joining 5 steps later (different cache positions)."""
    mg.lm.fused = fuse
    try:
        a, _ = prepare(mg, "lofi hip hop", options(duration=0.6, seed=1))
        b, _ = prepare(mg, ["jazz trio", ""], options(duration=0.4, seed=2, top_k=50))
        a.begin()
        for _ in range(5):
            decode_steps(mg.lm, [a])
        b.begin()
        while not (a.done and b.done):
            decode_steps(mg.lm, [g for g in (a, b) if not g.done])
        return [a.frames(), b.frames()]
    finally:
        mg.lm.fused = True


@pytest.mark.parametrize("model", ["int8", "melody_int8"])
def test_fused_steps_equal_layer_decode(model: str, request: pytest.FixtureRequest) -> None:
    mg: MusicGen = request.getfixturevalue(model)
    assert all(fused.cached_args(layer) is not None for layer in mg.lm.layers)
    for got, want in zip(staggered(mg, True), staggered(mg, False), strict=True):
        assert torch.equal(got, want)
    one = mg.generate("ambient pads", 0.5, seed=3)
    mg.lm.fused = False
    try:
        assert torch.equal(mg.generate("ambient pads", 0.5, seed=3).tokens, one.tokens)
    finally:
        mg.lm.fused = True


def test_fused_runs_and_steps_aside(int8: MusicGen, small: MusicGen, monkeypatch: pytest.MonkeyPatch) -> None:
    """It runs on the int8 model's steps; a float32 model, a layer with a kernel switched off or a decode with
    `fused = False` keeps Layer.decode."""
    seen: list[int] = []
    real = fused.runner

    def spy(*args, **kwargs):
        run = real(*args, **kwargs)
        seen.append(run is not None)
        return run

    monkeypatch.setattr(fused, "runner", spy)
    int8.generate("x", 0.1, seed=0)
    assert seen and all(seen)
    assert all(fused.cached_args(layer) is None for layer in small.lm.layers)  # float32: not ours to fuse
    layer = int8.lm.layers[0]
    want = int8.generate("x", 0.2, seed=1).tokens
    for switch in ("fc1.native", "self_attn.native", "fc2.reduce_range"):  # switched after the args were cached
        part, name = switch.split(".")
        module = getattr(layer, part)
        before = getattr(module, name)
        setattr(module, name, not before)
        try:
            assert fused.cached_args(layer) is None
            seen.clear()
            out = int8.generate("x", 0.2, seed=1).tokens
            assert seen and not any(seen)  # Layer.decode ran
            if switch != "fc2.reduce_range":
                assert torch.equal(out, want)
        finally:
            setattr(module, name, before)
    assert fused.cached_args(layer) is not None
