"""Finding a checkpoint: a local folder, or a Hugging Face Hub repo through the standard HF cache.

Only the files the engine reads are downloaded: the configs, the T5 tokenizer and the safetensors weights;
when a repo has no safetensors (facebook/musicgen-medium and -large on main), its transformers pickle
weights `pytorch_model.bin` (or shards + index) instead, which `convert.py` turns into safetensors once.
Audiocraft's `state_dict.bin` / `compression_state_dict.bin`, which the official repos also carry, are
fetched only for a repo without the transformers layout (an audiocraft export: audiocraft_format.py).
`HF_HUB_OFFLINE=1` with a populated cache works, and every failure says what to do next.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .convert import BIN_FILE, BIN_INDEX, has_safetensors
from .errors import CheckpointError, DownloadError

# What a transformers-layout MusicGen repo needs: configs, safetensors (single file, or shards with their
# index), the T5 tokenizer, and the melody models' feature-extractor config.
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
    "adapter_config.json",  # a PEFT LoRA adapter (lora.py): its base model is fetched in turn
    "adapter_model.safetensors",
]
# Only for repos without safetensors: transformers' pickle weights (never audiocraft's *state_dict.bin).
BIN_PATTERNS = [BIN_FILE, BIN_INDEX, "pytorch_model-*-of-*.bin"]
# audiocraft's own export (audiocraft_format.py), fetched only for a repo without the transformers layout
AUDIOCRAFT_PATTERNS = ["state_dict.bin", "compression_state_dict.bin"]
EXAMPLE_REPO = "facebook/musicgen-small"


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None = None, what: str | None = None,
               cache_dir: str | Path | None = None) -> Iterator[None]:
    """huggingface_hub's exceptions -> DownloadError with what to do. `what`: the file(s) being fetched."""
    what = what or repo_id
    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        yield
    except GatedRepoError as e:
        raise DownloadError(f"{repo_id} is gated on the Hugging Face Hub: accept its terms on its page, then "
                            "log in with `hf auth login` (or set HF_TOKEN)") from e
    except RepositoryNotFoundError as e:
        raise DownloadError(f"model {repo_id!r} was not found on the Hugging Face Hub: check the name (for "
                            f"example {EXAMPLE_REPO}), log in if it is private, or pass a local folder") from e
    except RevisionNotFoundError as e:
        raise DownloadError(f"revision {revision!r} of {repo_id} does not exist on the Hugging Face Hub") from e
    except IncompleteSnapshotError as e:
        raise DownloadError(f"the cached copy of {what} in {cache} is incomplete (an interrupted download) and the "
                            "Hugging Face Hub is unreachable (or HF_HUB_OFFLINE is set): connect to the internet once "
                            "to complete it") from e
    except LocalEntryNotFoundError as e:
        raise DownloadError(f"cannot download {what}: the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE "
                            f"is set) and it is not in the local cache ({cache}). Connect to the internet "
                            "once to download it, copy a populated HF cache here, or pass a local folder") from e
    except EntryNotFoundError as e:
        raise DownloadError(f"{what} does not exist on the Hugging Face Hub (revision {revision or 'main'})") from e
    except HFValidationError as e:
        raise DownloadError(f"{repo_id!r} is neither a local folder nor a valid Hub repo id such as "
                            f"{EXAMPLE_REPO}") from e
    except HfHubHTTPError as e:
        raise DownloadError(f"downloading {what} failed ({e}); try again later") from e
    except OSError as e:  # disk full, permissions on the cache folder, ...
        raise DownloadError(f"cannot store {what} in the HF cache ({cache}): {e}") from e


def download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch (or find in the HF cache) the files of `repo_id` that we load; returns the snapshot folder.
    The safetensors patterns come first; the .bin weights only when the snapshot then has no safetensors
    (online this lists the repo again; offline it is answered from the cache)."""
    with hub_errors(repo_id, revision):
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
        adapter = (folder / "adapter_config.json").is_file()
        if not has_safetensors(folder) and not adapter:
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=BIN_PATTERNS))
        if not (folder / "config.json").is_file() and not adapter:  # audiocraft's own export (a fine-tune)
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=AUDIOCRAFT_PATTERNS))
    return folder


def download_repo(repo_id: str, revision: str | None = None, what: str | None = None) -> Path:
    """A transformers repo a checkpoint refers to (an audiocraft export's T5 or EnCodec): its configs, tokenizer
    and safetensors weights, through the HF cache."""
    with hub_errors(repo_id, revision, what):
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))


def download_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """One file of a Hub repo, through the HF cache."""
    with hub_errors(repo_id, revision, f"{repo_id}/{filename}"):
        return Path(hf_hub_download(repo_id, filename, revision=revision))


def _is_path_like(name: str) -> bool:
    return name.startswith((".", "/", "~", "\\")) or Path(name).exists()


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
    if not any((folder / f).is_file() for f in ("config.json", "adapter_config.json", AUDIOCRAFT_PATTERNS[0])):
        raise CheckpointError(f"{name} has no config.json: not a transformers-layout MusicGen checkpoint (nor "
                              f"adapter_config.json: a PEFT LoRA adapter, nor {AUDIOCRAFT_PATTERNS[0]}: an audiocraft "
                              "export)")
    return folder
