"""musicgen/options.py: one frozen options type, its defaults and its checks."""

from __future__ import annotations

import dataclasses
import math

import pytest

from musicgen.errors import InvalidInputError
from musicgen.options import NAMES, GenerationOptions, options, seed_of


def test_defaults_are_audiocraft_s_and_frozen() -> None:
    o = GenerationOptions()
    assert (o.duration, o.top_k, o.top_p, o.temperature, o.cfg_coef, o.seed, o.extend_stride, o.decoder,
            o.normalize) == (10.0, 250, 0.0, 1.0, 3.0, None, 18.0, "encodec", "loudness")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.top_k = 5  # type: ignore[misc]


def test_options_replaces_and_keeps_the_base() -> None:
    base = options(top_k=10, seed=3)
    o = options(base, temperature=0.0)
    assert (o.top_k, o.seed, o.temperature) == (10, 3, 0.0) and base.temperature == 1.0


@pytest.mark.parametrize(("change", "message"), [
    ({"duration": 0}, "duration must be positive"),
    ({"duration": math.inf}, "finite number of seconds"),
    ({"duration": 301}, "300 s limit"),
    ({"top_k": True}, "top_k"),
    ({"top_p": 2}, "top_p must be between 0 and 1"),
    ({"temperature": -1}, "temperature"),
    ({"cfg_coef": "3"}, "cfg_coef must be a number"),
    ({"seed": 2**63}, "seed"),
    ({"melody": "tune.wav"}, "melody must be a .wave, sample_rate. pair"),
    ({"continue_from": (1, 2, 3)}, "continue_from must be"),
    ({"extend_stride": 0}, "extend_stride"),
    ({"decoder": "wavenet"}, "decoder must be one of"),
    ({"normalize": "lufs"}, r'normalize must be one of loudness, peak, rms, clip, none \("loudness": -16 LUFS, '),
    ({"normalize": None}, "normalize must be one of"),
    ({"top_kk": 5}, "unknown generation option.s. top_kk; the options are duration, top_k"),
])
def test_every_check_lives_here(change: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        options(**change)


def test_seed_of_keeps_a_given_seed_and_draws_a_fresh_one() -> None:
    assert seed_of(options(seed=7)) == 7
    fresh = {seed_of(GenerationOptions()) for _ in range(4)}
    assert len(fresh) == 4 and all(0 <= s < 2**63 for s in fresh)


def test_generate_takes_the_fields_as_keywords(small) -> None:
    """The keyword API is `options(**kwargs)`: the same request through either gives the same music."""
    o = options(duration=0.2, seed=11, top_k=50, temperature=0.7)
    a = small.generate(["lofi"], options=o)
    b = small.generate(["lofi"], 0.2, seed=11, top_k=50, temperature=0.7)
    c = small.generate(["lofi"], options=o, seed=12)
    assert a.tokens.equal(b.tokens) and not a.tokens.equal(c.tokens) and c.seed == 12
    assert set(NAMES) >= {"melody", "continue_from", "extend_stride", "decoder", "normalize"}
    with pytest.raises(InvalidInputError, match="unknown generation option"):
        small.generate(["lofi"], 0.2, temprature=0.5)
