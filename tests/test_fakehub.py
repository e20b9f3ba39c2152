"""The fake Hub (tests/helpers/fakehub.py) really satisfies the installed huggingface_hub, over plain HTTP only.

huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE at import time, so every download runs
in a fresh subprocess with the environment from `hub_env`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.fakehub import FAKE_COMMIT, FakeHub, hub_env
from safetensors.torch import save_file

REPO = "facebook/musicgen-small"
WANTED = ["*.json", "*.safetensors"]  # what our loader asks for: never pickle weights

# Runs one huggingface_hub call and prints its result (or the exception raised) as JSON on the last line.
# `xet_get` is replaced so that any use of the Xet download path fails loudly.
_RUNNER = r"""
import json, sys
import huggingface_hub
from huggingface_hub import file_download

def _no_xet(*args, **kwargs):
    raise AssertionError("the Xet download path was used")

file_download.xet_get = _no_xet
args = json.loads(sys.argv[1])
try:
    if args["call"] == "snapshot_download":
        out = huggingface_hub.snapshot_download(args["repo_id"], revision=None, allow_patterns=args["allow"])
    elif args["call"] == "hf_hub_download":
        out = huggingface_hub.hf_hub_download(args["repo_id"], args["filename"])
    else:
        out = [f.path for f in huggingface_hub.list_repo_tree(args["repo_id"], recursive=True)]
except Exception as e:
    mro = [f"{c.__module__}.{c.__qualname__}" for c in type(e).__mro__]
    print(json.dumps({"error": type(e).__name__, "mro": mro, "message": str(e)}))
else:
    print(json.dumps({"result": out}))
