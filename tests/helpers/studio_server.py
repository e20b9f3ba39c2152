"""A running MusicGen studio for the app, traffic and browser tests, shared by those modules.

Tiny random checkpoints are built with transformers and downloaded from a `FakeHub` into a temporary HF cache
under the official repo ids, so the cache has exactly the layout huggingface_hub writes (blobs, snapshots,
refs, the tree listing it checks for completeness). The app then runs in this process, offline:
huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE from its `constants` module at call time (the
environment variables only at import), so `Server.offline()` points those two attributes at the cache
while a test module uses the server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from huggingface_hub import constants, snapshot_download

from musicgen import mbd_checkpoint
from musicgen.hub import ALLOW_PATTERNS
from musicgen.studio import backend, catalog, launch

from .checkpoints import build_checkpoint
from .fakehub import FakeHub
from .mbd_checkpoints import build_mbd_checkpoint
from .melody_checkpoints import build_melody_checkpoint

MONO, STEREO, MELODY = "facebook/musicgen-small", "facebook/musicgen-stereo-small", "facebook/musicgen-melody"
STEREO_MELODY = "facebook/musicgen-stereo-melody"
OWNER = "Tiny fine-tune"  # the Space owner's own model (a local folder), offered by this name
MBD = "facebook/multiband-diffusion"


@dataclass
class Server:
    url: str
    studio: backend.Studio
    demo: object
    cache: Path

    @contextlib.contextmanager
    def offline(self) -> Iterator[None]:
        """huggingface_hub reads these two at call time: the app's downloads go to the tiny-model cache,
        offline. Scoped to the modules that talk to the server, so no other test sees them."""
        saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(self.cache), True
        try:
            yield
        finally:
            constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved


def build_cache(root: Path) -> Path:
    """An HF hub cache holding tiny mono, stereo, melody checkpoints and multi-band diffusion weights under
    the official repo ids."""
    folders = {
        MONO: build_checkpoint(root / "src" / "mono", layout="hub", seed=0)[1],
        STEREO: build_checkpoint(root / "src" / "stereo", layout="hub", seed=1, audio_channels=2)[1],
        MELODY: build_melody_checkpoint(root / "src" / "melody", layout="hub", seed=2)[1],
        STEREO_MELODY: build_melody_checkpoint(root / "src" / "stereo-melody", layout="hub", seed=4,
                                               audio_channels=2)[1],
        MBD: root / "src" / "mbd",
    }
    build_mbd_checkpoint(folders[MBD] / mbd_checkpoint.FILENAME, "transformer", seed=3, codec_dim=16)
    cache = root / "hub"
    with FakeHub(folders) as hub:
        for repo in folders:
            snapshot_download(repo, cache_dir=cache, endpoint=hub.endpoint,
                              allow_patterns=["*.th"] if repo == MBD else ALLOW_PATTERNS)
    return cache


_server: Server | None = None


def get_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Server:
    """The studio serving from the tiny-model cache (started once per test session, stopped at its end)."""
    global _server
    if _server is None:
        root = tmp_path_factory.mktemp("studio")
        cache = build_cache(root)
        _, owner = build_checkpoint(root / "owner", layout="current", seed=3)  # a local folder the owner offers
        st = backend.Studio(device="cpu", models=catalog.parse_models(f"{OWNER}={owner}"))
        demo, url = launch.serve(st, prevent_thread_lock=True, quiet=True, max_queue=8)
        _server = Server(url, st, demo, cache)
        request.session.addfinalizer(_stop)
    return _server


def _stop() -> None:
    global _server
    if _server is not None:
        _server.demo.close()
        _server = None
