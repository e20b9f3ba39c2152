"""Shared fixtures: tiny random checkpoints in both file layouts and our engine loaded from them, a stereo and
melody checkpoints with their engines, one-thread torch for the tiny diffusion networks, and the web app."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import build_checkpoint
from helpers.melody_checkpoints import build_melody_checkpoint

from musicgen import MusicGen, stems

torch.set_num_threads(2)
# Tests run offline, where htdemucs (adefossez/HTDemucs) cannot be fetched: separate_melody=None means off in the
# test processes (what $MUSICGEN_SEPARATE_MELODY=0 does for a deployment; set before any studio subprocess starts).
# tests/test_stems.py turns separation on explicitly; tests comparing with transformers also pass False.
os.environ[stems.ENV_DEFAULT] = "0"

LAYOUTS = ("current", "hub")
PROMPTS = ["lofi hip hop beat with mellow piano and soft drums", "80s synthwave"]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, Path]]:
    """layout -> (transformers reference model, checkpoint folder); both layouts hold the same weights."""
    root = tmp_path_factory.mktemp("ckpt")
    return {layout: build_checkpoint(root / layout, layout=layout, seed=0) for layout in LAYOUTS}


@pytest.fixture(scope="session", params=LAYOUTS)
def layout(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def engines(checkpoints: dict[str, tuple[object, Path]]) -> dict[str, MusicGen]:
    return {layout: MusicGen.from_pretrained(folder, device="cpu") for layout, (_, folder) in checkpoints.items()}


@pytest.fixture(scope="session")
def ref(checkpoints: dict[str, tuple[object, Path]], layout: str) -> object:
    return checkpoints[layout][0]


@pytest.fixture(scope="session")
def mg(engines: dict[str, MusicGen], layout: str) -> MusicGen:
    return engines[layout]


@pytest.fixture(scope="session")
def small(engines: dict[str, MusicGen]) -> MusicGen:
    """One engine for tests that do not depend on the file layout."""
    return engines["current"]


@pytest.fixture(scope="session")
def stereo_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, MusicGen]:
    """A stereo checkpoint (8 codebooks, L0 R0 L1 R1 ...): transformers' model and our engine. (Not named
    `stereo`: tests use that name for a parameter, which would hide the fixture from the fixtures they use.)"""
    ref, folder = build_checkpoint(tmp_path_factory.mktemp("stereo") / "ckpt", layout="hub", seed=5,
                                   audio_channels=2)
    return ref, MusicGen.from_pretrained(Path(folder), device="cpu")


@pytest.fixture(scope="session")
def melody_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, MusicGen]]:
    """Melody checkpoints: "current" and "hub" layouts (same weights) and a stereo one -> (transformers' model,
    our engine)."""
    root = tmp_path_factory.mktemp("melody")
    out = {}
    for name, layout, channels in (("current", "current", 1), ("hub", "hub", 1), ("stereo", "hub", 2)):
        ref, folder = build_melody_checkpoint(root / name, layout=layout, seed=7, audio_channels=channels)
        out[name] = (ref, MusicGen.from_pretrained(Path(folder), device="cpu"))
    return out


@pytest.fixture(scope="session")
def mel(melody_models: dict[str, tuple[object, MusicGen]]) -> MusicGen:
    """One melody engine for tests that do not depend on the file layout."""
    return melody_models["current"][1]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """For a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`): the diffusion fixture
    networks are tiny, thousands of small ops per decode, which two threads on a busy 2-core machine run ~10x
    slower than one (each parallel region waits for a descheduled thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def transformers_tokens(ref, ids: torch.Tensor, mask: torch.Tensor, frames: int, **kwargs) -> torch.Tensor:
    """transformers' greedy CFG-3 codes [B, K, frames], captured where its generate calls EnCodec."""
    captured: list[torch.Tensor] = []
    original = ref.audio_encoder.decode

    def spy(codes, *args, **kwargs):
        captured.append(codes[0].clone())
        return original(codes, *args, **kwargs)

    ref.audio_encoder.decode = spy
    try:
        ref.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, guidance_scale=3.0,
                     max_new_tokens=frames + 3, **kwargs)
    finally:
        del ref.audio_encoder.decode
    if len(captured) == 1:
        return captured[0]
    left, right = captured  # stereo: transformers decodes codebooks 0::2 then 1::2
    codes = torch.empty(left.shape[0], 2 * left.shape[1], left.shape[2], dtype=left.dtype)
    codes[:, 0::2], codes[:, 1::2] = left, right
    return codes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """The web app serving tiny models offline (started once per test session; see helpers/studio_server.py)."""
    from helpers.studio_server import get_server

    srv = get_server(tmp_path_factory, request)
    with srv.offline():
        yield srv
