"""MusicGen studio: a Gradio web app for the `musicgen` engine (also the Hugging Face Space entry point).

    .venv/bin/python app.py [--share] [--server-name 0.0.0.0] [--port 7860] [--device cpu] [--quantize int8]

The page streams audio while the model generates, then shows the WAV, a picture of it, the seed and the
speed. The API endpoint `/generate` (parameters prompt, duration, model_size, stereo, decoder, melody,
top_k, top_p, temperature, cfg_coef, seed, continue_audio) returns the finished WAV file. Models come from the standard
Hugging Face cache (HF_HOME; HF_HUB_OFFLINE=1 with a pre-populated cache works offline). The engine-side
logic lives in backend.py (shared server state, errors for people) and musicgen/studio.py, session.py,
streaming.py and media.py; this file is the page.
"""

from __future__ import annotations

import argparse
import functools
import html
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from backend import Job, Studio, readable_input_errors, user_errors
from musicgen import MusicGenError, history, media, session, studio, timeline, waits
from musicgen.layout import QUANTIZE
from musicgen.loudness import DEFAULT_STRATEGY, STRATEGIES
from musicgen.options import EXTEND_STRIDE, MAX_DURATION, MAX_TAKES, GenerationOptions
from musicgen.pipeline import default_device
from musicgen.serve import MAX_ROWS

log = logging.getLogger("musicgen.app")

EXAMPLES = [
    "lofi hip hop beat with mellow piano, vinyl crackle and soft drums",
    "80s synthwave with driving bass, gated drums and a shimmering lead",
    "epic orchestral soundtrack with soaring strings, brass and taiko drums",
    "acoustic folk guitar ballad, warm and intimate",
    "upbeat funk groove with slap bass and tight horn stabs, 110 bpm",
    "ambient drone with evolving pads and distant bells",
]
ASSETS = Path(__file__).resolve().parent / "assets"
MELODY_EXAMPLES = sorted((ASSETS / "melodies").glob("*.wav"))  # made by scripts/make_assets.py
CONTINUE_EXAMPLE = ASSETS / "continue" / "pop_progression.wav"
D = GenerationOptions()  # the engine's defaults (audiocraft's), shown on the page and in the API
FORMAT_LABELS = {"wav": "WAV 16-bit", "wav24": "WAV 24-bit", "flac": "FLAC", "mp3": "MP3 320 kbps", "ogg": "OGG Vorbis"}
PROGRESS_EVERY = 0.25  # seconds between progress updates to a client (also how soon a cancel is noticed)
CSS = """
#generate-row button { min-height: 3rem; }
.mg-status { font-size: var(--text-md); padding: 4px 2px; }
.mg-track { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; margin-top: 6px; }
.mg-fill { height: 100%; background: var(--color-accent); transition: width 0.2s linear; }
.mg-busy .mg-fill { width: 30% !important; animation: mg-slide 1.2s ease-in-out infinite; }
@keyframes mg-slide { from { margin-left: -30%; } to { margin-left: 100%; } }
.mg-error, .mg-error * { color: #dc2626 !important; }
"""


def as_sent(component: gr.components.Component) -> None:
    """The value reaches the handler exactly as the client sent it: studio.parse_request checks every field
    with a message a person can act on, where Gradio's own conversion would silently round a seed of 1.5, turn
    a list into its string form, or fail on "abc" with an opaque error. (On the instance: a subclass of a
    Gradio component makes Gradio write a .pyi stub next to this file.)"""
    component.preprocess = lambda payload: payload  # type: ignore[method-assign]


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
        rows = timeline.schedule(timeline.check(entries, seconds), seconds, EXTEND_STRIDE)
    except (MusicGenError, TypeError, ValueError) as e:
        return f"⚠️ {e}"
    return "**Timeline**  \n" + "  \n".join(f"{timeline.fmt(a)}–{timeline.fmt(b)}: {html.escape(p)}"
                                            for a, b, p in rows)


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


def _hint(size: str, stereo: bool, melody: str | None, decoder: str = "encodec") -> str:
    ckpt, notice = studio.choose_checkpoint(size, stereo, bool(melody))
    lines = [ckpt.hint, notice or ""]
    if decoder == "mbd":
        lines.append(f"Multi-band diffusion: `{studio.MBD_REPO}` is downloaded on first use; 80 diffusion model "
                     "passes per clip, much slower than EnCodec (on a CPU, minutes: the page says how long before it "
                     "starts)")
    return "  \n".join(line for line in lines if line)


