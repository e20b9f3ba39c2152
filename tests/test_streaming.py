"""Streamed decoding: chunks from growing token prefixes must add up to the full decode.

Tolerance: the streamed samples are computed by the same layers on the same inputs, but over windows of
other lengths (conv blocking, LSTM steps in several calls), so they differ from a full decode by float32
rounding only: <= 1.4e-6 measured on these fixtures, whose pre-clamp audio reaches |x| ~ 6 (a few ulp at
that magnitude). TOL = 1e-5 leaves margin for other BLAS builds while any real mistake is far above it:
resetting the LSTM state between chunks errs by ~1e-1, one sample too little hold-back by ~1e-4.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import build_checkpoint

from musicgen import MusicGen, session
from musicgen.streaming import StreamDecoder
from musicgen.studio import parse_request

TOL = 1e-5
HOP = 640
FRAMES = 157  # 3.14 s: not a multiple of any chunk size used below


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> MusicGen:
    _, folder = build_checkpoint(tmp_path_factory.mktemp("stream") / "stereo", seed=3, audio_channels=2)
    return MusicGen.from_pretrained(Path(folder), device="cpu")


def random_tokens(mg: MusicGen, frames: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, mg.cfg.codec.codebook_size, (batch, mg.num_codebooks, frames), generator=gen)


def stream_decode(mg: MusicGen, tokens: torch.Tensor, cuts: list[int]) -> tuple[torch.Tensor, StreamDecoder]:
    dec = StreamDecoder(mg, tokens.shape[-1])
    parts = []
    for n in cuts:
        parts.append(dec.push(tokens[..., :n]))
        if n < tokens.shape[-1]:  # the hold-back rule: everything but the last `holdback` samples is out
            assert dec.emitted == max(0, n * HOP - dec.holdback)
    assert dec.done and dec.emitted == tokens.shape[-1] * HOP
    return torch.cat(parts, dim=-1), dec


def test_holdback_is_derived_from_the_layers(small: MusicGen) -> None:
    dec = StreamDecoder(small)
    # conv 0 (k7) looks 3 frames (1920 samples) ahead. In the upsampling stack every transposed conv loses
    # its left trim (4, 3, 2, 2) and every residual k3 conv 1 step at its own rate, scaled by the later
    # upsampling (x5, x4, x4), then the last k7 conv 3 samples: (((4+1)*5 + 3+1)*4 + 2+1)*4 + 2+1 + 3 = 482
    assert (dec.lookahead, dec.context) == (3, 3)
    assert dec.holdback == 3 * HOP + 482 == 2402


@pytest.mark.parametrize("n", [5, 20, 57, 150])
def test_holdback_is_the_measured_receptive_field(small: MusicGen, n: int) -> None:
    """Measured: two sequences of the same length that differ from frame n on decode (raw, unclamped) to
    bit-identical samples up to n * 640 - holdback, and the very next sample differs; and the decode of the
    n-frame prefix alone agrees with the longer one up to there (within TOL: other lengths, other rounding)."""
    a = random_tokens(small, n + 10, seed=n, batch=1)
    b = a.clone()
    b[..., n:] = random_tokens(small, 10, seed=n + 1, batch=1)
    with torch.inference_mode():
        da, db = small.codec.decode(a)[0, 0], small.codec.decode(b)[0, 0]
        prefix = small.codec.decode(a[..., :n])[0, 0]
    cut = n * HOP - StreamDecoder(small).holdback
    changed = ((da - db) != 0).nonzero()
    assert changed[0].item() == cut
    assert (prefix[:cut] - da[:cut]).abs().max() <= TOL


@pytest.mark.parametrize("cuts", [
    [FRAMES],
    [1, 2, 3, 4, 5, 9, 30, 31, 100, 156, FRAMES],
    [50, 100, FRAMES],
    list(range(1, FRAMES + 1)),
], ids=["one-push", "irregular", "every-50", "every-frame"])
def test_chunks_concatenate_to_the_full_decode(small: MusicGen, cuts: list[int]) -> None:
    tokens = random_tokens(small, FRAMES)
    streamed, _ = stream_decode(small, tokens, cuts)
    full = small.decode(tokens)
    assert streamed.shape == full.shape == (2, 1, FRAMES * HOP)
    assert (streamed - full).abs().max() <= TOL


def test_stereo_chunks_concatenate_to_the_full_decode(stereo: MusicGen) -> None:
    tokens = random_tokens(stereo, FRAMES, seed=1)
    streamed, _ = stream_decode(stereo, tokens, [7, 40, 41, 120, FRAMES])
    full = stereo.decode(tokens)
    assert streamed.shape == full.shape == (2, 2, FRAMES * HOP)
    assert (streamed - full).abs().max() <= TOL


def test_the_tolerance_catches_a_wrong_scheme(small: MusicGen) -> None:
    """Negative control: forgetting the LSTM state between chunks is far outside TOL."""
    tokens = random_tokens(small, FRAMES)
    dec, parts = StreamDecoder(small, FRAMES), []
    for n in (50, 100, FRAMES):
        parts.append(dec.push(tokens[..., :n]))
        dec._state = None
    assert (torch.cat(parts, -1) - small.decode(tokens)).abs().max() > 100 * TOL


def test_finish_without_a_known_length(small: MusicGen) -> None:
    tokens = random_tokens(small, 60, batch=1)
    dec = StreamDecoder(small)
    parts = [dec.push(tokens[..., :30]), dec.push(tokens[..., :45]), dec.finish(tokens)]
    assert (torch.cat(parts, -1) - small.decode(tokens)).abs().max() <= TOL


def test_misuse_is_reported(small: MusicGen) -> None:
    tokens = random_tokens(small, 20, batch=1)
    dec = StreamDecoder(small, 20)
    dec.push(tokens[..., :10])
    with pytest.raises(ValueError, match="growing prefix"):
        dec.push(tokens[..., :5])
    with pytest.raises(ValueError, match=r"\[B, 4, frames\]"):
        dec.push(tokens[:, :2])
    dec.push(tokens)
    with pytest.raises(ValueError, match="already returned"):
        dec.push(tokens)


# ------------------------------------------------------------------------------------------- session.run
class FakeClock:
    """One 'second' per call: every decode step looks slow, so chunks come often."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def request(duration: float = 2.0, seed: int = 5):
    return parse_request("lofi beat", duration, "small", False, "encodec", None, 250, 0.0, 1.0, 3.0, seed)


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
    direct = small.generate("lofi beat", 2.0, seed=5).audio[0].numpy()  # the result is the engine's audio
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
    req = parse_request("lofi beat", 1.0, "small", False, "mbd", None, 250, 0.0, 1.0, 3.0, 9)
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
    direct = small.generate_continuation(clip, 32000, "lofi beat", 2.0, seed=5).audio[0].numpy()
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
