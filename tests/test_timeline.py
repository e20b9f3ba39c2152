"""Prompt timelines (musicgen/timeline.py): the syntax, its checks, the schedule of windows, and a long piece
whose prompt changes at a window boundary."""

from __future__ import annotations

import pytest
import torch

from musicgen import InvalidInputError, MusicGen, timeline
from musicgen import prepare as preparation
from musicgen.options import options

SYNTAX = "0:00 ambient pads | 0:30 drums come in"


def test_parse_times_and_prompts() -> None:
    assert timeline.parse("0:00 ambient pads | 0:30 drums come in | 1:10 full band, big chorus") == [
        (0.0, "ambient pads"), (30.0, "drums come in"), (70.0, "full band, big chorus")]
    assert timeline.parse("0 strings|45 brass  |  60s choir, 1:10 long") == [
        (0.0, "strings"), (45.0, "brass"), (60.0, "choir, 1:10 long")]
    assert timeline.parse("  0:00 solo piano") == [(0.0, "solo piano")]  # one entry: m:ss says it is a time
    assert timeline.parse("0 a | 0:12.5 b | 13.25s c") == [(0.0, "a"), (12.5, "b"), (13.25, "c")]
    assert timeline.parse("0:00 pads |\n\n  0:30 drums\r\n1:00 choir") == [(0.0, "pads"), (30.0, "drums"),
                                                                          (60.0, "choir")]  # one per line


@pytest.mark.parametrize("text", ["80s synthwave", "90s hip hop, 120 bpm", "lofi hip hop beat", "", "3 violins",
                                  "0:00ambient", "drums | bass", "1970s funk"])
def test_plain_prompts_are_not_timelines(text: str) -> None:
    assert timeline.parse(text) is None


@pytest.mark.parametrize(("text", "message"), [
    ("0:30 a | 1:00 b", r"a timeline starts at 0:00, this one at 0:30"),
    ("80s synthwave | 90s grunge", r"a timeline starts at 0:00, this one at 1:20"),
    ("0:00 a | 0:30 b | 0:20 c", r"times must increase: 0:20 \('c'\) comes after 0:30"),
    ("0:00 a | 0:30 b | 30 c", r"times must increase: 0:30 \('c'\) comes after 0:30"),
    ("0:00 a | drums", r"entry 2 \('drums'\) does not start with a time"),
    ("0:00 a || 0:30 b", r"entry 2 is empty"),
    ("0:00 a | 0:30", r"entry 2 \(0:30\) has no prompt: say what plays from 0:30 on"),
    ("0:00 a | 1:75 b", r"entry 2: '1:75' is not a time; write m:ss \(1:05\) or seconds \(65 or 65s\)"),
    ("0:00 a | 1:2:03 b", r"'1:2:03' is not a time"),
])
def test_malformed_timelines_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        timeline.parse(text)
    if "starts at" in message or "entry" in message:
        assert SYNTAX in str(info.value) or "put the entries" in str(info.value)