@dataclass
class Page:
    """The page's components: the request fields (in API order), the buttons, and what shows the result."""

    fields: dict[str, gr.components.Component]
    generate: gr.Button
    stop: gr.Button
    dice: gr.Button
    reuse: gr.Button
    hint: gr.Markdown
    timeline: gr.Markdown  # a timeline prompt's schedule: which prompt each part of the piece gets
    status: gr.HTML
    confirm: gr.Group  # shown before a long diffusion decode on a CPU: go on, or use EnCodec
    confirm_text: gr.Markdown
    go_anyway: gr.Button
    use_encodec: gr.Button
    confirmed: gr.State  # this run was confirmed (a long diffusion decode may start)
    live: gr.Audio
    takes: gr.Slider  # variations made together (not a /generate field: /generate_takes has it)
    result: gr.Audio  # the result, or take 1
    more_takes: list[gr.Audio]  # takes 2, 3, 4 (hidden unless made)
    result_mbd: gr.Audio
    picture: gr.Image
    info: gr.Markdown
    last_seed: gr.State
    run_id: gr.State  # the Stop button's handle on this visitor's run (server-side state)
    history: gr.BrowserState  # the last takes, kept in the visitor's browser (musicgen/history.py)
    history_view: gr.Dataset
    last_take: gr.State  # the finished run's history entries (one per take), for the history step after it
    api_files: gr.Files  # /generate_takes' outputs (not shown on the page)
    api_seeds: gr.JSON

    @property
    def inputs(self) -> list[gr.components.Component]:
        return list(self.fields.values())

    @property
    def outputs(self) -> list[gr.components.Component]:
        return [self.status, self.confirm, self.confirm_text, self.live, self.result, *self.more_takes,
                self.result_mbd, self.picture, self.info, self.last_seed, self.last_take]


def build_request_column() -> tuple[dict[str, gr.components.Component], dict[str, gr.components.Component]]:
    """Prompt, buttons, examples, the model choices, the uploads and the sampling settings: (fields in API
    order, other controls)."""
    f: dict[str, gr.components.Component] = {}
    f["prompt"] = gr.Textbox(label="Prompt", lines=3, max_lines=8, placeholder=EXAMPLES[0], autofocus=True,
                             info="Beyond 30 s, later parts can have prompts of their own: " + timeline.SYNTAX)
    timeline_view = gr.Markdown(elem_id="timeline")
    with gr.Row(elem_id="generate-row"):
        controls = {"generate": gr.Button("Generate", variant="primary", scale=3),
                    "stop": gr.Button("Stop", variant="stop", scale=1), "timeline": timeline_view}
    gr.Examples([[e] for e in EXAMPLES], inputs=[f["prompt"]], label="Examples (click to use)")
    with gr.Row():
        f["duration"] = gr.Slider(studio.MIN_DURATION, MAX_DURATION, value=D.duration, step=1,
                                  label="Duration (seconds)", scale=3)
        controls["takes"] = gr.Slider(1, MAX_TAKES, value=1, step=1, label="Takes", scale=2, elem_id="takes",
                                      info="seed +1 each")
    with gr.Row():
        f["model_size"] = gr.Radio(list(studio.SIZES), value="small", label="Model size", scale=3)
        f["stereo"] = gr.Checkbox(value=False, label="Stereo", scale=1, min_width=100)
    f["decoder"] = gr.Radio([(v, k) for k, v in studio.DECODER_LABELS.items()], value=D.decoder, label="Decoder")
    controls["hint"] = gr.Markdown(_hint("small", False, None))
    trims: dict[str, gr.components.Component] = {}
    with gr.Accordion("Melody or audio to continue (optional)", open=False, elem_id="audio-inputs"), gr.Tabs():
        with gr.Tab("Melody", id="melody-tab"):
            f["melody"] = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="melody",
                                   label="The tune to follow (first 30 s are used)")
            gr.Examples([[str(p)] for p in MELODY_EXAMPLES], inputs=[f["melody"]],
                        label="Example melodies (public-domain tunes, synthesised by scripts/make_assets.py)")
            with gr.Row():
                trims["melody_start"] = gr.Number(0, minimum=0, label="Use from (s)", min_width=80)
                trims["melody_end"] = gr.Number(0, minimum=-1, label="to (s, 0 = the end)", min_width=80)
        with gr.Tab("Continue", id="continue-tab"):
            continue_audio = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="continue",
                                      label="Audio to continue (under 30 s, part of the duration)")
            gr.Examples([[str(CONTINUE_EXAMPLE)]], inputs=[continue_audio], label="Example clip")
            with gr.Row():
                trims["continue_start"] = gr.Number(0, minimum=0, label="Use from (s)", min_width=80)
                trims["continue_end"] = gr.Number(0, minimum=-1, label="to (s, 0 = the end)", min_width=80)
    with gr.Accordion("Advanced", open=False):
        f["top_k"] = gr.Slider(0, 1000, value=D.top_k, step=1, label="Top-k (0 = off)")
        f["top_p"] = gr.Slider(0.0, 1.0, value=D.top_p, step=0.01, label="Top-p (0 = off; above 0 replaces top-k)")
        f["temperature"] = gr.Slider(0.0, 2.0, value=D.temperature, step=0.05, label="Temperature (0 = greedy)")
        f["cfg_coef"] = gr.Slider(0.0, 10.0, value=D.cfg_coef, step=0.1, label="Classifier-free guidance")
        with gr.Row():
            f["seed"] = gr.Number(value=-1, precision=0, minimum=-1, maximum=studio.MAX_SEED,
                                  label="Seed (-1 = random)", scale=3)
            controls["dice"] = gr.Button("🎲 Randomize", scale=1)
            controls["reuse"] = gr.Button("♻️ Last seed", scale=1)
        with gr.Row():
            loudness_choice = gr.Dropdown(list(STRATEGIES), value=DEFAULT_STRATEGY, label="Loudness (loudness: -16 "
                                          "LUFS as audiocraft's demo writes; peak, rms, clip or none)")
            format_choice = gr.Dropdown([(label, k) for k, label in FORMAT_LABELS.items()], value="wav",
                                        label="Download format")
    f["continue_audio"] = continue_audio
    f["loudness"] = loudness_choice
    f["output_format"] = format_choice
    f |= trims
    for c in (*(f[n] for n in ("prompt", "duration", "top_k", "top_p", "temperature", "cfg_coef", "seed", *trims)),
              controls["takes"]):
        as_sent(c)
    return f, controls


