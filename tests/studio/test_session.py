"""session.run, one generation for the web app: progress, audio chunks to play while the engine works (in a
worker thread), then the result; when playback may start, and what reaches the caller on errors and closing.

TOL is the streamed decoder's tolerance (test_streaming.py explains it): the chunks come from a StreamDecoder,
so they add up to the EnCodec decode within float32 rounding.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from musicgen import MusicGen, loudness
from musicgen.serve import Scheduler
from musicgen.studio import session
from musicgen.studio.request import parse_request

TOL = 1e-5


class FakeClock:
    """One 'second' per call: every decode step looks slow, so chunks come often."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def request(duration: float = 2.0, seed: int = 5, loudness: str = "none"):
    """(loudness "none": these tests compare the result with the raw decode)"""
    return parse_request("lofi beat", duration, "small", False, "encodec", None, 250, 0.0, 1.0, 3.0, seed,
                         loudness=loudness)


@pytest.mark.parametrize(("tick", "first_chunk_at"), [(0.002, 0.0), (0.05, 0.5)])
def test_run_streams_chunks_that_add_up_to_the_result(small: MusicGen, tick: float, first_chunk_at: float) -> None:
    """Fast generation (0.002 s per step: 10x real time) plays at once; slow generation (0.05 s per step,
    0.4x real time) holds the first chunk back until playback would not stall (about half-way)."""
    events = list(session.run(small, request(), clock=FakeClock(tick), chunk_seconds=0.3, max_piece=0.25))
    chunks = [e for e in events if isinstance(e, session.Chunk)]
    progress = [e for e in events if isinstance(e, session.Progress)]
    result = events[-1]
    assert isinstance(result, session.Result) and result.seed == 5 and result.audio.shape == (1, 64000)
    assert [p.done for p in progress] == sorted(p.done for p in progress) and progress[-1].done == 100
    assert len(chunks) >= 8 and all(c.audio.shape[-1] <= 0.25 * 32000 for c in chunks)
    assert [c.start for c in chunks] == list(np.cumsum([0] + [c.audio.shape[-1] for c in chunks[:-1]]))
    streamed = np.concatenate([c.audio for c in chunks], axis=-1)
    assert streamed.shape == result.audio.shape
    assert np.abs(streamed - result.audio).max() <= TOL
    direct = small.generate("lofi beat", 2.0, seed=5, normalize="none").audio[0].numpy()  # the engine's audio
    assert np.abs(result.audio - direct).max() <= TOL
    first = events.index(chunks[0])
    assert progress_before(events, first) >= first_chunk_at * 100


def progress_before(events: list, index: int) -> int:
    done = [e.done for e in events[:index] if isinstance(e, session.Progress)]
    return done[-1] if done else 0


def test_ready_to_play() -> None:
    assert session.ready_to_play(buffered=1.0, remaining=20, rate=3.0, margin=1.0)  # faster than real time
    assert not session.ready_to_play(buffered=4.0, remaining=10, rate=0.5, margin=1.0)  # lags 10 s behind
    assert session.ready_to_play(buffered=11.0, remaining=10, rate=0.5, margin=1.0)
    assert session.ready_to_play(buffered=0.0, remaining=0, rate=0.0, margin=1.0)  # all there
    assert not session.ready_to_play(buffered=5.0, remaining=1, rate=0.0, margin=1.0)  # no speed yet


