"""Continuous batching: requests that join and leave a running batch get their solo tokens bit for bit."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from helpers.melody_checkpoints import build_melody_checkpoint

from musicgen import InvalidInputError, MusicGen
from musicgen.pipeline import GenerationOutput, StreamStep
from musicgen.serve import Queued, Scheduler, SlotCache, generate_takes

SR = 32000


@pytest.fixture(scope="module")
def int8(checkpoints) -> MusicGen:
    return MusicGen.from_pretrained(checkpoints["current"][1], device="cpu", quantize="int8")


@pytest.fixture(scope="module")
def mel8(tmp_path_factory: pytest.TempPathFactory) -> MusicGen:
    _, folder = build_melody_checkpoint(tmp_path_factory.mktemp("serve-mel") / "m", seed=11)
    return MusicGen.from_pretrained(Path(folder), device="cpu", quantize="int8")


def tone(seconds: float, hz: float = 220.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return 0.4 * torch.sin(2 * torch.pi * hz * t) + 0.2 * torch.sin(2 * torch.pi * 1.5 * hz * t)


def run_staggered(sched: Scheduler, requests: list[tuple[int, str | list[str], dict]],
                  outputs: list[GenerationOutput] | None = None) -> list[torch.Tensor]:
    """Each (join_at, prompts, options) is submitted from its own thread once the loop has run `join_at`
    decode steps; -> their tokens, in order (and their whole outputs into `outputs`)."""
    out: list[GenerationOutput | BaseException | None] = [None] * len(requests)

    def client(i: int, join_at: int, prompts: str | list[str], kw: dict) -> None:
        while sched.steps < join_at:
            time.sleep(0.0005)
        try:
            out[i] = sched.generate(prompts, **kw)
        except BaseException as e:
            out[i] = e

    threads = [threading.Thread(target=client, args=(i, *r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for o in out:
        if isinstance(o, BaseException):
            raise o
    if outputs is not None:
        outputs.extend(out)  # type: ignore[arg-type]
    return [o.tokens for o in out]  # type: ignore[union-attr]


def solo(mg: MusicGen, prompts: str | list[str], kw: dict) -> torch.Tensor:
    return mg.generate(prompts, **kw).tokens


REQUESTS = [  # (join at step, prompts, options): greedy, sampled with seeds, top-p, no guidance, continuation
    (0, "lofi hip hop beat", {"duration": 3.0, "temperature": 0}),
    (15, "80s synthwave", {"duration": 2.0, "seed": 1}),
    (40, ["jazz trio", "techno"], {"duration": 1.5, "seed": 2, "top_k": 50, "temperature": 1.3, "cfg_coef": 5.0}),
    (60, "ambient", {"duration": 1.0, "seed": 3, "top_p": 0.9}),
    (70, "folk", {"duration": 1.2, "seed": 4, "cfg_coef": 1.0}),
    (80, "piano", {"duration": 2.0, "seed": 5, "continue_from": (tone(0.6), SR)}),
]


def test_staggered_requests_get_their_solo_tokens_and_audio(int8: MusicGen) -> None:
    """Tokens and audio: the loop decodes each request's EnCodec audio chunk by chunk as it generates, at the
    cuts `MusicGen.decode` makes, so the samples are those of the request alone."""
    want = [int8.generate(p, **kw) for _, p, kw in REQUESTS]
    sched = Scheduler(int8, max_rows=16)
    outputs: list[GenerationOutput] = []
    decodes = []
    real = int8.decode
    int8.decode = lambda *a, **k: decodes.append(1) or real(*a, **k)  # type: ignore[method-assign]
    try:
        got = run_staggered(sched, REQUESTS, outputs)
        assert sched.peak_rows >= 6  # they did share decode steps
    finally:
        sched.close()
        del int8.decode
    assert len(decodes) == 1  # the 1 s piece: one chunk of 50 frames is one pass, decoded after its last step
    for (_, _, kw), w, g, o in zip(REQUESTS, want, got, outputs, strict=True):
        assert g.shape == w.tokens.shape == (w.tokens.shape[0], 4, round(kw["duration"] * 50))
        assert torch.equal(g, w.tokens), kw
        assert torch.equal(o.audio, w.audio), kw


def test_a_long_piece_among_short_ones(int8: MusicGen) -> None:
    """A 34 s piece (two windows: its second one is prepared while the others keep stepping) beside short
    requests that join during its first and its second window."""
    requests = [(0, "drum and bass", {"duration": 34.0, "seed": 8, "extend_stride": 25.0}),
                (100, "bossa nova", {"duration": 2.0, "seed": 9}),
                (1500, "reggae", {"duration": 1.0, "seed": 10, "temperature": 0})]
    want = [solo(int8, p, kw) for _, p, kw in requests]
    sched = Scheduler(int8, max_rows=8)
    try:
        got = run_staggered(sched, requests)
    finally:
        sched.close()
    for w, g in zip(want, got, strict=True):
        assert torch.equal(g, w)


def test_melody_requests_get_their_solo_tokens(mel8: MusicGen) -> None:
    requests = [(0, "a tune", {"duration": 2.0, "seed": 1, "melody": (tone(3.0), SR)}),
                (10, "a much longer text prompt with several more tokens in it", {"duration": 1.5, "seed": 2}),
                (25, "x", {"duration": 1.0, "temperature": 0, "melody": (tone(2.0, 330.0), SR)}),
                (30, "continue", {"duration": 1.6, "seed": 3, "continue_from": (tone(0.5, 440.0), SR)})]
    want = [solo(mel8, p, kw) for _, p, kw in requests]
    sched = Scheduler(mel8, max_rows=8)
    try:
        got = run_staggered(sched, requests)
        assert sched.peak_rows >= 4
    finally:
        sched.close()
    for w, g in zip(want, got, strict=True):
        assert torch.equal(g, w)


def test_cancelling_one_of_three_leaves_the_others_unchanged(int8: MusicGen) -> None:
    kws = [{"duration": 2.0, "seed": s} for s in (21, 22, 23)]
    want = [solo(int8, "house", kw) for kw in kws]
    sched = Scheduler(int8, max_rows=6)
    got: dict[int, torch.Tensor] = {}

    def client(i: int) -> None:
        got[i] = sched.generate("house", **kws[i]).tokens

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in (0, 2)]
        for t in threads:
            t.start()
        events = sched.stream("house", **kws[1])
        for event in events:
            if isinstance(event, StreamStep) and event.step >= 20:
                break
        events.close()  # the cancel: its rows are freed at the next step
        for t in threads:
            t.join(timeout=120)
        assert sched.load == (0, 0) and all(sched.cache.free)
    finally:
        sched.close()
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])


def test_full_batch_queues_in_order_and_reuses_rows(int8: MusicGen) -> None:
    """Two rows per guided request: with 4 rows the third waits (told its place), then takes freed rows."""
    sched = Scheduler(int8, max_rows=4)
    try:
        first = [sched.stream("a", duration=20.0, seed=i) for i in range(2)]
        for s in first:
            while not isinstance(next(s), StreamStep):
                pass
        third = sched.stream("c", duration=0.5, seed=3)
        event = next(third)
        assert event == Queued(0) and sched.load == (2, 1)
        first[0].close()  # a cancel frees two rows: the third joins
        rest = list(third)
        assert isinstance(rest[-1], GenerationOutput) and isinstance(list(first[1])[-1], GenerationOutput)
        assert torch.equal(rest[-1].tokens, solo(int8, "c", {"duration": 0.5, "seed": 3}))
    finally:
        sched.close()


def test_takes_are_made_together_with_consecutive_seeds(int8: MusicGen) -> None:
    """serve.generate_takes (the CLI's --takes, and Python's): take k is its seed's piece alone."""
    seen: set[int] = set()
    outs = generate_takes(int8, "folk", 3, 1.0, seed=70, progress=lambda k, step, total: seen.add(k))
    assert [o.seed for o in outs] == [70, 71, 72] and seen == {0, 1, 2}
    for o in outs:
        assert torch.equal(o.tokens, solo(int8, "folk", {"duration": 1.0, "seed": o.seed}))
    assert not torch.equal(outs[0].tokens, outs[1].tokens)
    with pytest.raises(InvalidInputError, match="takes must be a whole number from 1 to 4"):
        generate_takes(int8, "folk", 5, 1.0)