def build_result_column(st: Studio) -> dict[str, gr.components.Component]:
    """Status line, live preview, the result players, the picture and the summary."""
    out: dict[str, gr.components.Component] = {}
    out["status"] = gr.HTML(status_html("Ready", 0.0), elem_id="status")
    with gr.Group(visible=False, elem_id="confirm") as out["confirm"]:
        out["confirm_text"] = gr.Markdown()
        with gr.Row():
            out["go_anyway"] = gr.Button("Generate anyway", variant="primary")
            out["use_encodec"] = gr.Button("Use EnCodec instead")
    out["live"] = gr.Audio(label="Live preview (plays while generating)", streaming=True, autoplay=True,
                           interactive=False, visible=st.stream, elem_id="live")
    with gr.Row():
        out["result"] = gr.Audio(label="Result", type="filepath", interactive=False, elem_id="result",
                                 buttons=["download"])
        out["more_takes"] = [gr.Audio(label=f"Take {k}", type="filepath", interactive=False, visible=False,
                                      elem_id=f"take-{k}", buttons=["download"]) for k in range(2, MAX_TAKES + 1)]
        out["result_mbd"] = gr.Audio(label="Multi-band diffusion", type="filepath", interactive=False,
                                     visible=False, elem_id="result-mbd", buttons=["download"])
    out["picture"] = gr.Image(label="Waveform and spectrogram", type="pil", format="png", interactive=False,
                              elem_id="picture")
    out["info"] = gr.Markdown(elem_id="info")
    label = f"History (this browser, the last {history.LIMIT}): click one to restore its settings and play it again"
    out["history_view"] = gr.Dataset(label=label, components=["textbox", "number", "textbox", "number"],
                                     headers=["Prompt", "Seed", "Model", "Seconds"], samples=[], type="index",
                                     elem_id="history")
    return out


