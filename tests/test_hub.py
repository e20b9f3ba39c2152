"""Downloading through huggingface_hub from a local fake Hub, then loading offline from the HF cache.

HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE are read when huggingface_hub is imported, so each scenario runs
`MusicGen.from_pretrained` in a fresh interpreter with the environment from `hub_env`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROMPTS
from fakehub import FakeHub, hub_env

REPO = "facebook/musicgen-small"
ROOT = Path(__file__).resolve().parents[1]

# Loads the model, generates greedily, and prints the tokens (or the error) as JSON on the last line.
_RUNNER = r"""
import json, sys
from musicgen import MusicGen, MusicGenError
name, prompts = sys.argv[1], json.loads(sys.argv[2])
try:
    mg = MusicGen.from_pretrained(name, device="cpu")
    out = mg.generate(prompts, 0.2, temperature=0)
    print(json.dumps({"tokens": out.tokens.tolist()}))
except MusicGenError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def run(name: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _RUNNER, name, json.dumps(PROMPTS)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def expected(engines) -> list:
    return engines["hub"].generate(PROMPTS, 0.2, temperature=0).tokens.tolist()


def test_download_then_offline(checkpoints, expected: list, tmp_path: Path) -> None:
    folder = checkpoints["hub"][1]  # sharded, old key names, plus a decoy pytorch_model.bin
    with FakeHub({REPO: folder}) as hub:
        got = run(REPO, hub_env(hub.endpoint, tmp_path))
        fetched = set(hub.requested_files(REPO))
    assert got == {"tokens": expected}
    assert "pytorch_model.bin" not in fetched
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= fetched
    assert sum(f.endswith(".safetensors") for f in fetched) == 3
    # the server is gone: the HF cache alone must serve, in offline mode and when the Hub is unreachable
    assert run(REPO, hub_env(hub.endpoint, tmp_path, offline=True)) == {"tokens": expected}
    assert run(REPO, hub_env(hub.endpoint, tmp_path)) == {"tokens": expected}


def test_unknown_repo(checkpoints, tmp_path: Path) -> None:
    with FakeHub({REPO: checkpoints["hub"][1]}) as hub:
        got = run("facebook/musicgen-nonexistent", hub_env(hub.endpoint, tmp_path))
    assert got["error"] == "DownloadError"
    assert "was not found on the Hugging Face Hub" in got["message"]


def test_no_network_and_nothing_cached(checkpoints, tmp_path: Path) -> None:
    hub = FakeHub({REPO: checkpoints["hub"][1]})
    hub.stop()
    got = run(REPO, hub_env(hub.endpoint, tmp_path))
    assert got["error"] == "DownloadError"
    assert "unreachable" in got["message"] and "not in the local cache" in got["message"]
    got = run(REPO, hub_env(hub.endpoint, tmp_path, offline=True))
    assert got["error"] == "DownloadError" and "HF_HUB_OFFLINE" in got["message"]


def test_repo_without_safetensors(checkpoints, tmp_path: Path) -> None:
    src = checkpoints["hub"][1]
    pickle_only = tmp_path / "repo"
    pickle_only.mkdir()
    for f in src.iterdir():
        if not f.name.startswith("model"):
            (pickle_only / f.name).write_bytes(f.read_bytes())
    with FakeHub({REPO: pickle_only}) as hub:
        got = run(REPO, hub_env(hub.endpoint, tmp_path / "home"))
        assert "pytorch_model.bin" not in hub.requested_files(REPO)
    assert got["error"] == "CheckpointError" and "no safetensors weights" in got["message"]


def test_invalid_repo_id(tmp_path: Path) -> None:
    got = run("not a/valid//id", hub_env("http://127.0.0.1:9", tmp_path))
    assert got["error"] == "DownloadError" and "valid Hub repo id" in got["message"]