def test_memory_stays_bounded_over_many_joins(int8: MusicGen) -> None:
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096

    sched = Scheduler(int8, max_rows=8)
    try:
        joins = [(i * 3, f"prompt {i}", {"duration": 0.3 + 0.02 * i, "seed": i}) for i in range(50)]
        run_staggered(sched, joins)  # warm up: allocator arenas and caches of the loop thread (~95 MB the 1st time)
        sched.steps = 0
        before = rss()
        run_staggered(sched, joins)
        assert all(sched.cache.free) and sched.load == (0, 0)
        assert rss() - before < 64 << 20
    finally:
        sched.close()


def test_bad_requests_fail_alone(int8: MusicGen) -> None:
    sched = Scheduler(int8, max_rows=4)
    try:
        with pytest.raises(InvalidInputError, match="at most 4"):
            sched.generate(["a", "b", "c"], duration=0.5)
        with pytest.raises(InvalidInputError, match="duration"):
            sched.generate("a", duration=-1)
        assert torch.equal(sched.generate("a", duration=0.4, seed=5).tokens,
                           solo(int8, "a", {"duration": 0.4, "seed": 5}))
    finally:
        sched.close()


def test_slot_cache_first_fit() -> None:
    class Tiny:
        class cfg:  # noqa: N801 (a stand-in config)
            class lm:  # noqa: N801
                num_layers, num_heads, head_dim = 1, 1, 2

        device, lm = torch.device("cpu"), type("L", (), {"dtype": torch.float32, "cache_dtype": torch.float32})()

    cache = SlotCache(Tiny, 6, 4)  # type: ignore[arg-type]
    assert cache.take(2) == 0 and cache.take(2) == 2 and cache.take(4) is None
    cache.give(0, 2)
    assert cache.take(4) is None and cache.take(2) == 0 and cache.take(2) == 4 and cache.take(1) is None
    assert cache.view(2, 2, 3).k.shape == (1, 2, 1, 3, 2)


def test_the_decode_loop_owns_the_intra_op_threads(int8: MusicGen) -> None:
    """The loop thread runs with the requested threads; threads that start using torch later run inline (one
    OpenMP pool in the process, so libgomp keeps spinning between parallel regions)."""
    threads = torch.get_num_threads()
    sched = Scheduler(int8, max_rows=2, threads=2)
    try:
        sched.generate("a", duration=0.2, seed=0)
        assert sched.loop_threads == 2
        seen: list[int] = []
        later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        later.start()
        later.join()
        assert seen == [1]
    finally:
        sched.close()
        torch.set_num_threads(threads)
