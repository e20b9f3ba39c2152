"""The web app under concurrent traffic from strangers: nobody receives another's music, the queue's limits
hold on every route, and a cancelled job stops the engine.

The server runs in this process (helpers/studio_server.py), so the tests can watch the engine itself: how many
generations run at once (MusicGen.stream is wrapped) and when a cancelled one stops.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client
from gradio_client.utils import Status
from helpers.studio_server import Server

from musicgen.serve import Scheduler

PROMPTS = ["lofi hip hop beat", "epic orchestral trailer", "acoustic folk ballad", "80s synthwave"]
FIELDS = ["prompt", "duration", "model_size", "stereo", "decoder", "melody", "top_k", "top_p", "temperature",
          "cfg_coef", "seed", "continue_audio", "loudness", "output_format", "melody_start", "melody_end",
          "continue_start", "continue_end", "model", "separate_melody"]
EXTRA = ["loudness", "wav", 0, 0, 0, 0, "", None]  # the values after continue_audio, in a raw request


class EngineWatch:
    """Counts generations running in the engine right now, and the most that ever ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = self.peak = self.steps = 0

    def wrap(self, stream):
        watch = self

        def counted(engine: Scheduler, *args, **kwargs) -> Iterator:
            with watch.lock:
                watch.active += 1
                watch.peak = max(watch.peak, watch.active)
            try:
                for item in stream(engine, *args, **kwargs):
                    watch.steps += 1
                    yield item
            finally:
                with watch.lock:
                    watch.active -= 1

        return counted

    def wait(self, until, timeout: float) -> float:
        """Seconds until `until(self)` held (asserted within `timeout`)."""
        start = time.monotonic()
        while not until(self):
            assert time.monotonic() - start < timeout, "timed out waiting for the engine"
            time.sleep(0.01)
        return time.monotonic() - start


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> EngineWatch:
    w = EngineWatch()
    monkeypatch.setattr(Scheduler, "stream", w.wrap(Scheduler.stream))
    return w


def read(path: str) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0]


def alone(server: Server, prompt: str) -> np.ndarray:
    return read(Client(server.url, verbose=False).predict(prompt=prompt, duration=2, seed=42, api_name="/generate"))


def in_parallel(fn, items: list) -> list:
    out: list = [None] * len(items)

    def run(i: int) -> None:
        try:
            out[i] = fn(items[i])
        except Exception as e:  # reported by the assertion below
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return out


def test_concurrent_same_seed_clients_each_get_their_own_music(server: Server, watch: EngineWatch) -> None:
    """Four visitors, same seed, same second, different prompts: they share the engine's decode steps and
    each gets exactly what it gets alone."""
    expected = {p: alone(server, p) for p in PROMPTS}
    assert all(not np.array_equal(expected[a], expected[b]) for a in PROMPTS for b in PROMPTS if a != b)
    watch.peak = 0
    with server.studio.cache.lease("facebook/musicgen-small") as (_, scheduler):
        scheduler.peak_rows = 0
        got = in_parallel(lambda p: read(Client(server.url, verbose=False).predict(
            prompt=p, duration=2, seed=42, api_name="/generate")), PROMPTS)
    for prompt, audio in zip(PROMPTS, got):
        assert isinstance(audio, np.ndarray), audio
        assert np.array_equal(audio, expected[prompt]), f"{prompt!r} got another request's audio"
    assert watch.peak > 1 and scheduler.peak_rows >= 4  # at least two requests in one decode step


def call_route(url: str, prompt: str) -> np.ndarray:
    """Gradio's queued REST route: POST /call/generate, then read the event stream for the result."""
    data = [prompt, 2, "small", False, "encodec", None, 250, 0.0, 1.0, 3.0, 42, None, *EXTRA]
    with httpx.Client(timeout=120) as http:
        event = http.post(f"{url}gradio_api/call/generate", json={"data": data}).raise_for_status().json()
        text = http.get(f"{url}gradio_api/call/generate/{event['event_id']}").raise_for_status().text
        lines = text.splitlines()
        done = lines.index("event: complete")
        result = json.loads(lines[done + 1].removeprefix("data: "))[0]
        wav = http.get(result["url"]).raise_for_status().content
    path = f"/tmp/musicgen-call-{threading.get_ident()}.wav"
    with open(path, "wb") as f:
        f.write(wav)
    return read(path)


def test_raw_http_routes_are_queued_and_never_mixed(server: Server, watch: EngineWatch) -> None:
    """The direct route (/run/...) would skip the queue and its limits: it is closed. The queued REST route
    keeps each request's audio apart."""
    data = {"data": ["jazz trio", 1, "small", False, "encodec", None, 250, 0.0, 1.0, 3.0, 42, None, *EXTRA]}
    direct = httpx.post(f"{server.url}gradio_api/run/generate", json=data, timeout=60)
    assert direct.status_code == 404 and "join the queue" in direct.text
    assert watch.steps == 0
    expected = {p: alone(server, p) for p in PROMPTS[:3]}
    watch.peak = 0
    got = in_parallel(lambda p: call_route(server.url, p), PROMPTS[:3])
    for prompt, audio in zip(PROMPTS[:3], got):
        assert isinstance(audio, np.ndarray), audio
        assert np.array_equal(audio, expected[prompt])


def test_result_files_are_unique_per_request(server: Server) -> None:
    paths = {server.studio.output_path(42) for _ in range(100)}
    assert len(paths) == 100 and all("musicgen-42-" in p.name for p in paths)


