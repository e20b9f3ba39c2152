"""Downloading through huggingface_hub from a local fake Hub, then loading offline from the HF cache.

HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE are read when huggingface_hub is imported, so each scenario runs
`MusicGen.from_pretrained` in a fresh interpreter with the environment from `hub_env`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PROMPTS
from helpers.checkpoints import build_tokenizer, save_checkpoint
from helpers.fakehub import FakeHub, hub_env, run_json

REPO = "facebook/musicgen-small"
AUDIOCRAFT_FILES = {"state_dict.bin", "compression_state_dict.bin"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
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
    return run_json(_RUNNER, env, name, json.dumps(PROMPTS))


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


def _cache(home: Path, repo: str) -> Path:
    return home / "hub" / f"models--{repo.replace('/', '--')}"


def _stamp(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())


@pytest.mark.parametrize("repo", ["facebook/musicgen-medium", "facebook/musicgen-large"])
def test_pickle_only_repo(checkpoints, expected: list, tmp_path: Path, repo: str) -> None:
    """medium's layout (one pytorch_model.bin) and large's (shards + index), no safetensors: the .bin files alone
    are downloaded, converted once into the HF cache, and that copy is what an offline run loads."""
    sharded = repo.endswith("large")
    folder = save_checkpoint(checkpoints["hub"][0], tmp_path / "repo", layout="bin",
                             max_shard_size=2_500_000 if sharded else None)
    home = tmp_path / "home"
    with FakeHub({repo: folder}) as hub:
        got = run(repo, hub_env(hub.endpoint, home))
        fetched = set(hub.requested_files(repo))
    assert got == {"tokens": expected}
    assert {f for f in fetched if f.endswith(".bin")} == {p.name for p in folder.glob("pytorch_model*.bin")}
    assert len([f for f in fetched if f.endswith(".bin")]) == (3 if sharded else 1)
    assert ("pytorch_model.bin.index.json" in fetched) == sharded
    assert not fetched & AUDIOCRAFT_FILES and not any(f.endswith(".safetensors") for f in fetched)
    [converted] = (_cache(home, repo) / "musicgen-converted").iterdir()
    stamp = _stamp(converted)
    assert run(repo, hub_env(hub.endpoint, home, offline=True)) == {"tokens": expected}
    assert list((_cache(home, repo) / "musicgen-converted").iterdir()) == [converted]
    assert _stamp(converted) == stamp  # loaded, not converted again
    assert not list(_cache(home, repo).rglob("*state_dict.bin"))


def test_repo_without_transformers_weights(checkpoints, tmp_path: Path) -> None:
    folder = save_checkpoint(checkpoints["hub"][0], tmp_path / "repo", layout="bin")
    (folder / "pytorch_model.bin").unlink()  # left: configs, tokenizer and audiocraft's own pickles
    with FakeHub({REPO: folder}) as hub:
        got = run(REPO, hub_env(hub.endpoint, tmp_path / "home"))
        assert not any(f.endswith(".bin") for f in hub.requested_files(REPO))
    assert got["error"] == "CheckpointError" and "no transformers weights" in got["message"]


def test_tokenizer_from_the_text_encoder_repo(checkpoints, expected: list, tmp_path: Path) -> None:
    """A repo without tokenizer.json: the tokenizer of `text_encoder._name_or_path` ("t5-base") from the Hub."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for f in checkpoints["hub"][1].iterdir():
        if f.name not in TOKENIZER_FILES:
            (repo / f.name).write_bytes(f.read_bytes())
    config = json.loads((repo / "config.json").read_text())
    config["text_encoder"]["_name_or_path"] = "t5-base"
    (repo / "config.json").write_text(json.dumps(config))
    t5 = tmp_path / "t5-base"
    build_tokenizer(t5)
    home = tmp_path / "home"
    with FakeHub({REPO: repo, "t5-base": t5}) as hub:
        assert run(REPO, hub_env(hub.endpoint, home)) == {"tokens": expected}
        assert {"tokenizer.json", "tokenizer_config.json"} <= set(hub.requested_files("t5-base"))
        assert run(REPO, hub_env(hub.endpoint, home, offline=True)) == {"tokens": expected}
        shutil.rmtree(_cache(home, "t5-base"))
        got = run(REPO, hub_env(hub.endpoint, home, offline=True))
    assert got["error"] == "DownloadError"
    for part in ("has no tokenizer.json", "text encoder 't5-base'", "HF_HUB_OFFLINE", "Connect to the internet once"):
        assert part in got["message"], got["message"]


def test_invalid_repo_id(tmp_path: Path) -> None:
    got = run("not a/valid//id", hub_env("http://127.0.0.1:9", tmp_path))
    assert got["error"] == "DownloadError" and "valid Hub repo id" in got["message"]
