"""Finding a checkpoint: a local folder, or a Hugging Face Hub repo through the standard HF cache.

Only the files the engine reads are downloaded (never the pickle weights the repos also carry), so
`HF_HUB_OFFLINE=1` with a pre-populated cache works, and every failure says what to do next.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .errors import CheckpointError, DownloadError

# Exactly what a transformers-layout MusicGen repo needs: configs, safetensors (single file, or shards
# with their index), the T5 tokenizer, and the melody models' feature-extractor config.
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
]
EXAMPLE_REPO = "facebook/musicgen-small"


def _is_path_like(name: str) -> bool:
    return name.startswith((".", "/", "~", "\\")) or Path(name).exists()


def download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch (or find in the HF cache) the files of `repo_id` that we load; returns the snapshot folder."""
    cache = constants.HF_HUB_CACHE
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except GatedRepoError as e:
        raise DownloadError(f"{repo_id} is gated on the Hugging Face Hub: accept its terms on its page, then "
                            "log in with `hf auth login` (or set HF_TOKEN)") from e
    except RepositoryNotFoundError as e:
        raise DownloadError(f"model {repo_id!r} was not found on the Hugging Face Hub: check the name (for "
                            f"example {EXAMPLE_REPO}), log in if it is private, or pass a local folder") from e
    except RevisionNotFoundError as e:
        raise DownloadError(f"revision {revision!r} of {repo_id} does not exist on the Hugging Face Hub") from e
    except LocalEntryNotFoundError as e:
        raise DownloadError(f"cannot download {repo_id}: the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE "
                            f"is set) and the model is not in the local cache ({cache}). Connect to the internet "
                            "once to download it, copy a populated HF cache here, or pass a local folder") from e
    except HFValidationError as e:
        raise DownloadError(f"{repo_id!r} is neither a local folder nor a valid Hub repo id such as "
                            f"{EXAMPLE_REPO}") from e
    except HfHubHTTPError as e:
        raise DownloadError(f"downloading {repo_id} failed ({e}); try again later") from e
    except OSError as e:  # disk full, permissions on the cache folder, ...
        raise DownloadError(f"cannot store {repo_id} in the HF cache ({cache}): {e}") from e


def resolve(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder with the checkpoint files, or a Hub repo id to download. Returns a folder that
    holds config.json (the weights are checked when they are opened)."""
    name = str(name_or_path)
    folder = Path(name).expanduser()
    if folder.is_dir():
        pass
    elif _is_path_like(name) or isinstance(name_or_path, Path):
        raise CheckpointError(f"{name} is not a folder holding a MusicGen checkpoint")
    else:
        folder = download(name, revision)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{name} has no config.json: not a transformers-layout MusicGen checkpoint")
    return folder
