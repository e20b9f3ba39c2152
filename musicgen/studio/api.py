"""The studio's API endpoints: `/generate` (one piece, its file) and `/generate_takes` (1-4 variations with
consecutive seeds, their files and seeds). Their parameter names and defaults are the API's; every value is
checked by request.parse_request (through backend.Studio.job), errors reach the client as `gr.Error`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing

import gradio as gr

from ..loudness import DEFAULT_STRATEGY
from ..options import MAX_TAKES, GenerationOptions
from . import session
from .backend import PROGRESS_EVERY, Studio, user_errors
from .page_text import slowest

D = GenerationOptions()  # the engine's defaults (audiocraft's), the API's and the page's

API_DOC = """seed -1 draws a random one; melody (an audio file) picks a melody checkpoint; continue_audio (an audio
file shorter than 30 s) starts the piece with that clip and goes on from it (the duration counts it). loudness:
loudness (-16 LUFS, the default), peak, rms, clip or none; output_format: wav, wav24, flac, mp3 or ogg;
melody_start / melody_end and continue_start / continue_end: the part of each file used, in seconds (end 0 or
-1: the end of the file). model: one of the models this server's owner offers, by name (empty: Meta's, by
model_size, stereo and melody). separate_melody: keep the melody's vocals + other (demucs) before following it, as
the official demo does (true / false; not sent: on, unless the server says otherwise). A diffusion decode (decoder
"mbd") is not confirmed first, as it is on the page."""


def api_generate(st: Studio) -> Callable[..., Iterator]:
    """The `/generate` endpoint: its parameter names and defaults are the API's."""

    def generate(prompt: str, duration: float = D.duration, model_size: str = "small", stereo: bool = False,
                 decoder: str = D.decoder, melody: str | None = None, top_k: int = D.top_k, top_p: float = D.top_p,
                 temperature: float = D.temperature, cfg_coef: float = D.cfg_coef, seed: int = -1,
                 continue_audio: str | None = None, loudness: str = DEFAULT_STRATEGY, output_format: str = "wav",
                 melody_start: float = 0, melody_end: float = 0, continue_start: float = 0, continue_end: float = 0,
                 model: str = "", separate_melody: bool | None = None,
                 progress=gr.Progress()) -> Iterator:  # noqa: B008 (how Gradio injects a progress tracker)
        args = [prompt, duration, model_size, stereo, decoder, melody, top_k, top_p, temperature, cfg_coef, seed,
                continue_audio, loudness, output_format, melody_start, melody_end, continue_start, continue_end, model,
                separate_melody]
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
                       continue_start: float = 0, continue_end: float = 0, model: str = "",
                       separate_melody: bool | None = None, takes: int = 1,
                       progress=gr.Progress()) -> Iterator:  # noqa: B008 (how Gradio injects a progress tracker)
        args = [prompt, duration, model_size, stereo, decoder, melody, top_k, top_p, temperature, cfg_coef, seed,
                continue_audio, loudness, output_format, melody_start, melody_end, continue_start, continue_end, model,
                separate_melody, takes]
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
        if job.notice:  # a client reads it from the job's status log (gradio_client: job.status().log)
            gr.Warning(job.notice)
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
