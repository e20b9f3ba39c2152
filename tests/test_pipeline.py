"""The public API contract: shapes, defaults, bad input, and the steps MusicGen.stream yields (the command line:
test_cli.py)."""

from __future__ import annotations

import math

import pytest
import torch

from musicgen import GenerationOutput, InvalidInputError, MusicGen, dsp, loudness


def test_output_contract(small: MusicGen) -> None:
    out = small.generate(["lofi", "synthwave", ""], 0.25, seed=3, normalize="none")
    assert isinstance(out, GenerationOutput)
    assert out.sample_rate == small.sample_rate == 32000
    assert out.tokens.dtype == torch.long and out.tokens.shape == (3, 4, round(0.25 * 50))
    assert out.audio.dtype == torch.float32 and out.audio.shape == (3, small.audio_channels, 12 * 640)
    assert out.audio.abs().max() <= 1.0
    assert torch.equal(small.decode(out.tokens), out.audio)  # "none": the decoder's output as it is
    assert small.generate("just one string", 0.1, seed=1).tokens.shape[0] == 1


def quiet_engine(folder: object, gain: float = 0.05) -> MusicGen:
    """The tiny checkpoint with its EnCodec decoder's last layer scaled by `gain`. The tiny random model's own
    output is noise clipped at full scale (RMS ~0.6), which BS.1770 as torchaudio measures it reads low (its
    K-weighting filter clamps at +-1; audiocraft reads it the same way): scaled down, it is a signal whose
    loudness can be measured, as real music is."""
    mg = MusicGen.from_pretrained(folder, device="cpu")
    with torch.no_grad():
        last = mg.codec.decoder.layers[-1].conv
        last.weight.mul_(gain)
        last.bias.mul_(gain)
    return mg


def test_output_is_levelled_to_minus_16_lufs_by_default(small: MusicGen, checkpoints) -> None:
    """audiocraft's demo level (loudness.py), each item on its own, measured as BS.1770 (dsp.loudness)."""
    quiet = quiet_engine(checkpoints["current"][1])
    out = quiet.generate(["lofi", "synthwave"], 2.0, seed=3)
    raw = quiet.decode(out.tokens)
    for item, decoded in zip(out.audio, raw):
        assert abs(dsp.loudness(item, 32000) + 16.0) < 1.0, dsp.loudness(item, 32000)
        assert abs(dsp.loudness(decoded, 32000) + 16.0) > 3.0  # the decoder's own level is elsewhere
    out = small.generate(["lofi", "synthwave"], 2.0, seed=3)  # clipped noise: levelled all the same
    for item, decoded in zip(out.audio, small.decode(out.tokens)):
        assert torch.equal(item, loudness.normalize(decoded, 32000, "loudness"))
    again = small.generate(["lofi", "synthwave"], 2.0, seed=3, normalize="peak")
    assert torch.equal(again.tokens, out.tokens)  # the level changes the audio only
    peaks = again.audio.abs().amax(dim=(1, 2))
    torch.testing.assert_close(peaks, torch.full((2,), 10 ** (-1 / 20)))  # -1 dBFS each


def test_stereo_items_get_one_gain_for_both_channels(stereo_pair: tuple[object, MusicGen]) -> None:
    mg = quiet_engine(stereo_pair[1].name)  # peaks below full scale: each item has its own
    out = mg.generate(["lofi", "jazz"], 0.5, seed=2, normalize="peak")
    raw = mg.decode(out.tokens)
    gains = 10 ** (-1 / 20) / raw.abs().amax(dim=(1, 2))  # "peak": the item's largest sample to -1 dBFS
    assert not torch.allclose(gains[0], gains[1])  # each item its own gain ...
    for item, decoded, gain in zip(out.audio, raw, gains):
        torch.testing.assert_close(item, decoded * gain)  # ... the same for its two channels
        assert (item[0] - item[1]).abs().max() > 1e-3


def test_defaults_are_audiocraft_s() -> None:
    from musicgen.options import GenerationOptions

    o = GenerationOptions()  # what generate / stream use for every keyword not given
    assert (o.top_k, o.top_p, o.temperature, o.cfg_coef, o.extend_stride, o.decoder) == (
        250, 0.0, 1.0, 3.0, 18.0, "encodec")


BAD_INPUTS = [
    ({"duration": 0}, "duration must be positive"),
    ({"duration": -1.0}, "duration must be positive"),
    ({"duration": math.nan}, "finite"),
    ({"duration": math.inf}, "finite"),
    ({"duration": "5"}, "finite"),
    ({"duration": 300.5}, "300 s limit"),
    ({"duration": 40, "extend_stride": 0}, "extend_stride"),
    ({"duration": 40, "extend_stride": 31}, "extend_stride"),
    ({"duration": 0.001}, "shorter than one frame"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.1}, "top_p"),
    ({"cfg_coef": math.nan}, "cfg_coef"),
    ({"seed": -1}, "seed"),
    ({"normalize": "loud"}, "normalize must be one of loudness, peak, rms, clip, none"),
    ({"prompts": []}, "non-empty list"),
    ({"prompts": ["ok", 3]}, "prompt 1 is a int"),
    ({"prompts": None}, "non-empty list"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_input_raises_value_error(small: MusicGen, change: dict, message: str) -> None:
    kwargs = {"prompts": ["a"], "duration": 0.1, **change}
    with pytest.raises(InvalidInputError, match=message) as info:
        small.generate(kwargs.pop("prompts"), kwargs.pop("duration"), **kwargs)
    assert isinstance(info.value, ValueError)


def test_bad_tokens(small: MusicGen) -> None:
    with pytest.raises(InvalidInputError, match="codebooks"):
        small.decode(torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(InvalidInputError, match=r"\[0, 2048\)"):
        small.decode(torch.full((1, 4, 5), 2048))
    with pytest.raises(InvalidInputError, match="integers"):
        small.decode(torch.zeros(1, 4, 5))


def test_stream_yields_growing_prefixes_then_the_generate_result(small: MusicGen) -> None:
    events = list(small.stream(["lofi", "jazz"], 0.2, seed=11))
    *steps, final = events
    assert isinstance(final, GenerationOutput)
    assert torch.equal(final.tokens, small.generate(["lofi", "jazz"], 0.2, seed=11).tokens)
    assert [e.step for e in steps] == list(range(1, 10 + 4)) and {e.total for e in steps} == {13}
    sizes = [e.tokens.shape[-1] for e in steps]
    assert sizes == [0, 0, 0] + list(range(1, 11))  # a frame is complete once its last codebook is in
    for e in steps:
        assert torch.equal(e.tokens, final.tokens[..., : e.tokens.shape[-1]])


def test_stream_validates_before_working(small: MusicGen) -> None:
    with pytest.raises(InvalidInputError, match="duration"):
        next(small.stream(["a"], -1))
