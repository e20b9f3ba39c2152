"""musicgen/studio/catalog.py: the checkpoints the studio can pick, the Space metadata that lists them, the
ZeroGPU budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from musicgen import InvalidInputError
from musicgen.studio import catalog
from musicgen.studio.catalog import choose_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_every_checkpoint_the_app_can_pick() -> None:
    assert sorted([
        "facebook/musicgen-small", "facebook/musicgen-medium", "facebook/musicgen-large",
        "facebook/musicgen-stereo-small", "facebook/musicgen-stereo-medium", "facebook/musicgen-stereo-large",
        "facebook/musicgen-melody", "facebook/musicgen-melody-large",
        "facebook/musicgen-stereo-melody", "facebook/musicgen-stereo-melody-large",
    ]) == catalog.ALL_REPOS
    assert choose_checkpoint("large", True, False) == (catalog.CHECKPOINTS[("large", True, False)], None)
    assert choose_checkpoint("large", True, True)[0].repo == "facebook/musicgen-stereo-melody-large"
    ckpt, notice = choose_checkpoint("small", False, True)
    assert ckpt.repo == "facebook/musicgen-melody" and "no small melody model" in notice
    assert choose_checkpoint("small", True, True)[0].repo == "facebook/musicgen-stereo-melody"
    assert "≈2.4 GB download" in choose_checkpoint("small", False, False)[0].hint
    with pytest.raises(InvalidInputError):
        choose_checkpoint("huge", False, False)


def test_readme_lists_every_checkpoint_in_the_space_metadata() -> None:
    front = (ROOT / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
    for repo in [*catalog.ALL_REPOS, catalog.MBD_REPO]:
        assert f"  - {repo}\n" in front
    from musicgen import mbd_checkpoint

    assert catalog.MBD_REPO == mbd_checkpoint.REPO_ID


def test_gpu_budget_grows_with_the_request() -> None:
    small = catalog.gpu_seconds("small", 10, "encodec")
    assert 30 <= small < catalog.gpu_seconds("large", 30, "encodec") < catalog.gpu_seconds("large", 30, "mbd") <= 300



def test_space_sdk_version_is_the_pinned_gradio() -> None:
    import gradio

    front = (ROOT / "README.md").read_text().split("---")[1]
    pinned = next(line.split("==")[1].split()[0] for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if line.startswith("gradio=="))
    assert f"sdk_version: {pinned}\n" in front and gradio.__version__ == pinned


def test_the_owners_models_are_parsed_with_clear_errors(tmp_path: Path) -> None:
    models = catalog.parse_models(f"My punk=user/musicgen-punk; Local one = {tmp_path}\nother/repo")
    assert [(m.name, m.repo) for m in models] == [("My punk", "user/musicgen-punk"), ("Local one", str(tmp_path)),
                                                  ("other/repo", "other/repo")]
    (tmp_path / "model.safetensors").write_bytes(b"0" * 1000)
    assert models[1].download_gb == 1e-6 and "local folder" in models[1].hint and models[0].download_gb is None
    assert catalog.parse_models("") == ()
    with pytest.raises(InvalidInputError, match="used twice"):
        catalog.parse_models("a=x/y; a=x/z")
    with pytest.raises(InvalidInputError, match="neither a local folder nor a Hub id"):
        catalog.parse_models("a=/no/such/folder")
    with pytest.raises(InvalidInputError, match="model name"):
        catalog.parse_models("<script>=x/y")
