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
    real = pipeline.MusicGen.chunked_decode
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pipeline.MusicGen, "chunked_decode", lambda self, *a: chunked.append(real(self, *a)) or chunked[-1])
        mg.decode(codes)
    assert [c.chunk for c in chunked] == [pipeline.DECODE_CHUNK // 2]  # the chunk is split between the batch's items
    assert torch.equal(chunked[0].audio, got)


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


@pytest.fixture(scope="module")
def causal(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, MusicGen]:
    """A checkpoint whose EnCodec is causal (transformers' EncodecConfig default), built by transformers."""
    from helpers.checkpoints import build_model, save_checkpoint, tiny_config

    cfg = tiny_config()
    cfg.audio_encoder.use_causal_conv = True
    model = build_model(seed=4)
    causal_model = type(model)(cfg).float().eval()
    causal_model.load_state_dict(model.state_dict())  # same weights, causal padding
    causal_model.generation_config = model.generation_config
    folder = save_checkpoint(causal_model, tmp_path_factory.mktemp("causal"), "current")
    return causal_model, MusicGen.from_pretrained(folder, device="cpu")


def test_causal_codec_decodes_in_one_pass(causal: tuple[object, MusicGen]) -> None:
    """No exact streaming rule exists for causal convs: long decodes are one pass, equal to transformers."""
    from musicgen import pipeline

    ref, mg = causal
    assert not mg.can_stream
    codes = torch.randint(0, 2048, (1, 4, pipeline.DECODE_CHUNK + 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = ref.audio_encoder.decode(codes[None], [None]).audio_values
    got = mg.decode(codes)
    torch.testing.assert_close(got, want.clamp(-1, 1), rtol=1e-4, atol=1e-4)


def test_causal_codec_generates_and_runs_in_a_session(causal: tuple[object, MusicGen]) -> None:
    from musicgen.studio import session
    from musicgen.studio.request import Request

    _, mg = causal
    audio = mg.generate(["drums"], duration=0.5, seed=1, normalize="none").audio
    assert audio.shape == (1, 1, 16000) and audio.abs().max() > 0
    req = Request("drums", 0.5, "small", False, "encodec", None, 250, 0.0, 1.0, 3.0, 1, loudness="none")
    events = list(session.run(mg, req))
    assert not any(isinstance(e, session.Chunk) for e in events)  # no live chunks: played when done
    result = events[-1]
    assert isinstance(result, session.Result)
    torch.testing.assert_close(torch.from_numpy(result.audio), audio[0], rtol=0, atol=1e-5)
