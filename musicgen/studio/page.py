"""The studio's page: its components and how they are wired (Generate, Stop, live preview, takes, history, the
API endpoints of api.py). The page streams audio while the model generates, then shows the result (1-4
takes), a picture of it, the seeds and the speed."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from .. import audio_io, stems, timeline
from ..loudness import DEFAULT_STRATEGY, STRATEGIES
from ..options import MAX_DURATION, MAX_TAKES
from . import catalog, history, picture, request, session
from .api import D, api_generate, api_generate_takes
from .backend import PROGRESS_EVERY, Job, Studio, user_errors
from .page_text import hint, progress_status, slowest, status_html, summary, timeline_text, wait_text

log = logging.getLogger("musicgen.app")

EXAMPLES = [
    "lofi hip hop beat with mellow piano, vinyl crackle and soft drums",
    "80s synthwave with driving bass, gated drums and a shimmering lead",
    "epic orchestral soundtrack with soaring strings, brass and taiko drums",
    "acoustic folk guitar ballad, warm and intimate",
    "upbeat funk groove with slap bass and tight horn stabs, 110 bpm",
    "ambient drone with evolving pads and distant bells",
]
ASSETS = Path(__file__).resolve().parents[2] / "assets"  # the repository's assets/ (beside app.py)
MELODY_EXAMPLES = sorted((ASSETS / "melodies").glob("*.wav"))  # made by scripts/make_assets.py
CONTINUE_EXAMPLE = ASSETS / "continue" / "pop_progression.wav"
META_MODELS = "Meta's MusicGen (size, stereo, melody below)"  # the model choice's first entry
FORMAT_LABELS = {"wav": "WAV 16-bit", "wav24": "WAV 24-bit", "flac": "FLAC", "mp3": "MP3 320 kbps", "ogg": "OGG Vorbis"}


def as_sent(component: gr.components.Component) -> None:
    """The value reaches the handler exactly as the client sent it: request.parse_request checks every field
    with a message a person can act on, where Gradio's own conversion would silently round a seed of 1.5, turn
    a list into its string form, or fail on "abc" with an opaque error. (On the instance: a subclass of a
    Gradio component makes Gradio write a .pyi stub next to this file.)"""
    component.preprocess = lambda payload: payload  # type: ignore[method-assign]


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


def build_request_column(owner_models: list[str]) -> tuple[dict[str, gr.components.Component],
                                                           dict[str, gr.components.Component]]:
    """Prompt, buttons, examples, the model choices (Meta's, and the Space owner's `owner_models` by name), the
    uploads and the sampling settings: (fields in API order, other controls)."""
    f: dict[str, gr.components.Component] = {}
    f["prompt"] = gr.Textbox(label="Prompt", lines=3, max_lines=8, placeholder=EXAMPLES[0], autofocus=True,
                             info="Beyond 30 s, later parts can have prompts of their own: " + timeline.SYNTAX)
    timeline_view = gr.Markdown(elem_id="timeline")
    with gr.Row(elem_id="generate-row"):
        controls = {"generate": gr.Button("Generate", variant="primary", scale=3),
                    "stop": gr.Button("Stop", variant="stop", scale=1), "timeline": timeline_view}
    gr.Examples([[e] for e in EXAMPLES], inputs=[f["prompt"]], label="Examples (click to use)")
    with gr.Row():
        f["duration"] = gr.Slider(request.MIN_DURATION, MAX_DURATION, value=D.duration, step=1,
                                  label="Duration (seconds)", scale=3)
        controls["takes"] = gr.Slider(1, MAX_TAKES, value=1, step=1, label="Takes", scale=2, elem_id="takes",
                                      info="seed +1 each")
    with gr.Row():
        f["model_size"] = gr.Radio(list(catalog.SIZES), value="small", label="Model size", scale=3)
        f["stereo"] = gr.Checkbox(value=False, label="Stereo", scale=1, min_width=100)
    model = gr.Dropdown([(META_MODELS, ""), *((n, n) for n in owner_models)], value="", label="Model",
                        visible=bool(owner_models), elem_id="model")
    f["decoder"] = gr.Radio([(v, k) for k, v in catalog.DECODER_LABELS.items()], value=D.decoder, label="Decoder")
    controls["hint"] = gr.Markdown(hint("small", False, None))
    trims: dict[str, gr.components.Component] = {}
    with gr.Accordion("Melody or audio to continue (optional)", open=False, elem_id="audio-inputs"), gr.Tabs():
        with gr.Tab("Melody", id="melody-tab"):
            f["melody"] = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="melody",
                                   label="The tune to follow (first 30 s are used)")
            gr.Examples([[str(p)] for p in MELODY_EXAMPLES], inputs=[f["melody"]],
                        label="Example melodies (public-domain tunes, synthesised by scripts/make_assets.py)")
            separate = gr.Checkbox(stems.wanted(None), label="Separate the melody from drums and bass",
                                   elem_id="separate-melody",
                                   info="demucs keeps its vocals and other instruments, as the official demo does "
                                   "(downloaded on first use; seconds to a minute on a CPU, once per melody)")
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
            f["seed"] = gr.Number(value=-1, precision=0, minimum=-1, maximum=request.MAX_SEED,
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
    f["model"] = model
    f["separate_melody"] = separate
    for c in (*(f[n] for n in ("prompt", "duration", "top_k", "top_p", "temperature", "cfg_coef", "seed", *trims)),
              controls["takes"], model):
        as_sent(c)  # the model too: Studio.checkpoint says which names are offered, in words
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
            fields, controls = build_request_column(list(st.models))
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
        gb = job.ckpt.download_gb
        size = f"≈{gb:g} GB download on first use" if gb is not None else "downloaded on first use"
        yield clear | {page.status: status_html(f"Loading {job.ckpt.repo} ({size})…")}
    mg = st.model(job)
    if st.slow_diffusion(job) and not confirmed:
        yield clear | {page.status: status_html("Preparing the multi-band diffusion decoder (downloaded on first use, "
                                                "then timed on this machine)…")}
        wait = st.diffusion_wait(job, mg)
        if wait.seconds > st.confirm_above:
            yield {page.status: status_html("Waiting for your choice", 0.0), page.confirm: gr.update(visible=True),
                   page.confirm_text: wait_text(job, wait)}
            return
    first = "Separating the melody's stems (demucs)" if st.separates(job) else f"Generating with {job.ckpt.repo}"
    yield clear | {page.live: None, page.status: status_html(f"{first}…", 0.0)}
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
                yield {page.live: audio_io.wav_bytes(event.audio, event.sample_rate)}
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
    update |= {page.picture: picture.render_picture(res.audio, res.sample_rate),
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
    hint_inputs = [page.fields[k] for k in ("model_size", "stereo", "melody", "decoder", "model")]
    gr.on([c.change for c in hint_inputs], lambda *values: hint(*values, owner=st.models), inputs=hint_inputs,
          outputs=page.hint, **quick)
    page.dice.click(request.fresh_seed, outputs=page.fields["seed"], **quick)
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
