"""transformers pickle weights (pytorch_model.bin, or shards + index) -> safetensors, from a local folder.

The .bin layouts are written by tests/helpers/checkpoints.py the way transformers 4's save_pretrained did (transformers
5 writes safetensors only); transformers 5 itself must load them back, which checks the fixture.
"""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import PROMPTS
from helpers.checkpoints import bin_state_dict, save_checkpoint
from safetensors import safe_open
from transformers import MusicgenForConditionalGeneration

from musicgen import MusicGen, MusicGenError, convert
from musicgen.errors import CheckpointError
from musicgen.weights import Checkpoint

SHARD_BYTES = 2_500_000  # the tiny model is 5.9 MB: 3 shards


@pytest.fixture(scope="module")
def bin_folders(checkpoints, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's hub-layout model saved as one pytorch_model.bin and as shards + index (no safetensors)."""
    model = checkpoints["hub"][0]
    root = tmp_path_factory.mktemp("bin")
    return {"single": save_checkpoint(model, root / "single", layout="bin"),
            "sharded": save_checkpoint(model, root / "sharded", layout="bin", max_shard_size=SHARD_BYTES)}


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _conversions(folder: Path) -> list[Path]:
    return sorted((folder / convert.LOCAL_FOLDER).iterdir()) if (folder / convert.LOCAL_FOLDER).is_dir() else []


def test_fixture_layout_loads_in_transformers(checkpoints, bin_folders: dict[str, Path]) -> None:
    model = checkpoints["hub"][0]
    sharded = bin_folders["sharded"]
    names = sorted(p.name for p in sharded.glob("*.bin"))
    assert names == ["compression_state_dict.bin", *[f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)],
                     "state_dict.bin"]
    index = json.loads((sharded / "pytorch_model.bin.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"} and set(index["metadata"]) == {"total_size"}
    assert not list(sharded.glob("*.safetensors"))
    reference = model.state_dict()
    for folder in bin_folders.values():
        other, info = MusicgenForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
        assert not any(info.values()), info
        assert all(torch.equal(t, reference[k]) for k, t in other.state_dict().items())


@pytest.mark.parametrize("kind", ["single", "sharded"])
def test_local_bin_folder_generates_like_safetensors(engines, bin_folders: dict[str, Path], kind: str,
                                                     tmp_path: Path) -> None:
    folder = _copy(bin_folders[kind], tmp_path / kind)
    got = MusicGen.from_pretrained(folder, device="cpu").generate(PROMPTS, 0.2, temperature=0).tokens
    assert torch.equal(got, engines["hub"].generate(PROMPTS, 0.2, temperature=0).tokens)
    [converted] = _conversions(folder)  # next to the weights, in the folder's .musicgen-converted/
    assert convert.is_converted(converted)
    expected = ["model.safetensors"] if kind == "single" else [
        *[f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)], "model.safetensors.index.json"]
    assert sorted(p.name for p in converted.iterdir()) == sorted([*expected, convert.MANIFEST])


def test_converted_files_hold_the_same_tensors(bin_folders: dict[str, Path], checkpoints, tmp_path: Path) -> None:
    """The streaming writer's files read back through the safetensors library, tensor for tensor."""
    folder = _copy(bin_folders["sharded"], tmp_path / "sharded")
    converted = convert.weights_folder(folder)
    want = bin_state_dict(checkpoints["hub"][0])
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(want)  # both names of the tied T5 embedding are kept
    got = {}
    for name in sorted(set(index["weight_map"].values())):
        with safe_open(str(converted / name), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            got.update({k: f.get_tensor(k) for k in f.keys()})
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in want.values())


