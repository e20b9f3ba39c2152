"""Streamed decoding: chunks from growing token prefixes must add up to the full decode.

Tolerance: the streamed samples are computed by the same layers on the same inputs, but over windows of
other lengths (conv blocking, LSTM steps in several calls), so they differ from a full decode by float32
rounding only: <= 1.4e-6 measured on these fixtures, whose pre-clamp audio reaches |x| ~ 6 (a few ulp at
that magnitude). TOL = 1e-5 leaves margin for other BLAS builds while any real mistake is far above it:
resetting the LSTM state between chunks errs by ~1e-1, one sample too little hold-back by ~1e-4.
"""

from __future__ import annotations

import pytest
import torch

from musicgen import MusicGen
from musicgen.streaming import StreamDecoder

TOL = 1e-5
HOP = 640
FRAMES = 157  # 3.14 s: not a multiple of any chunk size used below


def random_tokens(mg: MusicGen, frames: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, mg.cfg.codec.codebook_size, (batch, mg.num_codebooks, frames), generator=gen)


def stream_decode(mg: MusicGen, tokens: torch.Tensor, cuts: list[int]) -> tuple[torch.Tensor, StreamDecoder]:
    dec = StreamDecoder(mg.codec, mg.audio_channels, tokens.shape[-1])
    parts = []
    for n in cuts:
        parts.append(dec.push(tokens[..., :n]))
        if n < tokens.shape[-1]:  # the hold-back rule: everything but the last `holdback` samples is out
            assert dec.emitted == max(0, n * HOP - dec.holdback)
    assert dec.done and dec.emitted == tokens.shape[-1] * HOP
    return torch.cat(parts, dim=-1), dec


def test_holdback_is_derived_from_the_layers(small: MusicGen) -> None:
    dec = StreamDecoder(small.codec, 1)
    # conv 0 (k7) looks 3 frames (1920 samples) ahead. In the upsampling stack every transposed conv loses
    # its left trim (4, 3, 2, 2) and every residual k3 conv 1 step at its own rate, scaled by the later
    # upsampling (x5, x4, x4), then the last k7 conv 3 samples: (((4+1)*5 + 3+1)*4 + 2+1)*4 + 2+1 + 3 = 482
    assert (dec.lookahead, dec.context) == (3, 3)
    assert dec.holdback == 3 * HOP + 482 == 2402


@pytest.mark.parametrize("n", [5, 20, 57, 150])
def test_holdback_is_the_measured_receptive_field(small: MusicGen, n: int) -> None:
    """Measured: two sequences of the same length that differ from frame n on decode (raw, unclamped) to
    bit-identical samples up to n * 640 - holdback, and the very next sample differs; and the decode of the
    n-frame prefix alone agrees with the longer one up to there (within TOL: other lengths, other rounding)."""
    a = random_tokens(small, n + 10, seed=n, batch=1)
    b = a.clone()
    b[..., n:] = random_tokens(small, 10, seed=n + 1, batch=1)
    with torch.inference_mode():
        da, db = small.codec.decode(a)[0, 0], small.codec.decode(b)[0, 0]
        prefix = small.codec.decode(a[..., :n])[0, 0]
    cut = n * HOP - StreamDecoder(small.codec, 1).holdback
    changed = ((da - db) != 0).nonzero()
    assert changed[0].item() == cut
    assert (prefix[:cut] - da[:cut]).abs().max() <= TOL


@pytest.mark.parametrize("cuts", [
    [FRAMES],
    [1, 2, 3, 4, 5, 9, 30, 31, 100, 156, FRAMES],
    [50, 100, FRAMES],
    list(range(1, FRAMES + 1)),
], ids=["one-push", "irregular", "every-50", "every-frame"])
def test_chunks_concatenate_to_the_full_decode(small: MusicGen, cuts: list[int]) -> None:
    tokens = random_tokens(small, FRAMES)
    streamed, _ = stream_decode(small, tokens, cuts)
    full = small.decode(tokens)
    assert streamed.shape == full.shape == (2, 1, FRAMES * HOP)
    assert (streamed - full).abs().max() <= TOL


def test_stereo_chunks_concatenate_to_the_full_decode(stereo_pair: tuple[object, MusicGen]) -> None:
    _, mg = stereo_pair
    tokens = random_tokens(mg, FRAMES, seed=1)
    streamed, _ = stream_decode(mg, tokens, [7, 40, 41, 120, FRAMES])
    full = mg.decode(tokens)
    assert streamed.shape == full.shape == (2, 2, FRAMES * HOP)
    assert (streamed - full).abs().max() <= TOL


def test_the_tolerance_catches_a_wrong_scheme(small: MusicGen) -> None:
    """Negative control: forgetting the LSTM state between chunks is far outside TOL."""
    tokens = random_tokens(small, FRAMES)
    dec, parts = StreamDecoder(small.codec, 1, FRAMES), []
    for n in (50, 100, FRAMES):
        parts.append(dec.push(tokens[..., :n]))
        dec._state = None
    assert (torch.cat(parts, -1) - small.decode(tokens)).abs().max() > 100 * TOL


def test_finish_without_a_known_length(small: MusicGen) -> None:
    tokens = random_tokens(small, 60, batch=1)
    dec = StreamDecoder(small.codec, 1)
    parts = [dec.push(tokens[..., :30]), dec.push(tokens[..., :45]), dec.finish(tokens)]
    assert (torch.cat(parts, -1) - small.decode(tokens)).abs().max() <= TOL


def test_misuse_is_reported(small: MusicGen) -> None:
    tokens = random_tokens(small, 20, batch=1)
    dec = StreamDecoder(small.codec, 1, 20)
    dec.push(tokens[..., :10])
    with pytest.raises(ValueError, match="growing prefix"):
        dec.push(tokens[..., :5])
    with pytest.raises(ValueError, match=r"\[B, 4, frames\]"):
        dec.push(tokens[:, :2])
    dec.push(tokens)
    with pytest.raises(ValueError, match="already returned"):
        dec.push(tokens)


@pytest.mark.parametrize("stereo", [False, True])
def test_chunked_decode_fed_frame_by_frame_is_decode(small: MusicGen, stereo_pair: tuple[object, MusicGen],
                                                     stereo: bool) -> None:
    """The scheduler feeds `ChunkedDecode` after every decode step: the result is `MusicGen.decode`'s, bit for
    bit (the same chunk cuts), and nothing is decoded before a whole chunk is there."""
    mg = stereo_pair[1] if stereo else small
    codes = torch.randint(0, 2048, (2, mg.num_codebooks, 137), generator=torch.Generator().manual_seed(4))
    dec = mg.chunked_decode(2, 137)
    assert dec is not None and dec.chunk == max(50 // (2 * mg.audio_channels), 16)
    for n in range(1, 138):
        dec.push(codes[..., :n])
        assert len(dec.parts) == min(n // dec.chunk, -(-137 // dec.chunk)) or n == 137
        assert (dec.audio is None) == (n < 137)
    assert torch.equal(dec.audio, mg.decode(codes))
    assert mg.chunked_decode(1, 16) is None  # one pass: too short to cut
