"""Expected multi-band diffusion times (waits.py): measured on this machine, corrected by real decodes.

The decoder is the tiny one audiocraft's classes build (helpers/mbd_checkpoints.py) in the tiny engine."""

from __future__ import annotations

import pytest
import torch
from helpers.mbd_checkpoints import build_mbd_checkpoint

from musicgen import MusicGen
from musicgen.diffusion import MultiBandDiffusion
from musicgen.studio.waits import CallCost, DiffusionClock, measure, parallel_threads

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.py


@pytest.fixture(scope="module")
def with_mbd(checkpoints, tmp_path_factory: pytest.TempPathFactory) -> MusicGen:
    path = build_mbd_checkpoint(tmp_path_factory.mktemp("waits") / "mbd.th", "transformer", seed=2, codec_dim=16)
    mg = MusicGen.from_pretrained(checkpoints["current"][1], device="cpu")
    mg.mbd = MultiBandDiffusion.from_file(path, "cpu")
    return mg


def test_call_cost_is_measured_per_band_shape(with_mbd: MusicGen) -> None:
    costs = measure(with_mbd.mbd, hop=640)
    assert len(costs) == len(with_mbd.mbd.bands)
    assert all(isinstance(c, CallCost) and c.fixed >= 0 and c.per_second >= 0 and c(1.0) > 0 for c in costs)
    assert len(set(costs)) == 1  # the four bands share one network shape: timed once


def test_estimate_grows_with_the_work_and_follows_real_decodes(with_mbd: MusicGen) -> None:
    clock = DiffusionClock(with_mbd.mbd, hop=640)
    assert not clock.measured
    one = clock.estimate(2.0)
    assert clock.measured and one.calls == with_mbd.mbd.total_steps == 80
    assert one.seconds == pytest.approx(one.per_call * one.calls)
    assert clock.estimate(4.0).seconds > one.seconds  # longer audio, more time
    assert clock.estimate(2.0, channels=2).seconds == pytest.approx(2 * one.seconds)  # stereo: two items
    takes = parallel_threads() + 1  # more takes than CPUs: they cannot all run at once
    assert clock.estimate(2.0, takes=takes).seconds == pytest.approx(2 * one.seconds)
    # a real decode: the next estimate of the same work is what it took
    out = with_mbd.generate(["lofi"], 0.5, seed=1, decoder="mbd")
    seen = with_mbd.mbd.last_decode
    assert seen is not None and seen.items == 1 and seen.seconds == out.audio.shape[-1] / with_mbd.sample_rate
    assert clock.estimate(seen.seconds).seconds == pytest.approx(seen.wall)


def test_a_stopped_decode_teaches_nothing(with_mbd: MusicGen) -> None:
    """Only a decode that ran to its end is recorded (a Stop during diffusion leaves the last one)."""
    before = with_mbd.mbd.last_decode

    def stop(step: int, total: int) -> None:
        if step > 3:
            raise KeyboardInterrupt

    codes = torch.zeros(1, 4, 10, dtype=torch.long)
    with pytest.raises(KeyboardInterrupt):
        with_mbd.mbd.decode(codes, with_mbd.codec, progress=stop)
    assert with_mbd.mbd.last_decode is before
