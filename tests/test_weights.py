"""Checkpoint loading: both layouts, every key used, clear errors for broken checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from musicgen import CheckpointError, MusicGen


def _copy_single(src: Path, dst: Path, edit) -> Path:
    """Copy a checkpoint folder into one model.safetensors, letting `edit` change the tensors."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(f))
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_both_layouts_give_identical_models(engines: dict[str, MusicGen]) -> None:
    a, b = engines["current"], engines["hub"]
    for ma, mb in ((a.t5, b.t5), (a.lm, b.lm), (a.codec, b.codec)):
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-6, atol=1e-6, msg=k)


def test_hub_layout_has_the_old_key_names(checkpoints) -> None:
    folder = checkpoints["hub"][1]
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert any(k.endswith("weight_g") for k in index) and not any("parametrizations" in k for k in index)
    assert "decoder.model.decoder.embed_positions.weights" in index
    assert len(set(index.values())) == 3
    assert (folder / "pytorch_model.bin").exists()  # the decoy pickle a safe loader never opens


def test_pickle_is_never_opened(checkpoints, tmp_path: Path) -> None:
    """The hub-layout folder carries a pytorch_model.bin; make it a trap that fails if unpickled."""
    folder = tmp_path / "trap"
    shutil.copytree(checkpoints["hub"][1], folder)
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: opening this file is a bug")
    MusicGen.from_pretrained(folder, device="cpu")


def test_missing_tensor_is_named(checkpoints, tmp_path: Path) -> None:
    key = "decoder.model.decoder.layers.1.fc1.weight"
    folder = _copy_single(checkpoints["current"][1], tmp_path / "missing", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        MusicGen.from_pretrained(folder, device="cpu")


def test_misshaped_tensor_is_named(checkpoints, tmp_path: Path) -> None:
    key = "text_encoder.encoder.block.0.layer.0.SelfAttention.o.weight"

    def shrink(t: dict[str, torch.Tensor]) -> None:
        t[key] = t[key][:, :-1].contiguous()

    folder = _copy_single(checkpoints["current"][1], tmp_path / "shape", shrink)
    with pytest.raises(CheckpointError, match=r"SelfAttention\.o\.weight.*shape"):
        MusicGen.from_pretrained(folder, device="cpu")


def test_unknown_tensor_is_refused(checkpoints, tmp_path: Path) -> None:
    def add(t: dict[str, torch.Tensor]) -> None:
        t["decoder.model.decoder.layers.0.mystery.weight"] = torch.zeros(3)

    folder = _copy_single(checkpoints["current"][1], tmp_path / "extra", add)
    with pytest.raises(CheckpointError, match="mystery"):
        MusicGen.from_pretrained(folder, device="cpu")


def test_no_safetensors(checkpoints, tmp_path: Path) -> None:
    folder = tmp_path / "bin-only"
    shutil.copytree(checkpoints["hub"][1], folder, ignore=shutil.ignore_patterns("*.safetensors*"))
    with pytest.raises(CheckpointError, match="no safetensors weights"):
        MusicGen.from_pretrained(folder, device="cpu")


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a folder"):
        MusicGen.from_pretrained(tmp_path / "nope", device="cpu")
    with pytest.raises(CheckpointError, match="config.json"):
        MusicGen.from_pretrained(tmp_path, device="cpu")


def test_melody_config_without_melody_weights(checkpoints, tmp_path: Path) -> None:
    folder = tmp_path / "text-only"
    shutil.copytree(checkpoints["current"][1], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "musicgen_melody"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"audio_enc_to_dec_proj\.weight"):  # a melody model needs its chroma
        MusicGen.from_pretrained(folder, device="cpu")


def test_loaded_weights_do_not_track_gradients(small: MusicGen) -> None:
    assert not any(p.requires_grad for m in (small.t5, small.lm, small.codec) for p in m.parameters())
