"""The web app through its public API (`/generate`) with gradio_client, against an in-process server.

Every bad input must come back as an error message a person can act on, and the next request must work.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from demucs.apply import BagOfModels
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from helpers.studio_server import OWNER, Server

from musicgen import dsp, serve
from musicgen.studio import session


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    return Client(server.url, verbose=False)


def generate(client: Client, **kwargs) -> tuple[np.ndarray, int]:
    path = client.predict(api_name="/generate", **kwargs)
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    return audio, sr


def test_api_parameters_are_named(client: Client) -> None:
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(info) == {"/generate", "/generate_takes"}  # the UI's own events are private
    names = [p["parameter_name"] for p in info["/generate"]["parameters"]]
    assert names == ["prompt", "duration", "model_size", "stereo", "decoder", "melody", "top_k", "top_p",
                     "temperature", "cfg_coef", "seed", "continue_audio", "loudness", "output_format",
                     "melody_start", "melody_end", "continue_start", "continue_end", "model", "separate_melody"]
    assert [p["parameter_name"] for p in info["/generate_takes"]["parameters"]] == [*names, "takes"]
    assert info["/generate_takes"]["parameters"][-1]["parameter_default"] == 1  # as the page
    defaults = {p["parameter_name"]: p["parameter_default"] for p in info["/generate"]["parameters"]}
    assert defaults["duration"] == 10 and defaults["model_size"] == "small" and defaults["seed"] == -1
    assert defaults["loudness"] == "loudness" and defaults["output_format"] == "wav" and defaults["melody_end"] == 0


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


def test_takes_have_consecutive_seeds_and_their_own_audio(client: Client) -> None:
    """/generate_takes: 3 takes made together get 3 seeds and 3 different pieces, each exactly the piece one
    request with its seed makes."""
    files, seeds = client.predict(prompt="80s synthwave", duration=1, seed=4000, takes=3, api_name="/generate_takes")
    assert seeds == [4000, 4001, 4002] and len(files) == 3
    takes = [sf.read(f, dtype="float32", always_2d=True)[0] for f in files]
    assert all(t.shape == (32000, 1) for t in takes)
    assert all(np.abs(takes[i] - takes[j]).max() > 1e-3 for i in range(3) for j in range(i + 1, 3))
    alone, _ = generate(client, prompt="80s synthwave", duration=1, seed=4001)
    assert np.array_equal(takes[1], alone)
    _, drawn = client.predict(prompt="80s synthwave", duration=1, seed=-1, takes=2, api_name="/generate_takes")
    assert drawn[1] == drawn[0] + 1  # a random first seed, the next one after it
    with pytest.raises(AppError, match="Takes must be between 1 and 4, got 5"):
        client.predict(prompt="80s synthwave", duration=1, takes=5, api_name="/generate_takes")


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
    ("clip to continue too long", {},
     lambda mp, s, tmp: {"continue_audio": _clip(tmp / "long.wav", 440, seconds=31)}, "must be shorter than 30 s"),
    ("duration within the clip", {"duration": 2},
     lambda mp, s, tmp: {"continue_audio": _clip(tmp / "clip.wav", 440, seconds=3)}, "the duration counts it"),
    ("silent clip to continue", {}, lambda mp, s, tmp: {"continue_audio": handle_file(_silent_wav(tmp / "q.wav"))},
     "audio to continue file q.wav is silent"),
    ("model not downloadable", {"model_size": "large"}, None, "not in the local cache"),
    # (raised in the scheduler's decode loop, handed to the request's thread)
    ("out of memory", {}, lambda mp, s, tmp: mp.setattr(serve, "decode_steps", _oom), "out of memory"),
    ("cpu out of memory", {}, lambda mp, s, tmp: mp.setattr(serve, "decode_steps", _cpu_oom), "out of memory"),
    ("engine bug", {}, lambda mp, s, tmp: mp.setattr(session, "run", _bug), "failed on the server (error id"),
    ("bad top_p", {"top_p": 1.5}, None, "top_p must be between 0 and 1, got 1.5"),
    ("duration not a number", {"duration": "abc"}, None, "duration must be a number, got 'abc'"),
    ("duration missing", {"duration": None}, None, "duration must be a number, got None"),
    ("seed not a number", {"seed": "abc"}, None, "seed must be a whole number"),
    ("seed not whole", {"seed": 1.5}, None, "seed must be a whole number, got 1.5"),
    ("top_k not a number", {"top_k": "x"}, None, "top_k must be a number"),
    ("control characters only", {"prompt": "\x00\x07\x1b\u200b"}, None, "prompt is empty"),
    ("prompt not text", {"prompt": ["a", "b"]}, None, "prompt must be text, got list"),
    ("melody not an upload", {"melody": "/etc/passwd"}, None, "must be audio files uploaded to this server"),
    ("melody a number", {"melody": 5}, None, "must be audio files uploaded to this server"),
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


def _tone(path, freq: float, seconds: float = 3.0, rate: int = 32000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return str(path)


def _tune(path, freq: float):
    return handle_file(_tone(path, freq))


def _clip(path, freq: float, seconds: float = 1.5):
    return handle_file(_tone(path, freq, seconds, rate=44100))


def test_melody_with_small_uses_the_melody_model(client: Client, server: Server, tmp_path) -> None:
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
    plain, _ = generate(client, prompt="ambient drone", duration=1, seed=99)
    mbd, _ = generate(client, prompt="ambient drone", duration=1, seed=99, decoder="mbd")
    assert plain.shape == mbd.shape == (32000, 1)
    assert np.abs(mbd - plain).max() > 0.01


def test_long_piece_through_the_api(client: Client) -> None:
    """Beyond the 30 s window the engine works window by window; the API returns the whole piece."""
    audio, sr = generate(client, prompt="ambient drone", duration=35, seed=1)
    assert audio.shape == (35 * 32000, 1)


def test_continue_from_audio(client: Client, server: Server, tmp_path) -> None:
    """continue_audio: the piece starts with the clip (its EnCodec version) and goes on from it; the result is
    the engine's generate_continuation, and another clip leads the music elsewhere."""
    clip = _tone(tmp_path / "clip.wav", 440, 1.5, rate=44100)
    audio, sr = generate(client, prompt="jazz trio", duration=3, seed=5, continue_audio=handle_file(clip),
                         loudness="none")  # (compared with the engine's raw decode below)
    assert sr == 32000 and audio.shape == (3 * 32000, 1)  # the duration counts the clip
    wave, rate = sf.read(clip, dtype="float32", always_2d=True)
    mg = server.studio.cache.get("facebook/musicgen-small")
    direct = mg.generate_continuation(wave.T, rate, "jazz trio", 3, seed=5, normalize="none")
    assert np.abs(audio - direct.audio[0].T.numpy()).max() < 2 / 32767  # the same piece, up to the WAV's 16 bits
    cut = 75 * 640 - 2402  # up to here the audio depends only on the clip's 75 frames (streaming hold-back)
    clip_only = mg.decode(direct.tokens[..., :75])[0].T.numpy()
    assert np.abs(audio[:cut] - clip_only[:cut]).max() < 2 / 32767  # the piece starts with the clip
    other, _ = generate(client, prompt="jazz trio", duration=3, seed=5, loudness="none",
                        continue_audio=_clip(tmp_path / "other.wav", 311))
    assert np.abs(audio[:cut] - other[:cut]).max() > 1e-3
    assert np.abs(audio[2 * 32000:] - other[2 * 32000:]).max() > 1e-3  # and steers what follows


