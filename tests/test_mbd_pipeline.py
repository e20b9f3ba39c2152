"""The multi-band diffusion decoder wired into MusicGen: generate / decode / stream / CLI.

The MBD weights are built by audiocraft 1.3.0 (tests/helpers/mbd_checkpoints.py) and, for stereo, the decode of
each channel is compared with audiocraft's own MultiBandDiffusion (tests/helpers/audiocraft_oracle.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import audiocraft_oracle as oracle
from helpers.mbd_checkpoints import build_mbd_checkpoint

from musicgen import InvalidInputError, MusicGen
from musicgen.diffusion import MultiBandDiffusion

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.py


@pytest.fixture(scope="module")
def mbd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mbd_checkpoint(tmp_path_factory.mktemp("mbd") / "mbd.th", "transformer", seed=1, codec_dim=16)


@pytest.fixture(scope="module")
def with_mbd(checkpoints, mbd_file: Path) -> MusicGen:
    mg = MusicGen.from_pretrained(checkpoints["current"][1], device="cpu")
    mg.mbd = MultiBandDiffusion.from_file(mbd_file, "cpu")
    return mg


def test_generate_with_mbd(with_mbd: MusicGen) -> None:
    calls: list[tuple[int, int]] = []
    out = with_mbd.generate(["lofi"], 0.1, seed=4, decoder="mbd", normalize="none",
                            progress=lambda s, t: calls.append((s, t)))
    lm_steps = 5 + 3
    assert out.audio.shape == out.audio_encodec.shape == (1, 1, 5 * 640)
    assert torch.equal(out.audio_encodec, with_mbd.decode(out.tokens))
    assert not torch.allclose(out.audio, out.audio_encodec)
    assert calls[-1] == (lm_steps + with_mbd.mbd.total_steps,) * 2 and len(calls) == lm_steps + 80
    again = with_mbd.generate(["lofi"], 0.1, seed=4, decoder="mbd", normalize="none")
    assert torch.equal(again.audio, out.audio)  # the seed covers the diffusion noise too
    assert torch.equal(with_mbd.decode(out.tokens, "mbd", seed=4), out.audio)
    assert not torch.equal(with_mbd.decode(out.tokens, "mbd", seed=5), out.audio)


def test_stereo_mbd_is_two_mono_decodes(mbd_file: Path, tmp_path: Path) -> None:
    """Stereo tokens: left and right are decoded as two mono items (L0 R0 L1 R1 ... split per channel), each
    equal to audiocraft's mono MBD decode of that channel with that item's noise (audiocraft's own stereo MBD
    path raises IndexError, its issues #401 / #408)."""
    from helpers.checkpoints import build_checkpoint

    from musicgen.diffusion import item_generators

    _, folder = build_checkpoint(tmp_path / "stereo", layout="current", seed=3, audio_channels=2)
    mg = MusicGen.from_pretrained(folder, device="cpu")
    mg.mbd = MultiBandDiffusion.from_file(mbd_file, "cpu")
    tokens = torch.randint(0, 2048, (1, 8, 4), generator=torch.Generator().manual_seed(0))
    stereo = mg.decode(tokens, "mbd", seed=9)
    assert stereo.shape == (1, 2, 4 * 640)
    reference = oracle.multiband_diffusion(mbd_file, mg.codec)
    channels = []
    for i, gen in enumerate(item_generators(torch.Generator().manual_seed(9), 2)):
        with oracle.noise_from([gen]):
            channels.append(reference.tokens_to_wav(tokens[:, i::2]).clamp(-1, 1))
        assert float((stereo[:, i : i + 1] - channels[-1]).abs().max()) <= 1e-4
    assert (channels[0] - channels[1]).abs().max() > 1e-2


def test_bad_decoder(with_mbd: MusicGen) -> None:
    with pytest.raises(InvalidInputError, match="decoder"):
        with_mbd.generate(["a"], 0.1, decoder="hifigan")
    with pytest.raises(InvalidInputError, match="decoder"):
        with_mbd.decode(torch.zeros(1, 4, 3, dtype=torch.long), "wavenet")