def test_engine_errors_reach_the_caller(small: MusicGen, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised by the engine in the worker thread (at the call or mid-way), re-raised where run() is iterated."""
    def fails_at_once(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(MusicGen, "stream", fails_at_once)
    with pytest.raises(MemoryError, match="no room"):
        list(session.run(small, request(1.0)))
    monkeypatch.undo()
    original = MusicGen.stream

    def fails_later(self, *args, **kwargs):
        for i, item in enumerate(original(self, *args, **kwargs)):
            if i == 10:
                raise KeyError("mid-way")
            yield item

    monkeypatch.setattr(MusicGen, "stream", fails_later)
    with pytest.raises(KeyError, match="mid-way"):
        list(session.run(small, request(1.0)))


def test_run_without_streaming_and_closing_stops_the_engine(small: MusicGen) -> None:
    events = list(session.run(small, request(1.0), stream=False))
    assert not any(isinstance(e, session.Chunk) for e in events) and isinstance(events[-1], session.Result)
    it = session.run(small, request(1.0))
    assert isinstance(next(it), session.Progress)
    it.close()  # what a cancelled request does: the engine's generator is closed with it


def test_diffusion_decoder_progress_is_live(small: MusicGen, tmp_path: Path) -> None:
    """decoder="mbd": 80 diffusion steps reported while they run (the engine works in a worker thread), the
    live preview is the EnCodec decode, the result carries both versions."""
    from helpers.mbd_checkpoints import build_mbd_checkpoint

    from musicgen.diffusion import MultiBandDiffusion

    mg = MusicGen.from_pretrained(small.name, device="cpu")  # its own copy: the MBD weights stay with it
    mg.mbd = MultiBandDiffusion.from_file(build_mbd_checkpoint(tmp_path / "mbd.th", codec_dim=16), "cpu")
    req = parse_request("lofi beat", 1.0, "small", False, "mbd", None, 250, 0.0, 1.0, 3.0, 9, loudness="none")
    seen: list[tuple[float, session.Progress]] = []
    events = []
    for event in session.run(mg, req, chunk_seconds=0.1):
        events.append(event)
        if isinstance(event, session.Progress) and event.stage == "diffusion":
            seen.append((time.perf_counter(), event))
    assert [e.done for _, e in seen] == list(range(1, 81)) and {e.total for _, e in seen} == {80}
    assert seen[-1][0] - seen[0][0] > 0.1  # delivered as the steps ran, not all at the end
    res = events[-1]
    preview = np.concatenate([e.audio for e in events if isinstance(e, session.Chunk)], axis=-1)
    assert res.encodec is not None and np.abs(preview - res.encodec).max() <= TOL  # the live preview is EnCodec
    assert res.audio.shape == res.encodec.shape == (1, 32000)
    assert np.abs(res.audio - res.encodec).max() > 0.01  # the result is the diffusion decoder's

    # Stop during diffusion: closing the run at diffusion step 5 ends the decode at its next model call
    calls = []
    for band in mg.mbd.bands:
        band.unet.register_forward_hook(lambda *_: calls.append(time.perf_counter()))
    finished = mg.mbd.last_decode
    it = session.run(mg, req, stream=False)
    for event in it:
        if isinstance(event, session.Progress) and event.stage == "diffusion" and event.done == 5:
            break
    it.close()
    closed = len(calls)
    time.sleep(0.5)  # (a model call of this tiny decoder takes ~5 ms)
    assert closed <= len(calls) <= closed + 2 and len(calls) < 80
    assert mg.mbd.last_decode is finished  # the stopped decode never ended


def test_continuation_streams_the_clip_first(small: MusicGen) -> None:
    """With audio to continue, the chunks start with the clip's (re-encoded) audio and add up to the result."""
    t = np.arange(24000) / 32000
    clip = (0.4 * np.sin(2 * np.pi * 330 * t))[None].astype(np.float32)
    events = list(session.run(small, request(2.0), continuation=(clip, 32000), clock=FakeClock(0.002),
                              chunk_seconds=0.3))
    res = events[-1]
    streamed = np.concatenate([e.audio for e in events if isinstance(e, session.Chunk)], axis=-1)
    assert res.audio.shape == streamed.shape == (1, 64000)
    assert np.abs(streamed - res.audio).max() <= TOL
    direct = small.generate_continuation(clip, 32000, "lofi beat", 2.0, seed=5, normalize="none").audio[0].numpy()
    assert np.abs(res.audio - direct).max() <= TOL
    progress = [e.done for e in events if isinstance(e, session.Progress)]
    assert progress[0] >= 38 and progress[-1] == 100  # the clip's 38 frames are there from the start


def test_streaming_runs_skip_the_second_decode(small: MusicGen, monkeypatch: pytest.MonkeyPatch) -> None:
    """The StreamDecoder has every sample by the end, so the engine is asked not to decode again."""
    out = list(small.stream("lofi beat", 1.0, seed=2, decode=False))[-1]
    assert out.audio is None and out.tokens.shape == (1, 4, 50)
    calls = []
    real = MusicGen.decode
    monkeypatch.setattr(MusicGen, "decode", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    res = list(session.run(small, request(1.0)))[-1]
    assert calls == [] and res.audio.shape == (1, 32000)
    list(session.run(small, request(1.0), stream=False))  # without a StreamDecoder the engine decodes
    assert calls == [1]


def test_the_result_is_levelled_the_live_chunks_are_not(small: MusicGen) -> None:
    """Loudness needs the whole piece: the chunks play the raw decode, the result is the chosen strategy's
    level of exactly that audio."""
    events = list(session.run(small, request(1.0, loudness="peak")))
    raw = np.concatenate([e.audio for e in events if isinstance(e, session.Chunk)], axis=-1)
    res = events[-1]
    assert isinstance(res, session.Result)
    np.testing.assert_allclose(res.audio, loudness.normalize(raw, 32000, "peak"), rtol=0, atol=1e-6)
    assert abs(np.abs(res.audio).max() - 10 ** (-1 / 20)) < 1e-5


@pytest.fixture(scope="module")
def int8(checkpoints) -> MusicGen:
    """(int8: a request's tokens are bit for bit the same alone and in a batch, test_serve.py)"""
    return MusicGen.from_pretrained(checkpoints["current"][1], device="cpu", quantize="int8")


def test_takes_run_together_each_as_it_would_alone(int8: MusicGen) -> None:
    """3 takes share the scheduler's decode steps, get seeds seed, +1, +2, and each is exactly the run of its
    seed alone; only the first streams chunks."""
    sched = Scheduler(int8, max_rows=8)
    try:
        before = sched.steps
        takes = list(session.run_takes(int8, replace(request(1.0, seed=40), takes=3), engine=sched))
        steps = sched.steps - before
        # alone: through the same scheduler, as the studio runs every request (the thread counts are part of a
        # float32 result's last bits, test_serve.py)
        alone = [list(session.run(int8, request(1.0, seed=40 + k), stream=False, engine=sched))[-1] for k in range(3)]
    finally:
        sched.close()
    results = {t.index: t.event for t in takes if isinstance(t.event, session.Result)}
    assert sorted(results) == [0, 1, 2] and [results[k].seed for k in range(3)] == [40, 41, 42]
    assert {t.index for t in takes if isinstance(t.event, session.Chunk)} == {0}
    for k in range(3):  # (the first take's audio is its streamed chunks: decoded in pieces that depend on timing)
        assert np.abs(results[k].audio - alone[k].audio).max() <= (TOL if k == 0 else 0.0)
    assert not np.array_equal(results[0].audio, results[1].audio)
    frames = round(1.0 * int8.frame_rate) + int8.num_codebooks - 1
    assert steps < 1.5 * frames  # together: about one request's decode steps, not three


def test_closing_takes_stops_them_all_also_those_in_line(int8: MusicGen) -> None:
    """Room for one guided request: take 1 runs, takes 2 and 3 wait. Closing the run stops the running one at
    its next step and takes the waiting ones out of the line, without any news from the scheduler."""
    sched = Scheduler(int8, max_rows=2)
    try:
        it = session.run_takes(int8, replace(request(20.0, seed=1), takes=3), engine=sched, stream=False)
        queued = running = False
        while not (queued and running):
            t = next(it)
            queued |= isinstance(t.event, session.Progress) and t.event.stage == "queue"
            running |= isinstance(t.event, session.Progress) and t.event.stage == "frames"
        deadline = time.monotonic() + 2.0  # (each take enters the line from a thread of its own: the third may
        while sched.load != (1, 2) and time.monotonic() < deadline:  # still be on its way when the others report)
            time.sleep(0.02)
        assert sched.load == (1, 2)
        it.close()
        deadline = time.monotonic() + 2.0
        while sched.load != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sched.load == (0, 0)
    finally:
        sched.close()