def test_a_cancelled_job_stops_the_engine(server: Server, watch: EngineWatch) -> None:
    """Job.cancel() on a long generation: the engine stops within a second or two, and the next visitor's
    request is as fast as before."""
    client = Client(server.url, verbose=False)
    start = time.monotonic()
    client.predict(prompt="jazz trio", duration=2, seed=1, api_name="/generate")
    before = time.monotonic() - start
    job = Client(server.url, verbose=False).submit(prompt="ambient drone", duration=120, seed=1,
                                                   api_name="/generate")
    watch.wait(lambda w: w.active == 1 and w.steps > 50, timeout=60)
    deadline = time.monotonic() + 30  # the client learns its job's id with the first progress message
    while job.status().code != Status.PROGRESS and time.monotonic() < deadline:
        time.sleep(0.02)
    assert watch.active == 1
    job.cancel()
    stopped = watch.wait(lambda w: w.active == 0, timeout=10)
    steps = watch.steps
    time.sleep(0.5)
    assert watch.steps == steps < 1000  # no step after it stopped, far from the 6000 frames asked for
    assert stopped < 2.0, f"the engine ran on for {stopped:.1f} s after the cancel"
    start = time.monotonic()
    audio = read(client.predict(prompt="jazz trio", duration=2, seed=1, api_name="/generate"))
    after = time.monotonic() - start
    assert audio.shape == (64000, 1)
    assert after < 2 * before + 1.0, f"the next request took {after:.1f} s (before the cancel: {before:.1f} s)"


def test_a_closed_tab_stops_the_engine(server: Server, watch: EngineWatch) -> None:
    """A visitor who goes away mid-generation (the event stream closes, as when a tab is closed): the queue
    notices and the engine stops within a second or two."""
    config = httpx.get(f"{server.url}config", timeout=30).json()
    fn_index = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "generate")
    data = ["ambient drone", 120, "small", False, "encodec", None, 250, 0.0, 1.0, 3.0, 1, None, *EXTRA]
    body = {"data": data, "fn_index": fn_index, "session_hash": "closed-tab", "event_data": None, "trigger_id": None}
    with httpx.Client(timeout=60) as http:
        http.post(f"{server.url}gradio_api/queue/join", json=body).raise_for_status()
        with http.stream("GET", f"{server.url}gradio_api/queue/data", params={"session_hash": "closed-tab"}) as s:
            for _line in s.iter_lines():
                if watch.steps > 50:
                    break  # leave: the stream closes with this block
    stopped = watch.wait(lambda w: w.active == 0, timeout=20)
    assert stopped < 2.0, f"the engine ran on for {stopped:.1f} s after the visitor left"
    assert watch.steps < 2000


def _call(url: str, data: list) -> str:
    """The last line of Gradio's event stream for one request through the queued REST route."""
    with httpx.Client(timeout=120) as http:
        event = http.post(f"{url}gradio_api/call/generate", json={"data": data}).raise_for_status().json()
        return http.get(f"{url}gradio_api/call/generate/{event['event_id']}").raise_for_status().text.strip()


@pytest.mark.parametrize(("melody", "count", "message"), [
    ({"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, 20, "uploaded to this server"),
    ({"url": "http://127.0.0.1:1/a.wav", "path": "a.wav", "meta": {"_type": "gradio.FileData"}}, 20,
     "uploaded to this server"),
    ("../../etc/passwd", 20, "uploaded to this server"),
    (None, 3, "send 20 values, in this order: prompt, duration, model_size"),
])
def test_raw_requests_are_refused_readably(server: Server, melody: object, count: int, message: str) -> None:
    """Files that were not uploaded are refused without naming a server path; a short payload says what to
    send. The next request works."""
    data = ["jazz trio", 1, "small", False, "encodec", melody, 250, 0.0, 1.0, 3.0, 42, None, *EXTRA][:count]
    last = _call(server.url, data)
    assert last.splitlines()[-1].startswith("data: {\"error\"") and message in last
    assert "/work" not in last and "Traceback" not in last and str(server.cache) not in last
    assert "error" not in _call(server.url, ["jazz trio", 1, "small", False, "encodec", None, 250, 0.0, 1.0, 3.0, 42,
                                            None, *EXTRA]).splitlines()[-1]


def test_model_switches_under_mixed_traffic_fail_nobody(server: Server, tmp_path) -> None:
    """Issue 21: concurrent requests spread over three checkpoints (mono, stereo and melody), so the studio switches
    models while requests hold the current one: every request gets its own music (as alone), none fails."""
    from test_app import _tune

    melody = _tune(tmp_path / "tune.wav", 440)
    kinds = [("mono", 7), ("stereo", 7), ("melody", 8), ("mono", 8), ("stereo", 8), ("melody", 7), ("mono", 7),
             ("melody", 8), ("stereo", 7)]

    def one(kind: tuple[str, int]) -> np.ndarray:
        what, seed = kind
        extra = {"melody": melody} if what == "melody" else {}
        return read(Client(server.url, verbose=False).predict(prompt="80s synthwave", duration=1, seed=seed,
                                                              stereo=what == "stereo", api_name="/generate", **extra))

    expected = {k: one(k) for k in set(kinds)}
    got = in_parallel(one, kinds)
    for kind, audio in zip(kinds, got):
        assert isinstance(audio, np.ndarray), f"{kind}: {audio!r}"
        assert np.array_equal(audio, expected[kind]), kind
    assert server.studio.cache.leases == 0
