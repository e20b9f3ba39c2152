"""A tiny local fake of the Hugging Face Hub HTTP API, for tests that must not touch the network.

It answers exactly what `huggingface_hub` (checked against 2.4.0) asks for in `snapshot_download` and
`hf_hub_download` on a *model* repo, and nothing more:

* ``GET /api/models/{repo_id}[/revision/{rev}]`` -> model info with a fixed commit `sha` and `siblings`
  (``?blobs=true`` adds sizes / blob ids / LFS info);
* ``GET /api/models/{repo_id}/tree/{rev}[/{path}]?recursive=..&cursor=..`` -> tree listing, paginated
  with a ``Link: <...>; rel="next"`` header like the real Hub;
* ``HEAD`` / ``GET /{repo_id}/resolve/{rev}/{path}`` -> file bytes with ``ETag`` (git blob sha1 for regular
  files, sha256 for LFS-like files, plus ``X-Linked-Etag`` / ``X-Linked-Size`` for those), ``X-Repo-Commit``,
  ``Content-Length`` and single-range ``Range`` support. Files are served directly (no CDN redirect) and no
  ``X-Xet-Hash`` / ``xetHash`` is ever sent, so `huggingface_hub` always takes its plain-HTTP download path.

Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``)
and a JSON ``{"error": ...}`` body, so `huggingface_hub` raises its usual exception classes.

`huggingface_hub` reads ``HF_ENDPOINT`` / ``HF_HOME`` / ``HF_HUB_OFFLINE`` at import time, so run the
code under test in a subprocess with the environment from `hub_env`.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
"""The commit every served repo is at (what ``main`` resolves to)."""

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz", ".gguf")
"""Files served as Git-LFS objects (sha256 ETag, ``lfs`` info in listings), like the Hub does for weights."""

_API_RE = re.compile(r"^/api/models/(?P<repo>.+?)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?P<sub>/.*)?)?$")
_RESOLVE_RE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_Response = tuple[int, dict[str, str], bytes]  # status, headers, body
_SCRUBBED_ENV = (  # inherited settings that would make a subprocess escape the fake hub / temp cache
    "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_XET_CACHE",
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HUGGINGFACE_CO_STAGING", "HF_HUB_ENABLE_HF_TRANSFER", "HF_XET_HIGH_PERFORMANCE",
)
_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n"


class Request(NamedTuple):
    """One request received by the fake hub: ``method`` ("GET"/"HEAD") and raw ``path`` (with query)."""

    method: str
    path: str


@dataclass(frozen=True)
class _File:
    """A repo file and the metadata the Hub would report for it."""

    disk: Path
    size: int
    sha256: str
    lfs: bool

    @property
    def pointer(self) -> str:
        return _LFS_POINTER.format(sha=self.sha256, size=self.size)

    @property
    def blob_id(self) -> str:
        """Git blob sha1 of what git stores: the file itself, or its LFS pointer."""
        return _git_oid(self.pointer.encode() if self.lfs else self.disk.read_bytes())

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _index(folder: Path) -> dict[str, _File]:
    """All files under `folder` (re-read on every request, so tests may edit it), keyed by posix path."""
    files: dict[str, _File] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and ".git" not in rel.split("/"):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[rel] = _File(path, path.stat().st_size, digest, path.name.endswith(LFS_SUFFIXES))
    return files


class _HubError(Exception):
    """An HTTP error answered the way the Hub does (status, ``X-Error-Code``, JSON body)."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: `stop()` leaves no keep-alive stragglers

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean: no per-request log line on stderr."""

    def _handle(self, head: bool) -> None:
        self.server.hub._record(Request(self.command, self.path))
        try:
            status, headers, body = self.server.hub._route(self.command, self.path, self.headers.get("Range"))
        except Exception as e:
            if not isinstance(e, _HubError):  # a bug here: answer 500 rather than dropping the connection
                e = _HubError(500, None, f"fake hub error: {type(e).__name__}: {e}")
            headers = {"Content-Type": "application/json", **e.headers}
            if e.code is not None:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message
            status, body = e.status, json.dumps({"error": e.message}).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub


class FakeHub:
    """Serve local folders as Hub model repos on ``127.0.0.1`` (random port) from a background thread.

    `repos` maps a repo id (e.g. ``"facebook/musicgen-small"``) to a folder whose files (nested ones too)
    are the repo's files. Every repo is at commit `commit`, which is what ``main`` resolves to. Tree
    listings return at most `page_size` entries per page. The server starts on construction; use it as a
    context manager or call `stop()`. Every request is appended to `requests`.
    """

    def __init__(self, repos: Mapping[str, str | Path], *, commit: str = FAKE_COMMIT, page_size: int = 1000):
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise ValueError(f"commit must be 40 lowercase hex chars, got {commit!r}")
        self.repos = {repo_id: Path(folder) for repo_id, folder in repos.items()}
        self.commit = commit
        self.page_size = page_size
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._stopped = False
        self._thread = threading.Thread(target=self._server.serve_forever, name="FakeHub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket (later connections are refused). Idempotent."""
        if not self._stopped:
            self._stopped = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def requested_files(self, repo_id: str | None = None, method: str = "GET") -> list[str]:
        """Repo file paths requested through ``/resolve/`` with `method` (optionally only for `repo_id`)."""
        with self._lock:
            requests = list(self.requests)
        found = []
        for request in requests:
            match = _RESOLVE_RE.match(urlsplit(request.path).path)
            if request.method == method and match and repo_id in (None, unquote(match["repo"])):
                found.append(unquote(match["file"]))
        return found

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    # --- routing -------------------------------------------------------------------------------------

    def _route(self, method: str, raw_path: str, range_header: str | None) -> _Response:
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if match := _API_RE.match(url.path):
            if method != "GET":
                raise _HubError(405, None, "Method not allowed")
            repo_id, kind = unquote(match["repo"]), match["kind"]
            files = self._repo_files(repo_id)
            if kind is None or (kind == "revision" and not match["sub"]):
                self._check_revision(match["rev"] or "main")
                return self._json(self._model_info(repo_id, files, blobs=query.get("blobs") == "true"))
            if kind == "tree":
                self._check_revision(match["rev"])
                return self._tree(repo_id, files, match["rev"], unquote(match["sub"] or "").strip("/"), query)
        elif match := _RESOLVE_RE.match(url.path):
            repo_id = unquote(match["repo"])
            files = self._repo_files(repo_id)
            self._check_revision(match["rev"])
            return self._resolve(files, unquote(match["file"]), range_header)
        raise _HubError(404, None, "Sorry, we can't find the page you are looking for.")

    def _repo_files(self, repo_id: str) -> dict[str, _File]:
        if repo_id not in self.repos:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        return _index(self.repos[repo_id])

    def _check_revision(self, quoted_rev: str) -> None:
        rev = unquote(quoted_rev)
        if rev not in ("main", self.commit):
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    @staticmethod
    def _json(data: object, headers: dict[str, str] | None = None) -> _Response:
        body = json.dumps(data).encode()
        return 200, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body

    def _model_info(self, repo_id: str, files: dict[str, _File], blobs: bool) -> dict[str, object]:
        siblings: list[dict[str, object]] = []
        for path, f in files.items():
            sibling: dict[str, object] = {"rfilename": path}
            if blobs:
                sibling.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            siblings.append(sibling)
        return {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": self.commit,
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2023-06-01T00:00:00.000Z",
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in files.values()),
        }

    def _tree(
        self, repo_id: str, files: dict[str, _File], rev: str, sub: str, query: dict[str, str]
    ) -> _Response:
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        prefix = f"{sub}/" if sub else ""
        if sub and not any(path.startswith(prefix) for path in files):
            raise _HubError(404, "EntryNotFound", f"{sub} does not exist on {rev!r}",
                            {"X-Repo-Commit": self.commit})
        entries: list[dict[str, object]] = []
        folders: set[str] = set()
        for path, f in files.items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entry: dict[str, object] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": path}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
                entries.append(entry)
        entries += [{"type": "directory", "oid": _git_oid(d.encode()), "size": 0, "path": d} for d in folders]
        entries.sort(key=lambda e: (e["type"] != "directory", str(e["path"])))

        start = int(query.get("cursor", "0"))
        page = entries[start : start + self.page_size]
        headers = {}
        if start + self.page_size < len(entries):
            next_query = urlencode({**query, "cursor": start + self.page_size})
            base = f"{self.endpoint}/api/models/{repo_id}/tree/{quote(rev, safe='')}"
            headers["Link"] = f'<{base}{"/" + quote(sub) if sub else ""}?{next_query}>; rel="next"'
        return self._json(page, headers)

    def _resolve(
        self, files: dict[str, _File], filename: str, range_header: str | None
    ) -> _Response:
        f = files.get(filename)
        if f is None:
            raise _HubError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": self.commit})
        headers = {
            "Content-Type": mimetypes.guess_type(filename)[0] or "application/octet-stream",
            "ETag": f'"{f.etag}"',
            "X-Repo-Commit": self.commit,
            "Accept-Ranges": "bytes",
        }
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
        data = f.disk.read_bytes()
        if range_header is None:
            return 200, headers, data
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
        if match is None or not (match[1] or match[2]):
            return 200, headers, data  # unsupported (e.g. multi-range) => ignore it, as servers may
        if match[1]:
            start, end = int(match[1]), min(int(match[2]) if match[2] else f.size - 1, f.size - 1)
        else:  # suffix range: the last N bytes
            start, end = max(f.size - int(match[2]), 0), f.size - 1
        if start >= f.size or start > end:
            raise _HubError(416, None, "Range not satisfiable", {"Content-Range": f"bytes */{f.size}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        return 206, headers, data[start : end + 1]


def hub_env(endpoint: str, hf_home: str | Path, offline: bool = False) -> dict[str, str]:
    """A copy of ``os.environ`` pointing `huggingface_hub` at `endpoint` with its whole cache under `hf_home`.

    Telemetry, update checks, progress bars, implicit tokens and Xet are disabled; any inherited cache
    location, token or offline setting is dropped so the parent environment cannot leak in. With
    `offline`, ``HF_HUB_OFFLINE=1`` is set.
    """
    env = dict(os.environ)
    for name in _SCRUBBED_ENV:
        env.pop(name, None)
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        HF_HUB_DISABLE_SYMLINKS_WARNING="1",
    )
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1", "localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def run_json(code: str, env: dict[str, str], *args: str, timeout: float = 300) -> dict:
    """Run `code` in a fresh interpreter (huggingface_hub reads HF_* when imported) with `env` (see `hub_env`),
    from the repository root; returns its last line of output, which it prints as JSON."""
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
