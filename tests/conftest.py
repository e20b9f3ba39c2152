"""Session fixtures: tiny random checkpoints in both file layouts, and our engine loaded from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.checkpoints import build_checkpoint

from musicgen import MusicGen

torch.set_num_threads(2)

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