@pytest.fixture
def quiet_small(server: Server):
    """The served tiny model with its EnCodec decoder's last layer scaled by 0.05 for one test: its own output
    is noise clipped at full scale, which BS.1770 (torchaudio's K-weighting clamps at +-1) reads too low;
    scaled down it is a signal whose loudness can be measured, as real music is. Restored exactly after."""
    last = server.studio.cache.get("facebook/musicgen-small").codec.decoder.layers[-1].conv
    saved = last.weight.detach().clone(), last.bias.detach().clone()
    with torch.no_grad():
        last.weight.mul_(0.05)
        last.bias.mul_(0.05)
    yield
    with torch.no_grad():
        last.weight.copy_(saved[0])
        last.bias.copy_(saved[1])


@pytest.mark.usefixtures("quiet_small")
def test_loudness_strategies_do_what_they_say(client: Client) -> None:
    """The default file is normalised as audiocraft's demo writes it: -16 LUFS (within 1 LU); peak puts the
    peak at -1 dBFS; none is the raw decode, which the others only scale (or clip)."""
    kw = {"prompt": "lofi hip hop beat", "duration": 2, "seed": 9}
    raw, sr = generate(client, loudness="none", **kw)
    default, _ = generate(client, **kw)
    lufs = float(dsp.loudness(torch.from_numpy(default.T.copy()), sr))
    assert abs(lufs + 16) < 1.0, lufs
    peak, _ = generate(client, loudness="peak", **kw)
    assert abs(np.abs(peak).max() - 10 ** (-1 / 20)) < 2 / 32767
    rms, _ = generate(client, loudness="rms", **kw)
    assert abs(20 * np.log10(np.sqrt((rms.mean(1) ** 2).mean())) + 18) < 0.1 or np.abs(rms).max() >= 0.999
    clip, _ = generate(client, loudness="clip", **kw)
    assert np.abs(clip).max() <= 10 ** (-1 / 20) + 1 / 32767
    assert np.corrcoef(raw[:, 0], default[:, 0])[0, 1] > 0.95  # the same music, at another level


