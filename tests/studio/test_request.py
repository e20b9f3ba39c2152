"""musicgen/studio/request.py: seeds and request checks."""

from __future__ import annotations

import numpy as np
import pytest

from musicgen import InvalidInputError
from musicgen.studio import request
from musicgen.studio.request import parse_request, parse_seed


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), (-1, None), (-1.0, None), (0, 0),
                                                 (42, 42), (42.0, 42), ("17", 17), (2**53 - 1, 2**53 - 1)])
def test_seeds(value, expected) -> None:
    assert parse_seed(value) == expected


@pytest.mark.parametrize("value", [1.5, "abc", 2**53, True, float("nan")])
def test_bad_seeds(value) -> None:
    with pytest.raises(InvalidInputError, match="seed"):
        parse_seed(value)


def test_fresh_seeds_fit_in_javascript() -> None:
    assert all(0 <= request.fresh_seed() < 2**32 for _ in range(100))


def args(**kw):
    base = dict(prompt="lofi", duration=10, model_size="small", stereo=False, decoder="encodec", melody=None,
                top_k=250, top_p=0.0, temperature=1.0, cfg_coef=3.0, seed=-1, continue_audio=None)
    return {**base, **kw}


def test_request_is_normalised() -> None:
    req = parse_request(**args(prompt="  lofi \n beat ", top_k=250.0, seed="12"))
    assert (req.prompt, req.top_k, req.seed, req.melody_path, req.continue_path) == ("lofi beat", 250, 12, None,
                                                                                     None)
    assert parse_request(**args(continue_audio="/tmp/x.wav")).continue_path == "/tmp/x.wav"
    assert isinstance(req.top_k, int)


@pytest.mark.parametrize(("kw", "message"), [
    ({"prompt": None}, "prompt is empty"),
    ({"duration": 0.5}, "duration must be between 1 and 300"),
    ({"duration": 301}, "between 1 and 300"),
    ({"duration": "ten"}, "duration must be a number"),
    ({"model_size": "xl"}, "model_size must be one of"),
    ({"stereo": "yes"}, "stereo must be true or false"),
    ({"decoder": "hifigan"}, "decoder must be one of"),
    ({"top_k": 2.5}, "top_k must be a whole number"),
    ({"top_p": -0.1}, "top_p must be between"),
    ({"temperature": float("inf")}, "temperature must be a number"),
    ({"cfg_coef": -1}, "cfg_coef must be between"),
    ({"melody": 3}, "melody must be an uploaded audio file"),
    ({"continue_audio": 3}, "continue_audio must be an uploaded audio file"),
])
def test_request_errors(kw, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_request(**args(**kw))


def test_duration_must_leave_room_after_the_clip() -> None:
    clip = (np.zeros((1, 5 * 32000), np.float32), 32000)
    request.check_continuation(5.5, clip)
    for duration in (5, 4):
        with pytest.raises(InvalidInputError, match="audio to continue is 5.0 s long and the duration counts it"):
            request.check_continuation(duration, clip)
