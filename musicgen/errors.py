"""Exceptions raised by the engine.

Every error a user can cause derives from ValueError so that callers (the CLI, the web app) can
catch one family and show its message; the subclasses say which part went wrong.
"""

from __future__ import annotations


class MusicGenError(ValueError):
    """Base class of every error the engine raises on purpose."""


class InvalidInputError(MusicGenError):
    """An argument to `generate` / `decode` is out of range or of the wrong type."""


class CheckpointError(MusicGenError):
    """A checkpoint folder is incomplete, of an unsupported kind, or a tensor is missing / mis-shaped."""


class DownloadError(MusicGenError):
    """The weights could not be fetched from the Hugging Face Hub (nor found in the local cache)."""
