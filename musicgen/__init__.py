"""A fast, from-scratch PyTorch inference engine for Meta's MusicGen."""

from .errors import CheckpointError, DownloadError, InvalidInputError, MusicGenError
from .pipeline import GenerationOutput, MusicGen, StreamStep

__all__ = [
    "MusicGen", "GenerationOutput", "StreamStep",
    "MusicGenError", "InvalidInputError", "CheckpointError", "DownloadError",
]