@pytest.mark.parametrize(("fmt", "container", "subtype"), [("wav", "WAV", "PCM_16"), ("wav24", "WAV", "PCM_24"),
                                                          ("flac", "FLAC", "PCM_16"), ("mp3", "MP3", None),
                                                          ("ogg", "OGG", "VORBIS")])
def test_each_output_format_comes_back_as_that_format(client: Client, fmt: str, container: str,
                                                      subtype: str | None) -> None:
    path = client.predict(api_name="/generate", prompt="jazz trio", duration=1, seed=2, output_format=fmt)
    info = sf.info(path)
    assert info.format == container and (subtype is None or info.subtype == subtype)
    assert info.samplerate == 32000 and abs(info.duration - 1.0) < 0.1


def test_trims_choose_the_part_of_the_file_used(client: Client, tmp_path) -> None:
    """continue_start / continue_end: the piece starts with that part of the clip, as if the file held only it."""
    t = np.arange(3 * 44100) / 44100
    wave = (0.4 * np.sin(2 * np.pi * (220 + 220 * t) * t)).astype(np.float32)  # a sweep: every part differs
    sf.write(str(tmp_path / "long.wav"), wave, 44100)
    sf.write(str(tmp_path / "part.wav"), wave[44100:2 * 44100], 44100)
    kw = {"prompt": "jazz trio", "duration": 2, "seed": 4, "loudness": "none"}
    trimmed, _ = generate(client, continue_audio=handle_file(str(tmp_path / "long.wav")), continue_start=1,
                          continue_end=2, **kw)
    part, _ = generate(client, continue_audio=handle_file(str(tmp_path / "part.wav")), **kw)
    whole, _ = generate(client, continue_audio=handle_file(str(tmp_path / "long.wav")), continue_end=1.5, **kw)
    assert np.abs(trimmed - part).max() < 2 / 32767
    assert np.abs(trimmed[:32000] - whole[:32000]).max() > 1e-3


