"""EnCodec decode / encode against transformers' EncodecModel."""

from __future__ import annotations

import pytest
import torch

from musicgen import MusicGen


def test_decode_matches(mg: MusicGen, ref) -> None:
    codes = torch.randint(0, 2048, (2, 4, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref.audio_encoder.decode(codes[None], [None]).audio_values
    got = mg.codec.decode(codes)
    assert got.shape == want.shape == (2, 1, 17 * 640)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_long_decode_is_chunked_and_matches(mg: MusicGen, ref) -> None:
    """MusicGen.decode runs EnCodec in chunks past DECODE_CHUNK frames (bounded memory): still transformers'
    audio, and the same as one pass up to float rounding, at any length and batch size."""
    from musicgen import pipeline

    codes = torch.randint(0, 2048, (2, 4, 2 * pipeline.DECODE_CHUNK + 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref.audio_encoder.decode(codes[None], [None]).audio_values
    got = mg.decode(codes)
    torch.testing.assert_close(got, want.clamp(-1, 1), rtol=1e-4, atol=1e-4)
    one_pass = mg.codec.decode(codes).clamp(-1, 1)
    assert (got - one_pass).abs().max() < 1e-5
    chunked = []
    real = pipeline.MusicGen._decode_chunked
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pipeline.MusicGen, "_decode_chunked", lambda self, t, c: chunked.append(c) or real(self, t, c))
        mg.decode(codes)
    assert chunked == [pipeline.DECODE_CHUNK // 2]  # the chunk is split between the batch's items


def test_encode_matches(mg: MusicGen, ref) -> None:
    audio = torch.randn(2, 1, 32000 // 3, generator=torch.Generator().manual_seed(1)) * 0.3
    with torch.no_grad():
        want = ref.audio_encoder.encode(audio).audio_codes[0]
    got = mg.codec.encode(audio)
    assert got.shape == want.shape == (2, 4, 17)  # ceil(10666 / 640) frames
    assert torch.equal(got, want)


def test_different_codes_decode_differently(small: MusicGen) -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, 2048, (2, 1, 4, 10), generator=g)
    audio_a, audio_b = small.codec.decode(a), small.codec.decode(b)
    assert (audio_a - audio_b).abs().max() > 1e-2


def test_stereo_decode_layout(small: MusicGen) -> None:
    """decode() splits interleaved codebooks per channel; mono models give one channel."""
    codes = torch.randint(0, 2048, (3, 4, 5))
    assert small.decode(codes).shape == (3, 1, 5 * 640)
