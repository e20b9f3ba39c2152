"""The page's history: the last takes of one browser, kept in that browser (Gradio's BrowserState).

An entry holds what it takes to make the piece again (prompt, settings, seed, model) and the name of its
result file. The browser stores it, so the server trusts nothing in it: every value is checked again
before it is restored, and a file is served again only if its bare name is one of ours, in the studio's
output folder, and still there (results are kept for an hour).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .request import Request

LIMIT = 20  # entries kept per browser
SETTINGS = ("duration", "model_size", "stereo", "decoder", "top_k", "top_p", "temperature", "cfg_coef")
RESULT_NAME = re.compile(r"musicgen-\d+(-[a-z0-9]+)?-[0-9a-f]{12}\.(wav|flac|mp3|ogg)")  # backend.Studio's names


def entry(req: Request, seed: int, repo: str, seconds: float, file: Path) -> dict[str, Any]:
    """One finished take, as the browser keeps it."""
    return {"prompt": req.prompt, "seed": seed, "model": repo, "seconds": round(seconds, 1), "file": file.name,
            **{k: getattr(req, k) for k in SETTINGS}}


def add(history: object, item: dict[str, Any]) -> list[dict[str, Any]]:
    """The newest first, at most LIMIT; anything that is not a list of entries is dropped."""
    old = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    return [item, *old][:LIMIT]


def rows(history: object) -> list[list[Any]]:
    """What the history table shows: prompt, seed, model, seconds."""
    if not isinstance(history, list):
        return []
    return [[str(h.get("prompt", ""))[:120], h.get("seed"), str(h.get("model", "")), h.get("seconds")]
            for h in history if isinstance(h, dict)]


def settings(item: object) -> dict[str, Any]:
    """The page fields an entry restores (prompt, settings, seed), only values of the right kind."""
    if not isinstance(item, dict):
        return {}
    kinds = {"prompt": str, "duration": (int, float), "model_size": str, "stereo": bool, "decoder": str,
             "top_k": int, "top_p": (int, float), "temperature": (int, float), "cfg_coef": (int, float), "seed": int}
    return {k: item[k] for k, kind in kinds.items()
            if k in item and isinstance(item[k], kind) and not (kind is not bool and isinstance(item[k], bool))}


def result_file(out_dir: Path, item: object) -> Path | None:
    """The entry's result file if it is still there; None for anything else (a path, a name not ours)."""
    name = item.get("file") if isinstance(item, dict) else None
    if not isinstance(name, str) or not RESULT_NAME.fullmatch(name):
        return None
    path = out_dir / name
    return path if path.is_file() else None