"""


def run_hub(env: dict[str, str], call: str, repo_id: str = REPO, **kwargs: Any) -> dict[str, Any]:
    """Run `huggingface_hub.<call>` in a subprocess with `env`; return {"result": ...} or {"error": ...}."""
    args = json.dumps({"call": call, "repo_id": repo_id, "allow": WANTED, **kwargs})
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A tiny MusicGen-like repo: configs, safetensors weights, tokenizer, and a decoy pickle file."""
    folder = tmp_path / "repo"
    (folder / "text_encoder").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "musicgen", "hidden_size": 4}))
    (folder / "text_encoder" / "config.json").write_text(json.dumps({"d_model": 4}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "Unigram"}}))
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(folder / "model.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    return folder


@pytest.fixture()
def hub(repo: Path) -> Iterator[FakeHub]:
    with FakeHub({REPO: repo}) as server:
        yield server


def _refused(endpoint: str) -> bool:
    host, port = endpoint.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


def test_snapshot_download_online_then_offline(tmp_path: Path, repo: Path, hub: FakeHub) -> None:
    home = tmp_path / "hf_home"
    env = hub_env(hub.endpoint, home)
    env.pop("HF_HUB_DISABLE_XET")  # the fake hub alone must keep huggingface_hub off the Xet path

    out = run_hub(env, "snapshot_download")
    assert "result" in out, out
    snapshot = Path(out["result"])
    assert snapshot == home / "hub" / "models--facebook--musicgen-small" / "snapshots" / FAKE_COMMIT
    wanted = ["config.json", "model.safetensors", "text_encoder/config.json", "tokenizer.json"]
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == wanted
    for name in wanted:
        assert (snapshot / name).read_bytes() == (repo / name).read_bytes()
    assert (home / "hub" / "models--facebook--musicgen-small" / "refs" / "main").read_text() == FAKE_COMMIT

    paths = [r.path for r in hub.requests]
    assert not any(".bin" in p for p in paths), paths
    assert not any("xet" in p.lower() for p in paths), paths
    assert sorted(hub.requested_files(REPO)) == wanted
    assert sorted(hub.requested_files(REPO, method="HEAD")) == wanted
    assert paths[0] == f"/api/models/{REPO}/revision/main"
    assert paths[1].startswith(f"/api/models/{REPO}/tree/{FAKE_COMMIT}?recursive=")

    # Offline: answered from the cache without a single request, even though the hub is up.
    before = len(hub.requests)
    offline_env = hub_env(hub.endpoint, home, offline=True)
    assert run_hub(offline_env, "snapshot_download") == {"result": str(snapshot)}
    assert len(hub.requests) == before

    hub.stop()
    assert _refused(hub.endpoint)
    assert run_hub(offline_env, "snapshot_download") == {"result": str(snapshot)}
    # Not offline but the hub is unreachable: huggingface_hub falls back to the complete cached snapshot.
    assert run_hub(hub_env(hub.endpoint, home), "snapshot_download") == {"result": str(snapshot)}


def test_unknown_repo_is_repository_not_found(tmp_path: Path, hub: FakeHub) -> None:
    out = run_hub(hub_env(hub.endpoint, tmp_path / "hf_home"), "snapshot_download", repo_id="facebook/nope")
    assert out["error"] == "RepositoryNotFoundError", out
    assert "huggingface_hub.errors.HfHubHTTPError" in out["mro"]


def test_unreachable_hub_and_empty_cache(tmp_path: Path, hub: FakeHub) -> None:
    hub.stop()
    home = tmp_path / "hf_home"
    online = run_hub(hub_env(hub.endpoint, home), "snapshot_download")
    offline = run_hub(hub_env(hub.endpoint, home, offline=True), "snapshot_download")
    for out in (online, offline):
        assert out["error"] == "LocalEntryNotFoundError", out
        assert "builtins.FileNotFoundError" in out["mro"]
    assert "ConnectError" in online["message"]
    assert "HF_HUB_OFFLINE" in offline["message"]


def test_hf_hub_download_nested_and_missing_file(tmp_path: Path, repo: Path, hub: FakeHub) -> None:
    env = hub_env(hub.endpoint, tmp_path / "hf_home")
    out = run_hub(env, "hf_hub_download", filename="text_encoder/config.json")
    assert Path(out["result"]).read_bytes() == (repo / "text_encoder" / "config.json").read_bytes()

    out = run_hub(env, "hf_hub_download", filename="missing.json")
    assert out["error"] == "RemoteEntryNotFoundError", out
    assert "huggingface_hub.errors.EntryNotFoundError" in out["mro"]
    # The Hub's X-Repo-Commit on the 404 lets huggingface_hub cache the file's absence.
    no_exist = tmp_path / "hf_home" / "hub" / "models--facebook--musicgen-small" / ".no_exist"
    assert (no_exist / FAKE_COMMIT / "missing.json").is_file()


def test_tree_listing_is_paginated(tmp_path: Path, repo: Path) -> None:
    with FakeHub({REPO: repo}, page_size=2) as hub:
        out = run_hub(hub_env(hub.endpoint, tmp_path / "hf_home"), "list_repo_tree")
    assert sorted(out["result"]) == [
        "config.json", "model.safetensors", "pytorch_model.bin", "text_encoder",
        "text_encoder/config.json", "tokenizer.json",
    ]
    assert sum("cursor=" in r.path for r in hub.requests) == 2  # 6 entries => 3 pages


def _open(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_resolve_headers_and_ranges(repo: Path, hub: FakeHub) -> None:
    weights = (repo / "model.safetensors").read_bytes()
    url = f"{hub.endpoint}/{REPO}/resolve/main/model.safetensors"
    status, headers, body = _open(url, "HEAD")
    assert (status, body) == (200, b"")
    assert headers["X-Repo-Commit"] == FAKE_COMMIT
    assert headers["Content-Length"] == headers["X-Linked-Size"] == str(len(weights))
    assert headers["ETag"] == headers["X-Linked-Etag"] and len(headers["ETag"]) == 66  # quoted sha256

    status, headers, body = _open(url, headers={"Range": "bytes=3-"})
    assert (status, body) == (206, weights[3:])
    assert headers["Content-Range"] == f"bytes 3-{len(weights) - 1}/{len(weights)}"
    assert _open(url, headers={"Range": f"bytes={len(weights)}-"})[0] == 416

    status, headers, body = _open(f"{hub.endpoint}/{REPO}/resolve/main/config.json")
    assert body == (repo / "config.json").read_bytes() and len(headers["ETag"]) == 42  # quoted git sha1
    assert "X-Linked-Etag" not in headers

    status, _, body = _open(f"{hub.endpoint}/api/models/{REPO}?blobs=true")
    info = json.loads(body)
    assert (status, info["id"], info["sha"]) == (200, REPO, FAKE_COMMIT)
    siblings = {s["rfilename"]: s for s in info["siblings"]}
    assert siblings["model.safetensors"]["lfs"]["size"] == len(weights)
    assert "lfs" not in siblings["config.json"] and len(siblings) == 5

    for path, code in [
        (f"/{REPO}/resolve/main/nope.json", "EntryNotFound"),
        (f"/{REPO}/resolve/v9/config.json", "RevisionNotFound"),
        ("/facebook/nope/resolve/main/config.json", "RepoNotFound"),
        ("/api/models/facebook/nope/revision/main", "RepoNotFound"),
    ]:
        status, headers, body = _open(hub.endpoint + path)
        assert (status, headers["X-Error-Code"]) == (404, code), path
        assert "error" in json.loads(body)


def test_repo_id_without_namespace(tmp_path: Path, repo: Path) -> None:
    """Legacy ids such as "t5-base" (the text encoder named in MusicGen configs) are served too."""
    with FakeHub({"t5-base": repo}) as hub:
        out = run_hub(hub_env(hub.endpoint, tmp_path / "hf_home"), "hf_hub_download", repo_id="t5-base",
                      filename="tokenizer.json")
        assert hub.requested_files("t5-base") == ["tokenizer.json"]
    path = Path(out["result"])
    assert path.read_bytes() == (repo / "tokenizer.json").read_bytes()
    assert path.parent.parent.parent.name == "models--t5-base"