def test_a_timeline_change_no_window_plays_is_said_in_the_answer(client: Client) -> None:
    """A change inside the only window is not heard: the API's answer says so (a warning in the job's log), naming
    the change and when it could take effect at the earliest, and the piece is made with the first prompt."""
    job = client.submit(prompt="0:00 ambient pads | 0:03 drums come in", duration=4, seed=2, api_name="/generate")
    job.result(timeout=120)
    logs = []
    while not job.communicator.updates.empty():
        update = job.communicator.updates.get_nowait()
        if getattr(update, "log", None):
            logs.append(update.log)
    assert any(level == "warning" and "0:03 'drums come in' is not heard" in text and "0:30 at the earliest" in text
               for text, level in logs), logs


def test_a_timeline_changes_the_later_window_not_the_first(client: Client) -> None:
    """35 s with "0:00 jazz trio | 0:20 techno": the first 30 s window is the plain "jazz trio" piece (same
    seed), the next window's new audio (from 30 s) is made with "techno"."""
    kw = {"duration": 35, "seed": 6, "loudness": "none"}
    plain, _ = generate(client, prompt="jazz trio", **kw)
    timed, _ = generate(client, prompt="0:00 jazz trio | 0:20 techno", **kw)
    assert plain.shape == timed.shape == (35 * 32000, 1)
    assert np.abs(plain[: 29 * 32000] - timed[: 29 * 32000]).max() < 2 / 32767
    assert np.abs(plain[31 * 32000 :] - timed[31 * 32000 :]).max() > 1e-3


def test_the_owners_model_is_offered_by_name_and_nothing_else(client: Client) -> None:
    """Issue 21: the Space owner's model (here a local folder) is asked for by its name through the API and makes
    its own music; a name not on the owner's list is refused with the list, and nothing is downloaded."""
    kw = {"prompt": "lofi hip hop beat", "duration": 1, "seed": 5, "loudness": "none"}
    meta, _ = generate(client, **kw)
    owner, _ = generate(client, model=OWNER, **kw)
    assert owner.shape == meta.shape and np.abs(owner - meta).max() > 1e-3
    assert np.array_equal(owner, generate(client, model=OWNER, **kw)[0])  # its seed holds
    with pytest.raises(AppError, match=f"Model 'someone/any-repo' is not offered by this server: its own models are "
                                       f"'{OWNER}'"):
        generate(client, model="someone/any-repo", **kw)


def test_the_melody_is_separated_once_and_its_takes_share_the_stems(client: Client, tmp_path) -> None:
    """Issue 22 on the page's API: with a (tiny, random) htdemucs in place, "separate the melody" changes the
    music, a second request with the same melody and another seed does not run the separator again, and without
    a separator (none downloadable here) the visitor is told to switch separation off."""
    from test_stems import small_model

    from musicgen import stems

    kw = {"prompt": "piano", "duration": 1, "melody": _tune(tmp_path / "sep.wav", 440), "loudness": "none"}
    with pytest.raises(AppError, match="Switch off “Separate the melody from drums and bass”"):
        generate(client, seed=3, separate_melody=True, **kw)
    sep = stems.Separator(BagOfModels([small_model()]).eval(), "small")
    calls: list[int] = []
    forward = sep.bag.models[0].forward
    sep.bag.models[0].forward = lambda x: calls.append(1) or forward(x)
    stems.use(sep, torch.device("cpu"))
    try:
        on, _ = generate(client, seed=3, separate_melody=True, **kw)
        n = len(calls)
        other_seed, _ = generate(client, seed=4, separate_melody=True, **kw)
        assert n > 0 and len(calls) == n  # the stems of this melody were kept
        off, _ = generate(client, seed=3, separate_melody=False, **kw)
        assert np.abs(on - off).max() > 1e-3 and np.abs(on - other_seed).max() > 1e-3
    finally:
        stems._separators.pop("cpu", None)
