"""Pieces beyond the 30 s window, and continuations of user audio."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PROMPTS, transformers_tokens

from musicgen import InvalidInputError, MusicGen
from musicgen.generate import Generation
from musicgen.longform import Window, plan_windows
from musicgen.sampling import undelay

SR = 32000


def test_plan_windows_follows_audiocraft() -> None:
    plan = plan_windows(3750, 1500, 900)
    assert plan == [Window(0, 1500, 0), Window(900, 1500, 600), Window(1800, 1500, 600), Window(2700, 1050, 600)]
    assert sum(w.new for w in plan) == 3750
    assert plan_windows(1500, 1500, 900) == [Window(0, 1500, 0)]
    assert plan_windows(1501, 1500, 900)[-1] == Window(900, 601, 600)
    assert plan_windows(400, 1500, 900, prompt=100) == [Window(0, 400, 100)]
    for total in range(1, 5000, 37):
        plan = plan_windows(total, 1500, 900, prompt=0)
        assert sum(w.new for w in plan) == total and all(0 <= w.prompt < w.frames <= 1500 for w in plan)


def noise(seconds: float, channels: int = 1, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(channels, int(seconds * SR), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("stereo", [False, True])
def test_continuation_matches_transformers(small: MusicGen, ref_models, stereo: bool) -> None:
    ref, mg = ref_models["stereo" if stereo else "mono"]
    audio = noise(0.25, 2 if stereo else 1)
    ids, mask = mg.tokenizer(PROMPTS)
    new = 12
    with torch.no_grad():
        want = transformers_tokens(ref, ids, mask, new, input_values=audio[None].repeat(2, 1, 1))
    out = mg.generate_continuation(audio, SR, PROMPTS, (13 + new) / 50, temperature=0)
    assert torch.equal(out.tokens, want)  # the re-encoded prompt tokens included
    assert out.audio.shape == (2, mg.audio_channels, (13 + new) * 640)


@pytest.fixture(scope="module")
def ref_models(checkpoints, small: MusicGen, stereo_pair: tuple[object, MusicGen]) -> dict:
    return {"mono": (checkpoints["current"][0], small), "stereo": stereo_pair}


def test_continuation_resamples_and_errors(small: MusicGen) -> None:
    out = small.generate_continuation(noise(0.5, 2)[:, : 22050 // 2].numpy(), 22050, ["jazz"], 1.0, seed=1)
    assert out.tokens.shape == (1, 4, 50)
    with pytest.raises(InvalidInputError, match="shorter than the model's 30 s window"):
        small.generate_continuation(torch.ones(31 * 8000) * 0.1, 8000, ["a"], 40)
    with pytest.raises(InvalidInputError, match="silent"):
        small.generate_continuation(torch.zeros(SR), SR, ["a"], 2)
    with pytest.raises(InvalidInputError, match="empty"):
        small.generate_continuation(torch.zeros(0), SR, ["a"], 2)
    with pytest.raises(InvalidInputError, match="longer than the prompt audio"):
        small.generate_continuation(noise(1.0), SR, ["a"], 0.5)


@pytest.fixture(scope="module")
def long_piece(small: MusicGen) -> dict:
    """A 75 s piece with every window's prompt and output captured, and the progress calls."""
    windows: list[tuple[torch.Tensor | None, torch.Tensor, int]] = []
    start, advance = Generation._start, Generation.advance
    prompts: dict[int, torch.Tensor | None] = {}

    def spy_start(self: Generation, index: int) -> None:  # the prompt each window is given
        start(self, index)
        w = self.plan[index]
        prompts[index] = self.piece[..., w.offset : w.offset + w.prompt].clone() if w.prompt else None

    def spy_advance(self: Generation, logits: torch.Tensor) -> None:  # each window's tokens when it ends
        index, seq, w = self.window, self.seq, self.w
        advance(self, logits)
        if self.done or self.window != index:
            windows.append((prompts[index], undelay(seq, self.delays, w.frames), w.frames))

    calls: list[tuple[int, int]] = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Generation, "_start", spy_start)
        m.setattr(Generation, "advance", spy_advance)
        out = small.generate(["ambient drone"], 75, seed=5, progress=lambda s, t: calls.append((s, t)))
    return {"out": out, "windows": windows, "calls": calls}


def test_long_piece_length_and_seams(long_piece: dict) -> None:
    out, windows = long_piece["out"], long_piece["windows"]
    assert out.tokens.shape == (1, 4, 3750) and out.audio.shape == (1, 1, 3750 * 640)
    assert [w[2] for w in windows] == [1500, 1500, 1500, 1050]
    offset = 0
    for prompt, tokens, _ in windows[1:]:
        offset += 900
        assert prompt.shape[-1] == 600
        assert torch.equal(tokens[..., :600], prompt)  # the window starts exactly with its prompt
        assert torch.equal(prompt, out.tokens[..., offset : offset + 600])  # ... the previous window's tail
        assert torch.equal(tokens[..., 600:], out.tokens[..., offset + 600 : offset + tokens.shape[-1]])


def test_long_piece_progress_and_seed(small: MusicGen, long_piece: dict) -> None:
    calls = long_piece["calls"]
    steps, totals = zip(*calls)
    assert len(set(totals)) == 1 and steps[-1] == totals[0]
    assert list(steps) == sorted(set(steps))  # strictly increasing: 100 % is reached exactly once
    again = small.generate(["ambient drone"], 75, seed=5)
    assert torch.equal(again.tokens, long_piece["out"].tokens)


def test_positions_stay_within_the_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A melody model's prefix [chroma | text] plus a full window fits max_positions, long prompts included."""
    from helpers.melody_checkpoints import build_melody_checkpoint

    _, folder = build_melody_checkpoint(tmp_path_factory.mktemp("pos") / "m", seed=1)
    mg = MusicGen.from_pretrained(folder, device="cpu")
    highest = []
    forward = mg.lm.forward

    def spy(codes, pos, cache, cond):
        highest.append(int(pos) + codes.shape[-1])  # cache slots; positions are at most the slots
        return forward(codes, pos, cache, cond)

    mg.lm.forward = spy
    words = " ".join(["piano drums bass guitar"] * 200)
    with pytest.warns(UserWarning, match="keeping the first"):
        mg.generate([words], 31, seed=0, melody=(torch.sin(torch.arange(SR) * 2 * math.pi * 440 / SR), SR))
    assert max(highest) <= mg.cfg.lm.max_positions
