"""musicgen/studio/page_text.py: what the page says (here: a timeline prompt's schedule)."""

from __future__ import annotations

from musicgen.studio import catalog, page_text


def test_a_timeline_prompt_shows_its_schedule() -> None:
    """Under the prompt: each part of the piece and the prompt it is made with (window by window), or what is
    wrong with the timeline; nothing for a plain prompt."""
    shown = page_text.timeline_text("0:00 ambient pads | 0:30 drums come in | 1:10 full band", 90)
    assert shown.splitlines()[1:] == ["0:00–0:30: ambient pads  ", "0:30–0:48: drums come in  ",
                                      "0:48–1:06: drums come in  ", "1:06–1:24: drums come in  ",
                                      "1:24–1:30: full band"]
    assert "beyond the end" in page_text.timeline_text("0:00 a | 0:40 b", 30)
    assert "starts at 0:00" in page_text.timeline_text("0:10 a | 0:20 b", 90)
    assert page_text.timeline_text("lofi beat", 90) == "" and page_text.timeline_text(None, 90) == ""


def test_a_timeline_change_no_window_plays_is_said_under_the_prompt() -> None:
    shown = page_text.timeline_text("0:00 ambient pads | 0:03 drums come in", 10)
    assert "0:00–0:10: ambient pads" in shown
    assert "0:03 'drums come in' is not heard" in shown and "0:30 at the earliest" in shown
    assert "not heard" not in page_text.timeline_text("0:00 ambient pads | 0:30 drums come in", 40)


def test_the_hint_names_the_owners_model() -> None:
    owner = {m.name: m for m in catalog.parse_models("My punk=user/musicgen-punk")}
    assert "`facebook/musicgen-small`" in page_text.hint("small", False, None, "encodec", "", owner)
    assert "**My punk**: `user/musicgen-punk`" in page_text.hint("small", False, None, "encodec", "My punk", owner)
