"""The web app through its public API (`/generate`) with gradio_client, against an in-process server.

Every bad input must come back as an error message a person can act on, and the next request must work.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from studio_server import Server, get_server

from musicgen import MusicGen, session, studio


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = get_server(tmp_path_factory, request)
    with srv.offline():
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    return Client(server.url, verbose=False)


def generate(client: Client, **kwargs) -> tuple[np.ndarray, int]:
    path = client.predict(api_name="/generate", **kwargs)
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    return audio, sr


def test_api_parameters_are_named(client: Client) -> None:
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(info) == {"/generate"}  # the UI's own events are private
    names = [p["parameter_name"] for p in info["/generate"]["parameters"]]
    assert names == ["prompt", "duration", "model_size", "stereo", "decoder", "melody", "top_k", "top_p",
                     "temperature", "cfg_coef", "seed"]
    defaults = {p["parameter_name"]: p["parameter_default"] for p in info["/generate"]["parameters"]}
    assert defaults["duration"] == 10 and defaults["model_size"] == "small" and defaults["seed"] == -1


@pytest.mark.parametrize(("duration", "stereo"), [(2, False), (1, True)])
def test_generate_length_and_channels(client: Client, duration: float, stereo: bool) -> None:
    audio, sr = generate(client, prompt="lofi hip hop beat", duration=duration, stereo=stereo)
    assert sr == 32000
    assert audio.shape == (duration * 32000, 2 if stereo else 1)
    assert np.abs(audio).max() > 0.01


def test_seed_reproducible(client: Client) -> None:
    a, _ = generate(client, prompt="80s synthwave", duration=1, seed=1234)
    b, _ = generate(client, prompt="80s synthwave", duration=1, seed=1234)
    c, _ = generate(client, prompt="80s synthwave", duration=1, seed=1235)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _silent_wav(path) -> str:
    sf.write(str(path), np.zeros(32000, dtype=np.float32), 32000)
    return str(path)


def _not_audio(path) -> str:
    path.write_text("this is not audio")
    return str(path)


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _cpu_oom(*args, **kwargs):
    raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")


def _bug(*args, **kwargs):
    raise KeyError("unexpected")


# (id, request fields, setup(monkeypatch, server, tmp_path) -> extra fields, expected message part)
BAD = [
    ("empty prompt", {"prompt": ""}, None, "prompt is empty"),
    ("blank prompt", {"prompt": "  \n "}, None, "prompt is empty"),
    ("long prompt", {"prompt": "x" * 2100}, None, "2100 characters long"),
    ("too many tokens", {"prompt": " ".join("abcdefghij" * 60)}, None, "tokens long"),
    ("unreadable melody", {}, lambda mp, s, tmp: {"melody": handle_file(_not_audio(tmp / "tune.wav"))},
     "cannot read the melody file"),
    ("silent melody", {}, lambda mp, s, tmp: {"melody": handle_file(_silent_wav(tmp / "quiet.wav"))}, "silent"),
    ("melody unavailable", {},
     lambda mp, s, tmp: (mp.setattr(s.studio, "features", studio.EngineFeatures(melody=False, mbd=False)),
                         {"melody": handle_file(_silent_wav(tmp / "tune.wav"))})[1],
     "melody conditioning is not available yet"),
    ("diffusion unavailable", {"decoder": "mbd"},
     lambda mp, s, tmp: mp.setattr(s.studio, "features", studio.EngineFeatures(melody=True, mbd=False)),
     "multi-band diffusion decoder is not available yet"),
    ("model not downloadable", {"model_size": "large"}, None, "not in the local cache"),
    ("out of memory", {}, lambda mp, s, tmp: mp.setattr(MusicGen, "stream", _oom), "out of memory"),
    ("cpu out of memory", {}, lambda mp, s, tmp: mp.setattr(MusicGen, "stream", _cpu_oom), "out of memory"),
    ("engine bug", {}, lambda mp, s, tmp: mp.setattr(session, "run", _bug), "Generation failed (KeyError"),
    ("bad top_p", {"top_p": 1.5}, None, "greater than maximum"),
    ("bad decoder", {"decoder": "wavenet"}, None, "wavenet"),
]


@pytest.mark.parametrize(("fields", "setup", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_reported_then_next_request_works(client: Client, server: Server, tmp_path,
                                                       fields: dict, setup, message: str) -> None:
    request = {"prompt": "jazz trio", "duration": 1, **fields}
    with pytest.MonkeyPatch.context() as mp:
        if setup is not None:
            request |= setup(mp, server, tmp_path) or {}
        with pytest.raises(AppError) as err:
            client.predict(api_name="/generate", **request)
    assert message.lower() in str(err.value).lower()
    audio, _ = generate(client, prompt="jazz trio", duration=1, seed=7)  # the server keeps serving
    assert audio.shape == (32000, 1)


def _tune(path, freq: float):
    t = np.arange(3 * 32000) / 32000
    sf.write(str(path), (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 32000)
    return handle_file(str(path))


def test_melody_with_small_uses_the_melody_model(client: Client, server: Server, tmp_path) -> None:
    assert server.studio.features.melody  # the engine has melody conditioning: the app must use it
    a, _ = generate(client, prompt="piano", duration=1, seed=3, melody=_tune(tmp_path / "a.wav", 440))
    assert a.shape == (32000, 1)
    assert server.studio.cache.current == "facebook/musicgen-melody"  # small has no melody variant
    b, _ = generate(client, prompt="piano", duration=1, seed=3, melody=_tune(tmp_path / "b.wav", 311))
    again, _ = generate(client, prompt="piano", duration=1, seed=3, melody=_tune(tmp_path / "c.wav", 440))
    assert np.abs(a - b).max() > 1e-3 and np.array_equal(a, again)  # the melody reaches the model


def test_stereo_melody(client: Client, server: Server, tmp_path) -> None:
    audio, _ = generate(client, prompt="piano", duration=1, stereo=True, melody=_tune(tmp_path / "t.wav", 440))
    assert audio.shape == (32000, 2) and np.abs(audio[:, 0] - audio[:, 1]).max() > 1e-3
    assert server.studio.cache.current == "facebook/musicgen-stereo-melody"


def test_diffusion_decoder(client: Client, server: Server) -> None:
    """decoder="mbd" (weights from the cache's facebook/multiband-diffusion) returns that decoder's audio."""
    assert server.studio.features.mbd
    plain, _ = generate(client, prompt="ambient drone", duration=1, seed=99)
    mbd, _ = generate(client, prompt="ambient drone", duration=1, seed=99, decoder="mbd")
    assert plain.shape == mbd.shape == (32000, 1)
    assert np.abs(mbd - plain).max() > 0.01


def test_long_piece_through_the_api(client: Client) -> None:
    """Beyond the 30 s window the engine works window by window; the API returns the whole piece."""
    audio, sr = generate(client, prompt="ambient drone", duration=35, seed=1)
    assert audio.shape == (35 * 32000, 1)