def test_check_and_in_force() -> None:
    entries = timeline.check([(0, "a"), (30, " b "), (70.5, "c")], 80)
    assert entries == [(0.0, "a"), (30.0, "b"), (70.5, "c")]
    assert [timeline.in_force(entries, s) for s in (0, 29.99, 30, 70, 70.5, 200)] == ["a", "a", "b", "b", "c", "c"]
    for bad, message in [
        ([(0, "a"), (80, "b")], r"entry 1:20 \('b'\) is at or beyond the end of the 80 s piece"),
        ([(0, "a"), (90, "b")], "at or beyond the end"),
        ([(5, "a")], "starts at 0:00, this one at 0:05"),
        ([(0, "a"), (20, "b"), (10, "c")], "must increase"),
        ([(0, "a"), (20, "")], r"entry 2 \(0:20\) has no prompt"),
        ([(0, "a"), (-1, "b")], "the time must be a number of seconds >= 0"),
        ([(0, "a"), ("0:30", "b")], "the time must be a number"),
        ([(0, "a", "b")], "must be a .seconds, prompt. pair"),
        ([], "non-empty list"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            timeline.check(bad, 80)


def test_pieces_turn_every_kind_of_prompts_into_timelines() -> None:
    assert timeline.pieces("lofi", 10) == [[(0.0, "lofi")]]
    assert timeline.pieces(["a ", "", "0:00 x | 0:05 y"], 10) == [[(0.0, "a ")], [(0.0, "")], [(0.0, "x"), (5.0, "y")]]
    assert timeline.pieces([(0, "x"), (5, "y")], 10) == [[(0.0, "x"), (5.0, "y")]]
    with pytest.raises(InvalidInputError, match="not a mix"):
        timeline.pieces(["a", (0, "x")], 10)
    with pytest.raises(InvalidInputError, match="beyond the end of the 10 s piece"):
        timeline.pieces(["0:00 x | 0:10 y"], 10)
    with pytest.raises(InvalidInputError, match="non-empty list"):
        timeline.pieces([], 10)


def test_schedule_lists_each_window_with_its_prompt() -> None:
    """Each window plays the prompt in force where its new audio starts (windows of 30 s, `stride` apart)."""
    assert timeline.schedule([(0, "a"), (20, "b")], 40, 10) == [(0.0, 30.0, "a"), (30.0, 40.0, "b")]
    three = [(0, "a"), (30, "b"), (60, "c")]  # default stride 18: new audio at 0, 30, 48, 66 s
    assert timeline.schedule(three, 75, 18) == [(0.0, 30.0, "a"), (30.0, 48.0, "b"), (48.0, 66.0, "b"),
                                                (66.0, 75.0, "c")]
    assert timeline.schedule(three, 20, 18) == [(0.0, 20.0, "a")]  # one window: one prompt
    assert timeline.schedule([(0, "a"), (4, "b")], 40, 10, head=5) == [(5.0, 30.0, "b"), (30.0, 40.0, "b")]
    assert [timeline.fmt(s) for s in (0, 75, 12.5, 59.96, 600)] == ["0:00", "1:15", "0:12.5", "1:00", "10:00"]


def test_prepare_encodes_each_set_of_prompts_once(small: MusicGen, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    encode = small.encode_text
    monkeypatch.setattr(small, "encode_text", lambda prompts: calls.append(prompts) or encode(prompts))
    gen, _ = preparation.prepare(small, ["0:00 a | 0:20 b", "c"], options(duration=75, extend_stride=10))
    assert calls == [["a", "c"], ["b", "c"]] and len(gen.plan) == 6
    assert gen.batch == gen.text.shape[0] == 2 and gen.rows == 4
    first, later = gen.text_of(gen.plan[0]), [gen.text_of(w) for w in gen.plan[1:]]
    assert not torch.equal(first[0], later[0][0]) and all(t is later[0] for t in later)
    calls.clear()
    preparation.prepare(small, [(0, "a"), (20, "b")], options(duration=40, extend_stride=10))  # one piece, as pairs
    assert calls == [["a"], ["b"]]
    calls.clear()
    preparation.prepare(small, ["lofi", "jazz"], options(duration=75))  # no timeline: one encoding, as before
    assert calls == [["lofi", "jazz"]]


def test_a_timeline_changes_the_windows_after_its_change(small: MusicGen) -> None:
    """A 40 s piece (windows 0-30 s and 10-40 s, stride 10), seed 3: plain "a", and a timeline changing at 20 s:
    the first window is the same, the second (its new audio from 30 s) plays "b"."""
    kw = {"seed": 3, "extend_stride": 10, "normalize": "none"}
    plain, changed = small.generate("a", 40, **kw).tokens, small.generate("0:00 a | 0:20 b", 40, **kw).tokens
    assert plain.shape == changed.shape == (1, 4, 2000)
    assert torch.equal(changed[..., :1500], plain[..., :1500])  # the first window: "a", as without a timeline
    assert not torch.equal(changed[..., 1500:], plain[..., 1500:])  # the second window plays "b"


def test_an_entry_beyond_the_piece_is_refused(small: MusicGen) -> None:
    with pytest.raises(InvalidInputError, match=r"0:20 \('b'\) is at or beyond the end of the 20 s piece"):
        small.generate("0:00 a | 0:20 b", 20)
    with pytest.raises(InvalidInputError, match="starts at 0:00"):
        small.generate([(10, "a")], 20)


def test_melody_models_change_their_prefix_text(mel: MusicGen, monkeypatch: pytest.MonkeyPatch) -> None:
    """Melody models read the text in their prefix: a longer prompt from the second window on makes it longer.
    (1 s windows instead of 30 s, so that this tiny melody model makes three of them quickly.)"""
    monkeypatch.setattr(preparation, "WINDOW", 1.0)
    kw = {"seed": 1, "extend_stride": 0.6, "normalize": "none"}  # 2 s: new audio at 0, 1, 1.6 s
    prefixes: list[int] = []
    condition = mel.lm.condition
    monkeypatch.setattr(mel.lm, "condition", lambda *a: prefixes.append((c := condition(*a)).prefix_len) or c)
    plain = mel.generate("a", 2, **kw).tokens
    changed = mel.generate("0:00 a | 0:01 drums and a loud brass section", 2, **kw).tokens
    assert prefixes[3] == prefixes[0] < prefixes[4] == prefixes[5]  # [chroma | text]: "a", then the longer one
    assert torch.equal(changed[..., :50], plain[..., :50])
    assert not torch.equal(changed[..., 50:], plain[..., 50:])


def test_a_change_no_window_plays_is_named_with_its_earliest_time() -> None:
    """Issue 20: "0:00 ambient pads | 0:03 drums come in" for 10 s is one window playing "ambient pads": the
    change is named, with the earliest time a change at 0:03 can take effect (the second window, at 0:30)."""
    (note,) = timeline.unheard(timeline.parse("0:00 ambient pads | 0:03 drums come in"), 10, 18)
    assert note.startswith("0:03 'drums come in' is not heard") and "0:30 at the earliest" in note
    assert "the 10 s piece ends before that" in note
    (note,) = timeline.unheard(timeline.parse("0:00 a | 0:40 b | 0:45 c"), 60, 18)  # new audio at 0, 30, 48 s
    assert note.startswith("0:40 'b'") and "0:48 at the earliest" in note and "0:45 'c' is in force" in note
    assert timeline.unheard(timeline.parse("0:00 a | 0:35 b"), 60, 18) == []  # heard from 0:48
    (note,) = timeline.unheard(timeline.parse("0:00 a | 0:02 b"), 10, 18, head=3)  # continuing 3 s of audio
    assert "(0:03 in this piece)" in note