def build_page(st: Studio) -> Page:
    gr.Markdown("# MusicGen studio\nDescribe the music, press **Generate**, and listen while it is being made. "
                "Meta's [MusicGen](https://github.com/facebookresearch/audiocraft) models, run by a from-scratch "
                "PyTorch engine.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            fields, controls = build_request_column()
        with gr.Column(scale=6):
            shown = build_result_column(st)
    return Page(fields, **controls, **shown, last_seed=gr.State(None), run_id=gr.State(None),  # type: ignore[arg-type]
                history=gr.BrowserState([], storage_key="musicgen-history"), last_take=gr.State(None),
                confirmed=gr.State(False),
                api_files=gr.Files(visible=False), api_seeds=gr.JSON(visible=False))


def page_run(st: Studio, page: Page, run: str, confirmed: bool, *args: object) -> Iterator[dict]:
    """The page's Generate: status bar, live chunks, then the result, picture and summary. Before a long
    diffusion decode on a CPU (unless `confirmed`), the expected time and a choice instead."""
    started = time.monotonic()
    try:
        with user_errors(st):
            yield from _page_events(st, page, run, confirmed, started, *args)
    except gr.Error as e:  # the toast goes away; the status line keeps the reason
        yield {page.status: status_html(f"{e.title}: {e.message}", 0.0, error=True)}
        raise
    finally:
        st.stops.disarm(run)


def _page_events(st: Studio, page: Page, run: str, confirmed: bool, started: float, *args: object
                 ) -> Iterator[dict]:
    job = st.job(*args)
    if job.notice:
        gr.Info(job.notice)
    clear = {page.result: gr.update(value=None, label="Result"), page.picture: None, page.info: "",
             page.confirm: gr.update(visible=False),
             page.last_take: None, page.result_mbd: gr.update(value=None, visible=False),
             **{p: gr.update(value=None, visible=False) for p in page.more_takes}}
    if st.cache.current != job.ckpt.repo:
        size = f"≈{job.ckpt.download_gb:g} GB download on first use"
        yield clear | {page.status: status_html(f"Loading {job.ckpt.repo} ({size})…")}
    mg = st.model(job)
    if job.req.decoder == "mbd" and not confirmed and st.cache.device.type == "cpu":
        yield clear | {page.status: status_html("Preparing the multi-band diffusion decoder (downloaded on first use, "
                                                "then timed on this machine)…")}
        wait = st.diffusion_wait(job, mg)
        if wait is not None and wait.seconds > st.confirm_above:
            yield {page.status: status_html("Waiting for your choice", 0.0), page.confirm: gr.update(visible=True),
                   page.confirm_text: wait_text(job, wait)}
            return
    yield clear | {page.live: None, page.status: status_html(f"Generating with {job.ckpt.repo}…", 0.0)}
    shown = 0.0
    latest: dict[int, session.Progress] = {}
    results: dict[int, session.Result] = {}
    events = st.run_events(job.ckpt.repo, job.req, job.melody, job.continuation, st.stream)
    with closing(events):  # Stop, a cancel or a closed tab ends this generator: the engine stops too
        for take in events:
            if st.stops.requested(run):
                yield {page.status: status_html("Stopped", 0.0)}
                return
            event = take.event
            if isinstance(event, session.Chunk):  # the first take's (the live preview plays that one)
                yield {page.live: media.wav_bytes(event.audio, event.sample_rate)}
            elif isinstance(event, session.Progress):
                latest[take.index] = event
                if time.monotonic() - shown > PROGRESS_EVERY:
                    shown = time.monotonic()
                    yield {page.status: progress_status(slowest(latest), job.req.duration, started, job.req.takes)}
            else:
                results[take.index] = event
    assert len(results) == job.req.takes
    yield _result_update(st, page, job, [results[k] for k in sorted(results)])


def _result_update(st: Studio, page: Page, job: Job, results: list[session.Result]) -> dict:
    """The takes' files in their players (labelled with their seeds), take 1's picture, the summary."""
    res, fmt = results[0], job.req.output_format
    tag = "-mbd" if res.encodec is not None else ""
    files = [st.write(r.audio, r.sample_rate, r.seed, fmt, tag) for r in results]
    players = [page.result, *page.more_takes]
    several = len(results) > 1
    update = {p: gr.update(value=files[k], label=f"Take {k + 1} · seed {results[k].seed}", visible=True)
              if several and k < len(files) else gr.update(value=None, visible=False) for k, p in enumerate(players)}
    elapsed = max(r.elapsed for r in results)
    update |= {page.picture: media.render_picture(res.audio, res.sample_rate),
               page.info: summary(results, job, st.cache.device), page.last_seed: res.seed,
               page.last_take: [history.entry(job.req, r.seed, job.ckpt.repo, r.seconds, f)
                                for r, f in zip(results, files, strict=True)],
               page.status: status_html(f"Done: {len(results) if several else ''}{' × ' if several else ''}"
                                        f"{res.seconds:.1f} s of audio in {elapsed:.1f} s", 1.0)}
    if not several:
        update[page.result] = gr.update(value=files[0], label="Result")
    if res.encodec is not None and not several:  # both versions side by side, as audiocraft's demo does
        plain = st.write(res.encodec, res.sample_rate, res.seed, fmt, "-encodec")
        update |= {page.result: gr.update(value=plain, label="EnCodec"),
                   page.result_mbd: gr.update(value=files[0], visible=True)}
    return update


API_DOC = """seed -1 draws a random one; melody (an audio file) picks a melody checkpoint; continue_audio (an
        audio file shorter than 30 s) starts the piece with that clip and goes on from it (the duration
        counts it). loudness: loudness (-16 LUFS, the default), peak, rms, clip or none; output_format: wav,
        wav24, flac, mp3 or ogg; melody_start / melody_end and continue_start / continue_end: the part of
        each file used, in seconds (end 0 or -1: the end of the file)."""


def api_generate(st: Studio) -> Callable[..., Iterator]:
    """The `/generate` endpoint: its parameter names and defaults are the API's."""

    def generate(prompt: str, duration: float = D.duration, model_size: str = "small", stereo: bool = False,
                 decoder: str = D.decoder, melody: str | None = None, top_k: int = D.top_k, top_p: float = D.top_p,
                 temperature: float = D.temperature, cfg_coef: float = D.cfg_coef, seed: int = -1,
                 continue_audio: str | None = None, loudness: str = DEFAULT_STRATEGY, output_format: str = "wav",
                 melody_start: float = 0, melody_end: float = 0, continue_start: float = 0, continue_end: float = 0,
                 progress=gr.Progress()) -> Iterator:  # noqa: B008 (how Gradio injects a progress tracker)
        args = [prompt, duration, model_size, stereo, decoder, melody, top_k, top_p, temperature, cfg_coef, seed,
                continue_audio, loudness, output_format, melody_start, melody_end, continue_start, continue_end]
        for item in _api_run(st, args, progress):
            yield item if item is SKIP else str(item[0][0])

    generate.__doc__ = ("Generate music from a text prompt; returns the audio file (from the chosen decoder).\n"
                        + API_DOC)
    return generate


def api_generate_takes(st: Studio) -> Callable[..., Iterator]:
    """The `/generate_takes` endpoint: /generate's parameters and `takes`; returns the files and their seeds."""

    def generate_takes(prompt: str, duration: float = D.duration, model_size: str = "small", stereo: bool = False,
                       decoder: str = D.decoder, melody: str | None = None, top_k: int = D.top_k,
                       top_p: float = D.top_p, temperature: float = D.temperature, cfg_coef: float = D.cfg_coef,
                       seed: int = -1, continue_audio: str | None = None, loudness: str = DEFAULT_STRATEGY,
                       output_format: str = "wav", melody_start: float = 0, melody_end: float = 0,
                       continue_start: float = 0, continue_end: float = 0, takes: int = 1,
                       progress=gr.Progress()) -> Iterator:  # noqa: B008 (how Gradio injects a progress tracker)
        args = [prompt, duration, model_size, stereo, decoder, melody, top_k, top_p, temperature, cfg_coef, seed,
                continue_audio, loudness, output_format, melody_start, melody_end, continue_start, continue_end, takes]
        for item in _api_run(st, args, progress):
            yield item if item is SKIP else ([str(f) for f in item[0]], item[1])

    generate_takes.__doc__ = (f"Generate 1-{MAX_TAKES} variations (takes) of one request together, with seeds seed, "
                              "seed + 1, ...; returns (their audio files, their seeds).\n" + API_DOC)
    return generate_takes


SKIP = gr.skip()


def _api_run(st: Studio, args: list, progress: gr.Progress) -> Iterator:
    """Both endpoints: SKIP while working (so a cancelled job or a lost client closes this generator: Gradio
    closes a generator handler at its next yield, once the first yield registered it; the engine then stops at
    its next step), then (files, seeds) of the takes."""
    with user_errors(st):
        job = st.job(*args)
        yield SKIP
        st.model(job, on_load=lambda repo: progress((0, None), desc=f"Loading {repo}…"))
        events = st.run_events(job.ckpt.repo, job.req, job.melody, job.continuation, False)
        shown, latest, results = time.monotonic(), {}, {}
        with closing(events):
            for take in events:
                event = take.event
                if isinstance(event, session.Progress):
                    latest[take.index] = event
                    event = slowest(latest)
                    if event.stage == "queue":
                        progress((0, None), desc=f"Waiting for room in the batch ({event.done} ahead)")
                    else:
                        unit = "frames" if event.stage == "frames" else "diffusion steps"
                        progress((event.done, event.total), desc="Generating", unit=unit)
                    if time.monotonic() - shown > PROGRESS_EVERY:
                        shown = time.monotonic()
                        yield SKIP
                elif isinstance(event, session.Result):
                    results[take.index] = event
        if len(results) == job.req.takes:
            done = [results[k] for k in sorted(results)]
            yield ([st.write(r.audio, r.sample_rate, r.seed, job.req.output_format) for r in done],
                   [r.seed for r in done])
            return
    raise gr.Error("Generation ended without audio")


def wire(st: Studio, page: Page) -> None:
    """The page's events and the API endpoint; everything but the generations skips the queue."""
    quick = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}

    def arming(confirmed: bool) -> Callable[[gr.Request], tuple]:
        def arm(request: gr.Request) -> tuple:
            """Generate was pressed: a new run Stop can reach, even while it still waits in the queue."""
            return (status_html("Waiting for the model…"), st.stops.arm(request.session_hash or ""), confirmed,
                    gr.update(visible=False))
        return arm

    def run(*args: object) -> Iterator[dict]:
        yield from page_run(st, page, str(args[-1]), bool(args[-2]), *args[:-2])

    def start(on: Callable[..., Any], confirmed: bool) -> None:
        """`on(fn, **kw)` (an event, or the step before) arms a run, then runs it; its takes join the history."""
        armed = on(arming(confirmed), outputs=[page.status, page.run_id, page.confirmed, page.confirm], **quick)
        done = armed.then(run, inputs=[*page.inputs, page.takes, page.confirmed, page.run_id], outputs=page.outputs,
                          show_progress="hidden", api_visibility="private", concurrency_id="musicgen",
                          concurrency_limit=st.concurrency)
        done.success(remember, inputs=[page.history, page.last_take], outputs=[page.history, page.history_view],
                     **quick)

    start(functools.partial(gr.on, [page.generate.click, page.fields["prompt"].submit]), confirmed=False)
    start(page.go_anyway.click, confirmed=True)  # the expected diffusion time was shown: go on
    encodec = page.use_encodec.click(lambda: "encodec", outputs=page.fields["decoder"], **quick)
    start(encodec.then, confirmed=False)
    # Stop is cooperative (the run ends itself at its next step): Gradio's `cancels` raced with the
    # streamed outputs in 6.31 and could leave the page believing the run was still going
    def stop(request: gr.Request) -> None:
        st.stops.request(request.session_hash or "")

    page.stop.click(stop, **quick)
    restorable = [page.fields[k] for k in ("prompt", *history.SETTINGS, "seed")]
    page.history_view.click(lambda i, h: restore(st, i, h, restorable, page), inputs=[page.history_view, page.history],
                            outputs=[*restorable, page.result, page.status], **quick)
    gr.on([], api_generate(st), inputs=page.inputs, outputs=[page.result], api_name="generate",
          concurrency_id="musicgen", concurrency_limit=st.concurrency)
    gr.on([], api_generate_takes(st), inputs=[*page.inputs, page.takes], outputs=[page.api_files, page.api_seeds],
          api_name="generate_takes", concurrency_id="musicgen", concurrency_limit=st.concurrency)
    prompt_inputs = [page.fields["prompt"], page.fields["duration"]]
    gr.on([c.change for c in prompt_inputs], timeline_text, inputs=prompt_inputs, outputs=page.timeline, **quick)
    hint_inputs = [page.fields[k] for k in ("model_size", "stereo", "melody", "decoder")]
    gr.on([c.change for c in hint_inputs], _hint, inputs=hint_inputs, outputs=page.hint, **quick)
    page.dice.click(studio.fresh_seed, outputs=page.fields["seed"], **quick)
    page.reuse.click(lambda s: gr.skip() if s is None else s, inputs=page.last_seed, outputs=page.fields["seed"],
                     **quick)


