"""What the studio's page says: the status line and its progress bar, the summary of a result, a timeline
prompt's schedule, the expected wait before a diffusion decode, the model hint. Pure functions of the
request and the engine's events (HTML or Markdown strings), no Gradio."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .. import timeline
from ..errors import MusicGenError
from ..options import EXTEND_STRIDE
from . import catalog, session, waits

if TYPE_CHECKING:
    from .backend import Job

CSS = """
#generate-row button { min-height: 3rem; }
.mg-status { font-size: var(--text-md); padding: 4px 2px; }
.mg-track { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; margin-top: 6px; }
.mg-fill { height: 100%; background: var(--color-accent); transition: width 0.2s linear; }
.mg-busy .mg-fill { width: 30% !important; animation: mg-slide 1.2s ease-in-out infinite; }
@keyframes mg-slide { from { margin-left: -30%; } to { margin-left: 100%; } }
.mg-error, .mg-error * { color: #dc2626 !important; }
"""


def status_html(text: str, fraction: float | None = None, error: bool = False) -> str:
    """The status line with a progress bar (`fraction` None: an indeterminate, busy bar)."""
    kind = " mg-error" if error else " mg-busy" if fraction is None else ""
    width = 100 * min(max(fraction or 0.0, 0.0), 1.0)
    return (f'<div class="mg-status{kind}"><div>{html.escape(text)}</div><div class="mg-track">'
            f'<div class="mg-fill" style="width: {width:.1f}%"></div></div></div>')


def progress_status(event: session.Progress, duration: float, started: float, takes: int = 1) -> str:
    elapsed = time.monotonic() - started
    if event.stage == "queue":
        ahead = f"{event.done} request{'s' if event.done != 1 else ''} ahead of you" if event.done else "next in line"
        return status_html(f"Waiting for room in the batch: {ahead} ({elapsed:.0f} s)")
    what = f"{takes} takes, " if takes > 1 else ""
    if event.stage == "frames":
        seconds = duration * event.done / max(event.total, 1)
        text = f"Generating: {what}{event.done} / {event.total} frames ({seconds:.1f} s of audio, {elapsed:.0f} s)"
    else:
        text = f"Multi-band diffusion decoder: {what}step {event.done} / {event.total} ({elapsed:.0f} s)"
    return status_html(text, event.done / max(event.total, 1))


def slowest(latest: dict[int, session.Progress]) -> session.Progress:
    """Of the takes' latest progress, the one furthest behind (what the status line shows)."""
    order = {"queue": 0, "frames": 1, "diffusion": 2}
    return min(latest.values(), key=lambda e: (order.get(e.stage, 0), e.done / max(e.total, 1)))


def summary(results: list[session.Result], job: Job, device: object) -> str:
    res, n = results[0], len(results)
    seeds = " · **Seeds** " + ", ".join(f"`{r.seed}`" for r in results) + f" (takes 1–{n})" if n > 1 else ""
    elapsed = max(r.elapsed for r in results)
    lines = [(f"**Seed** `{res.seed}` · " if n == 1 else "") + f"**{res.seconds:.1f} s** of audio"
             f"{f' × {n}' if n > 1 else ''} in **{elapsed:.1f} s** (real-time factor "
             f"{elapsed / (n * res.seconds):.2f}){seeds} · `{job.ckpt.repo}` on {str(device).upper()}"]
    if job.continuation is not None:
        clip = job.continuation[0].shape[-1] / job.continuation[1]
        lines.append(f"Continued from your {clip:.1f} s clip (re-encoded: the first {clip:.1f} s are its "
                     "EnCodec version)")
    if job.notice:
        lines.append(f"ℹ️ {job.notice}")
    return "\n\n".join(lines)


def timeline_text(prompt: object, duration: object) -> str:
    """The schedule of a timeline prompt (each part of the piece and the prompt it is made with), or what is
    wrong with it; nothing for a plain prompt."""
    try:
        entries = timeline.parse(prompt) if isinstance(prompt, str) else None
        if not entries:
            return ""
        seconds = float(duration)  # type: ignore[arg-type]
        entries = timeline.check(entries, seconds)
        rows = timeline.schedule(entries, seconds, EXTEND_STRIDE)
    except (MusicGenError, TypeError, ValueError) as e:
        return f"⚠️ {e}"
    notes = [f"⚠️ {html.escape(n, quote=False)}" for n in timeline.unheard(entries, seconds, EXTEND_STRIDE)]
    return "**Timeline**  \n" + "  \n".join([f"{timeline.fmt(a)}–{timeline.fmt(b)}: {html.escape(p)}"
                                             for a, b, p in rows] + notes)


def span(seconds: float) -> str:
    """45 s, 6 min 10 s, 1 h 5 min."""
    s = round(seconds)
    if s < 60:
        return f"{max(s, 1)} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")


def wait_text(job: Job, wait: waits.Wait) -> str:
    """What the page says before a long multi-band diffusion decode."""
    what = [f"{job.req.duration:g} s of audio"] + ([f"{job.req.takes} takes"] if job.req.takes > 1 else [])
    return (f"**The multi-band diffusion decoder will take about {span(wait.seconds)} on this server's CPU** for "
            f"{', '.join(what)}: {wait.calls} model passes of about {wait.per_call:.1f} s each (measured here), after "
            "the tokens are generated. EnCodec decodes in seconds. Stop works during diffusion too.")


def hint(size: str, stereo: bool, melody: str | None, decoder: str = "encodec", model: str | None = "",
         owner: Mapping[str, catalog.OwnerModel] | None = None) -> str:
    """Under the model choice: the checkpoint it loads (Meta's by size, or the owner's `model`), its size and
    memory, and what the diffusion decoder costs."""
    if model and owner and model in owner:
        ckpt, notice = owner[model], None
    else:
        ckpt, notice = catalog.choose_checkpoint(size, stereo, bool(melody))
    lines = [ckpt.hint, notice or ""]
    if decoder == "mbd":
        lines.append(f"Multi-band diffusion: `{catalog.MBD_REPO}` is downloaded on first use; 80 diffusion model "
                     "passes per clip, much slower than EnCodec (on a CPU, minutes: the page says how long before it "
                     "starts)")
    return "  \n".join(line for line in lines if line)
