"""Prompt timelines: a long piece whose description changes over time.

A timeline is written "0:00 ambient pads | 0:30 drums come in | 1:10 full band, big chorus": entries split
by "|" (or written one per line), each a time stamp then the prompt from that time on. Times are m:ss
("1:10") or seconds ("70", "70s", "12.5"). The first entry is at 0, times increase strictly, every prompt says
something, and no time is at or beyond the piece's duration. In Python a timeline may also be given as a list
of (seconds, prompt) pairs: `[(0, "ambient pads"), (30, "drums come in")]`.

How it is played: the piece is made window by window (longform.py: 30 s windows, each new one `extend_stride`
seconds after the previous, prompted with its tail), and a window is conditioned on ONE text. Each window
gets the prompt in force where its new audio starts (the first window: at 0, or where the audio to continue
ends; a later one: at its start plus its prompt, i.e. where the previous window ended). So a change is heard
from the first window boundary at or after its time: with the default 18 s stride the new audio starts at
0, 30, 48, 66, ... s; a piece of at most 30 s is one window, and only the prompt at its start is used.
`schedule` lists which prompt each window plays.

"80s synthwave" or "90s hip hop" are plain prompts, not timelines: a text is a timeline when it starts with a
time stamp written m:ss, or with any time stamp and holds a "|".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .errors import InvalidInputError
from .longform import plan_windows
from .options import WINDOW, check_prompts

Entry = tuple[float, str]  # (seconds from the start of the piece, the prompt from then on)
Timeline = list[Entry]
Prompts = str | Sequence[str] | Sequence[tuple[float, str]]  # what MusicGen.generate takes as prompts
FRAME_RATE = 50.0  # EnCodec frames per second of the released MusicGen models (32 kHz / hop 640)
SYNTAX = '"0:00 ambient pads | 0:30 drums come in | 1:10 full band" (times m:ss or seconds such as 45 or 45s)'

_STAMP = re.compile(r"\d[\d:.]*s?")  # what looks like a time stamp; `_seconds` says whether it is one
_TIME = re.compile(r"(?:(\d+):([0-5]\d(?:\.\d+)?)|(\d+(?:\.\d+)?)s?)")


def fmt(seconds: float) -> str:
    """Seconds as the timeline writes them: 75 -> "1:15", 12.5 -> "0:12.5" (to a tenth of a second)."""
    m, s = divmod(round(seconds, 1), 60)
    return f"{int(m)}:{s:02.0f}" if s == int(s) else f"{int(m)}:{s:04.1f}"


def _leading(text: str) -> str | None:
    """The time stamp the text starts with (followed by a space, a "|" or the end), or None."""
    m = _STAMP.match(text.lstrip())
    if m is None:
        return None
    rest = text.lstrip()[m.end() :]
    return m.group() if not rest or rest[0].isspace() or rest[0] == "|" else None


def _seconds(stamp: str, entry: int) -> float:
    m = _TIME.fullmatch(stamp)
    if m is None:
        raise InvalidInputError(f"timeline entry {entry}: {stamp!r} is not a time; write m:ss (1:05) or seconds "
                                f"(65 or 65s). A timeline is written {SYNTAX}")
    if m.group(3) is not None:
        return float(m.group(3))
    return 60 * int(m.group(1)) + float(m.group(2))


def parse(text: str) -> Timeline | None:
    """The timeline a text writes, or None for a plain prompt (see the module docstring). A text that starts
    like a timeline but is not one raises InvalidInputError saying what is wrong and showing the syntax."""
    stamp = _leading(text)
    if stamp is None or (":" not in stamp and "|" not in text):
        return None
    lines = (line.strip().strip("|") for line in text.splitlines())  # one entry per line is as good as "|"
    text = " | ".join(line for line in lines if line.strip())
    entries: Timeline = []
    for i, part in enumerate(text.split("|"), start=1):
        stamp = _leading(part)
        if stamp is None:
            what = "is empty" if not part.strip() else f"({part.strip()!r}) does not start with a time"
            raise InvalidInputError(f"timeline entry {i} {what}: every entry is a time then a prompt, as in "
                                    f"{SYNTAX}")
        seconds = _seconds(stamp, i)
        prompt = part.lstrip()[len(stamp) :].strip()
        if not prompt:
            raise InvalidInputError(f"timeline entry {i} ({fmt(seconds)}) has no prompt: say what plays from "
                                    f"{fmt(seconds)} on, as in {SYNTAX}")
        entries.append((seconds, prompt))
    _check_order(entries)
    return entries


def _check_order(entries: Timeline) -> None:
    """Starts at 0, strictly increasing, prompts non-empty strings."""
    for i, (t, p) in enumerate(entries, start=1):
        if not isinstance(p, str) or not p.strip():
            raise InvalidInputError(f"timeline entry {i} ({fmt(t)}) has no prompt: every entry says what plays "
                                    "from its time on")
    if entries[0][0] != 0:
        raise InvalidInputError(f"a timeline starts at 0:00, this one at {fmt(entries[0][0])}: say what plays from "
                                f"the start, as in {SYNTAX}")
    for (t0, _), (t1, p1) in zip(entries, entries[1:]):
        if t1 <= t0:
            raise InvalidInputError(f"timeline times must increase: {fmt(t1)} ({p1!r}) comes after {fmt(t0)}; "
                                    "put the entries in order of time, each at a different time")


def check(entries: Sequence[tuple[float, str]], duration: float) -> Timeline:
    """A timeline given as (seconds, prompt) pairs, checked for a piece of `duration` seconds: at least one
    entry, the first at 0, times strictly increasing and before the end, prompts non-empty. Returns it as
    a list of (float, str)."""
    if isinstance(entries, str) or not isinstance(entries, Sequence) or len(entries) == 0:
        raise InvalidInputError(f"a timeline is a non-empty list of (seconds, prompt) pairs, or a text such as "
                                f"{SYNTAX}")
    out: Timeline = []
    for i, e in enumerate(entries, start=1):
        if not isinstance(e, (tuple, list)) or len(e) != 2:
            raise InvalidInputError(f"timeline entry {i} must be a (seconds, prompt) pair, got {e!r}")
        t, p = e
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise InvalidInputError(f"timeline entry {i}: the time must be a number of seconds >= 0, got {t!r}")
        if not isinstance(p, str):
            raise InvalidInputError(f"timeline entry {i}: the prompt must be a string, got {type(p).__name__}")
        out.append((float(t), p.strip()))
    _check_order(out)
    for t, p in out:
        if t >= duration:
            raise InvalidInputError(f"timeline entry {fmt(t)} ({p!r}) is at or beyond the end of the "
                                    f"{duration:g} s piece: make the piece longer or move the entry earlier")
    return out


def in_force(entries: Sequence[tuple[float, str]], seconds: float) -> str:
    """The prompt of the last entry at or before `seconds` (the first one's before it)."""
    prompt = entries[0][1]
    for t, p in entries:
        if t > seconds + 1e-6:  # window starts are whole frames: 1e-6 s absorbs their rounding only
            break
        prompt = p
    return prompt


def pieces(prompts: Prompts, duration: float) -> list[Timeline]:
    """MusicGen.generate's prompts -> one checked timeline per piece: a str or a list of str (each a plain
    prompt, "" = unconditional, or a timeline text), or one timeline as (seconds, prompt) pairs. A plain
    prompt is [(0.0, prompt)], kept exactly as given."""
    if isinstance(prompts, Sequence) and not isinstance(prompts, str) and len(prompts) > 0 and all(
            isinstance(p, (tuple, list)) for p in prompts):
        return [check(prompts, duration)]  # type: ignore[arg-type]
    if isinstance(prompts, Sequence) and not isinstance(prompts, str) and any(
            isinstance(p, (tuple, list)) for p in prompts):
        raise InvalidInputError("prompts are strings, or ONE timeline of (seconds, prompt) pairs, not a mix; "
                                f"for several pieces with timelines give texts such as {SYNTAX}")
    out = []
    for p in check_prompts(prompts):  # type: ignore[arg-type]
        entries = parse(p)
        out.append([(0.0, p)] if entries is None else check(entries, duration))
    return out


def window_starts(duration: float, extend_stride: float, head: float = 0.0,
                  frame_rate: float = FRAME_RATE) -> list[tuple[float, float]]:
    """(where its new audio starts, where it ends) in seconds for each window of a `duration` s piece
    (longform.plan_windows with the 30 s window; `head`: seconds of audio to continue the piece starts with)."""
    frames, window = round(duration * frame_rate), round(WINDOW * frame_rate)
    plan = plan_windows(frames, window, round(extend_stride * frame_rate), round(head * frame_rate))
    return [((w.offset + w.prompt) / frame_rate, (w.offset + w.frames) / frame_rate) for w in plan]


def schedule(entries: Sequence[tuple[float, str]], duration: float, extend_stride: float, *, head: float = 0.0,
             frame_rate: float = FRAME_RATE) -> list[tuple[float, float, str]]:
    """For each window of the piece: (start s, end s, its prompt), where start is where its new audio starts
    (the window before it covers up to there; the first starts at 0 or at the end of `head` s of audio to
    continue) and its prompt is the one in force there. The spans tile the piece. E.g. 40 s with stride 10:
    "0:00 a | 0:20 b" -> [(0, 30, "a"), (30, 40, "b")]."""
    return [(start, end, in_force(entries, start)) for start, end in window_starts(duration, extend_stride, head,
                                                                                     frame_rate)]


def unheard(entries: Sequence[tuple[float, str]], duration: float, extend_stride: float, *, head: float = 0.0,
            frame_rate: float = FRAME_RATE) -> list[str]:
    """A sentence for each entry that no window of the piece plays (see the module docstring: a change is heard
    from the first window start at or after its time), naming it and the earliest time it could take effect."""
    spans = schedule(entries, duration, extend_stride, head=head, frame_rate=frame_rate)
    played = {max(t for t, _ in entries if t <= a + 1e-6) for a, _, _ in spans}  # the entry each window plays
    notes = []
    for t, p in entries:
        if t in played:
            continue
        # window starts do not depend on the length of the piece beyond them: plan a piece long enough to reach t
        longer = window_starts(max(duration, t) + WINDOW + extend_stride, extend_stride, head, frame_rate)
        earliest = next(a for a, _ in longer if a >= t - 1e-6)
        later = [(u, q) for u, q in entries if t < u <= earliest + 1e-6]
        where = ", ".join(fmt(a) for a, _, _ in spans)
        why = (f"by then {fmt(later[-1][0])} {later[-1][1]!r} is in force" if later else
               f"the {duration:g} s piece ends before that" if earliest >= duration else "")
        notes.append(f"{fmt(t)} {p!r} is not heard: a window plays the prompt in force where its new audio starts "
                     f"({where} in this piece), so this change would take effect at {fmt(earliest)} at the earliest"
                     f"{', but ' + why if why else ''}")
    return notes