def test_converts_once(bin_folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _copy(bin_folders["single"], tmp_path / "single")
    first = convert.weights_folder(folder)
    stamp = [(p.name, p.stat().st_mtime_ns) for p in sorted(first.iterdir())]
    monkeypatch.setattr(convert, "convert", lambda *a: pytest.fail("converted a second time"))
    assert convert.weights_folder(folder) == first
    assert [(p.name, p.stat().st_mtime_ns) for p in sorted(first.iterdir())] == stamp
    monkeypatch.undo()
    (folder / "pytorch_model.bin").write_bytes((folder / "pytorch_model.bin").read_bytes())  # a new file
    assert convert.weights_folder(folder) != first and len(_conversions(folder)) == 2


def test_read_only_folder_converts_into_hf_home(bin_folders: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _copy(bin_folders["single"], tmp_path / "single")
    monkeypatch.setattr(convert.os, "access", lambda *a, **k: False)  # the tests run as root: chmod is ignored
    monkeypatch.setattr(convert.constants, "HF_HOME", str(tmp_path / "hf_home"))
    converted = convert.weights_folder(folder)
    assert converted.parent == tmp_path / "hf_home" / "musicgen-converted"
    assert not _conversions(folder)
    Checkpoint(converted).tensor("text_encoder.shared.weight")


class _RunsCode:
    """Unpickling this writes a marker file: a weights loader must refuse it before anything runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def test_pickle_that_runs_code_is_refused(bin_folders: dict[str, Path], checkpoints, tmp_path: Path) -> None:
    folder = _copy(bin_folders["single"], tmp_path / "evil")
    marker = tmp_path / "marker"
    state = bin_state_dict(checkpoints["hub"][0])
    torch.save({**state, "payload": _RunsCode(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(MusicGenError, match=r"refusing to unpickle .*builtins.exec") as e:
        MusicGen.from_pretrained(folder, device="cpu")
    assert isinstance(e.value, CheckpointError)
    assert not marker.exists() and not _conversions(folder)
    # torch's weights_only unpickler itself refuses it too (the pre-scan is not the only guard)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert not marker.exists()


@pytest.mark.parametrize("error", [RuntimeError("boom"), OSError(errno.ENOSPC, "No space left on device")])
def test_interrupted_conversion_leaves_nothing(bin_folders: dict[str, Path], tmp_path: Path, error: Exception,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _copy(bin_folders["sharded"], tmp_path / "sharded")
    written = []
    real = convert.write_safetensors

    def fail_on_second_shard(path: Path, tensors: dict) -> int:
        if written:
            path.write_bytes(b"half a file")
            raise error
        written.append(path)
        return real(path, tensors)

    monkeypatch.setattr(convert, "write_safetensors", fail_on_second_shard)
    with pytest.raises(CheckpointError if isinstance(error, OSError) else RuntimeError) as e:
        convert.weights_folder(folder)
    if isinstance(error, OSError):
        assert "No space left" in str(e.value) and "free disk space" in str(e.value)
    assert written and not _conversions(folder)  # neither the target nor a temp folder is left
    monkeypatch.undo()
    converted = convert.weights_folder(folder)
    assert convert.is_converted(converted) and len(_conversions(folder)) == 1
    Checkpoint(converted).tensor("decoder.lm_heads.0.weight")


def test_killed_conversion_temp_folder_is_cleaned(bin_folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(bin_folders["single"], tmp_path / "single")
    target = convert.BinWeights.find(folder).target()
    dead = subprocess.Popen(["true"])  # a process id that is no longer alive
    dead.wait()
    stale = target.parent / f".{target.name}.tmp-{dead.pid}-0badc0de"
    (stale / "junk").mkdir(parents=True)
    assert convert.weights_folder(folder) == target
    assert not stale.exists() and _conversions(folder) == [target]


def test_damaged_files_are_refused(bin_folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(bin_folders["sharded"], tmp_path / "sharded")
    index_path = folder / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())

    index_path.write_text(json.dumps({**index, "weight_map": {**index["weight_map"], "extra.weight": "../x.bin"}}))
    with pytest.raises(CheckpointError, match="unexpected shard files"):
        convert.weights_folder(folder)
    index_path.write_text(json.dumps({**index, "weight_map": {**index["weight_map"], "extra.weight":
                                                                 "pytorch_model-00001-of-00003.bin"}}))
    with pytest.raises(CheckpointError, match="lists 1 tensor.* 'extra.weight'"):
        convert.weights_folder(folder)
    index_path.write_text(json.dumps(index))
    shard = folder / "pytorch_model-00002-of-00003.bin"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated download
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        convert.weights_folder(folder)
    shard.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        convert.weights_folder(folder)
    assert not _conversions(folder)


def test_folder_without_transformers_weights(bin_folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(bin_folders["single"], tmp_path / "audiocraft-only")
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no transformers weights .*read by audiocraft_format.py"):
        MusicGen.from_pretrained(folder, device="cpu")