def remember(past: object, takes: object) -> tuple[list, dict]:
    """After a finished run: its entries (one per take, take 1 first) join the browser's history."""
    if not isinstance(takes, list) or not takes:
        return gr.skip(), gr.skip()
    kept = past
    for take in reversed(takes):
        kept = history.add(kept, take)
    return kept, gr.update(samples=history.rows(kept))


def restore(st: Studio, index: object, past: object, fields: list, page: Page) -> list:
    """A history row was clicked: its settings back in the fields, its file in the player if still there."""
    item = past[index] if isinstance(past, list) and isinstance(index, int) and 0 <= index < len(past) else None
    values = history.settings(item)
    names = ("prompt", *history.SETTINGS, "seed")
    file = history.result_file(st.out_dir, item)
    note = "Settings restored" + ("" if file else " (its file is gone: results are kept for an hour; Generate makes it "
                                                 "again with the same seed)")
    return [values.get(n, gr.skip()) for n in names] + [str(file) if file else gr.skip(), status_html(note, 0.0)]


def build_demo(st: Studio) -> gr.Blocks:
    with gr.Blocks(title="MusicGen studio", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        page = build_page(st)
        wire(st, page)
        demo.load(lambda h: gr.update(samples=history.rows(h)), inputs=page.history, outputs=page.history_view,
                  queue=False, api_visibility="private", show_progress="hidden")
    return demo


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MusicGen studio: the web app")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument("--server-name", default=None, help="interface to listen on, e.g. 0.0.0.0 [127.0.0.1]")
    p.add_argument("--port", type=int, default=None, help="port [7860, or the next free one]")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... [cuda if available, else cpu]")
    p.add_argument("--quantize", choices=["auto", *[q for q in QUANTIZE if q], "none"], default="auto",
                   help="int8 language model, ~2.6x faster on CPU; int8-weight-only: float activations, closer "
                   "to float32 [auto: int8 on CPU, none on CUDA]")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting at most [16]")
    p.add_argument("--batch-rows", type=int, default=MAX_ROWS,
                   help=f"decode-step rows shared by visitors, 2 per request (continuous batching); 0: one "
                   f"generation at a time [{MAX_ROWS}]")
    return p


def serve(st: Studio, *, share: bool = False, server_name: str | None = None, port: int | None = None,
          max_queue: int = 16, prevent_thread_lock: bool = False, quiet: bool = False) -> tuple[gr.Blocks, str]:
    """Build the page, queue it (`st.concurrency` generations at once, at most `max_queue` waiting) and serve;
    returns (demo, local URL)."""
    demo = build_demo(st)
    readable_input_errors(demo)
    # api_open=False: every route goes through the queue and its limits (the REST route /run/... would not)
    demo.queue(max_size=max_queue, default_concurrency_limit=1, api_open=False)
    _, url, _ = demo.launch(share=share, server_name=server_name, server_port=port, css=CSS, quiet=quiet,
                            theme=gr.themes.Default(primary_hue="orange"), max_file_size="50mb",
                            prevent_thread_lock=prevent_thread_lock)
    return demo, url


def default_quantize(choice: str, device: str | None) -> str | None:
    """--quantize auto: int8 when the model runs on the CPU (faster than real time there for musicgen-small;
    mean KL 0.001 nats from float32)."""
    if choice != "auto":
        return None if choice == "none" else choice
    on_cpu = (torch.device(device) if device else default_device()).type == "cpu"
    return "int8" if on_cpu else None


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # the decode loop gets the CPU's intra-op threads; every other thread runs torch ops inline (serve.py,
    # own_intra_op_threads: a second OpenMP pool would make every step ~1.6x slower), model loading included
    threads = torch.get_num_threads()
    if args.batch_rows:
        torch.set_num_threads(1)
    st = Studio(device=args.device, batch_rows=args.batch_rows, threads=threads,
                quantize=default_quantize(args.quantize, args.device))
    log.info("device %s; live preview %s", st.cache.device, "on" if st.stream else "off (install ffmpeg)")
    serve(st, share=args.share, server_name=args.server_name, port=args.port, max_queue=args.max_queue)


if __name__ == "__main__":
    main()
