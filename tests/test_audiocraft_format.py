"""audiocraft's own export format (musicgen/audiocraft_format.py), against audiocraft 1.3.0 itself.

audiocraft's own code builds tiny random LMs from its own config files and writes them with its own `export_lm`
(tests/helpers/audiocraft_lm_oracle.py, in a process of its own); its own `MusicGen.get_pretrained(folder)` then
generates greedily. Our `MusicGen.from_pretrained(folder)` must give the same tokens, and the same audio within
float rounding. The T5 and EnCodec the export names come from an HF cache holding tiny ones under "t5-base" and
"facebook/encodec_32khz" (both sides read the same).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import audiocraft_oracle
from helpers.checkpoints import build_model, build_tokenizer
from helpers.fakehub import FakeHub, hub_env
from huggingface_hub import constants, snapshot_download
from test_hub import PROMPTS, run

from musicgen import MusicGen, audiocraft_format, convert
from musicgen.errors import CheckpointError
from musicgen.hub import ALLOW_PATTERNS

pytestmark = pytest.mark.skipif(not audiocraft_oracle.available(), reason=audiocraft_oracle.SKIP_REASON)
ROOT = Path(__file__).resolve().parents[1]
ORACLE = ROOT / "tests" / "helpers" / "audiocraft_lm_oracle.py"
PROMPT = "lofi hip hop beat"
FRAMES = 12
REFERENCED = ("t5-base", "facebook/encodec_32khz")


@pytest.fixture(scope="module")
def referenced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The repos an export names, as folders: a tiny T5 (with its tokenizer) and a tiny transformers EnCodec."""
    root = tmp_path_factory.mktemp("referenced")
    model = build_model(seed=0)
    t5, codec = root / "t5", root / "encodec"
    model.text_encoder.save_pretrained(t5)
    build_tokenizer(t5)
    model.audio_encoder.save_pretrained(codec)
    return dict(zip(REFERENCED, (t5, codec)))


@pytest.fixture(scope="module")
def cache(referenced: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("hf") / "hub"
    with FakeHub(referenced) as hub:
        for repo in referenced:
            snapshot_download(repo, cache_dir=cache, endpoint=hub.endpoint, allow_patterns=ALLOW_PATTERNS)
    return cache


@pytest.fixture
def offline(cache: Path):
    saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(cache), True
    try:
        yield
    finally:
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved


@pytest.fixture(scope="module")
def exports(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """variant -> a folder written by audiocraft's export functions, with audiocraft's generation in oracle.pt."""
    root = tmp_path_factory.mktemp("exports")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = {}
    for variant in ("mono", "stereo", "melody"):
        folder = root / variant
        proc = subprocess.run([sys.executable, str(ORACLE), variant, str(folder), PROMPT, str(FRAMES)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[variant] = folder
    return out


def copy_export(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in audiocraft_format.PATTERNS:
        shutil.copyfile(src / name, dst / name)
    return dst


@pytest.mark.parametrize("variant", ["mono", "stereo", "melody"])
def test_tokens_and_audio_equal_audiocraft(exports: dict[str, Path], variant: str, offline: None) -> None:
    oracle = torch.load(exports[variant] / "oracle.pt")
    mg = MusicGen.from_pretrained(exports[variant], device="cpu")
    assert mg.audio_channels == (2 if variant == "stereo" else 1) and (mg.chroma is not None) == (variant == "melody")
    out = mg.generate(PROMPT, FRAMES / 50, temperature=0, cfg_coef=3.0, normalize="none")
    assert torch.equal(out.tokens, oracle["tokens"])
    assert out.audio.shape == oracle["audio"].shape
    assert (out.audio - oracle["audio"].clamp(-1, 1)).abs().max() < 1e-4
    assert not torch.equal(out.tokens, mg.generate("80s synthwave", FRAMES / 50, temperature=0).tokens)


def test_converted_once_then_read_offline(exports: dict[str, Path], tmp_path: Path, offline: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = copy_export(exports["mono"], tmp_path / "export")
    first = MusicGen.from_pretrained(folder, device="cpu").generate(PROMPT, 0.1, temperature=0).tokens
    (copy,) = (folder / convert.LOCAL_FOLDER).iterdir()
    assert (copy / "config.json").is_file() and (copy / "model.safetensors").is_file()
    monkeypatch.setattr(audiocraft_format, "_convert_into", lambda *a: pytest.fail("converted a second time"))
    again = MusicGen.from_pretrained(folder, device="cpu").generate(PROMPT, 0.1, temperature=0).tokens
    assert torch.equal(first, again)


def test_an_interrupted_conversion_is_redone(exports: dict[str, Path], tmp_path: Path, offline: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = copy_export(exports["stereo"], tmp_path / "export")
    real = convert.write_safetensors

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(convert, "write_safetensors", dies)
    with pytest.raises(KeyboardInterrupt):
        MusicGen.from_pretrained(folder, device="cpu")
    assert not any((folder / convert.LOCAL_FOLDER).iterdir())  # no half-written copy left behind
    monkeypatch.setattr(convert, "write_safetensors", real)
    assert MusicGen.from_pretrained(folder, device="cpu").audio_channels == 2


def _rewrite(src: Path, dst: Path, **changes: object) -> Path:
    """A copy of an export whose state_dict.bin has other top-level entries (tensors-only load, re-saved)."""
    copy_export(src, dst)
    pkg = torch.load(src / audiocraft_format.LM_FILE, weights_only=True)
    pkg.update(changes)
    torch.save(pkg, dst / audiocraft_format.LM_FILE)
    return dst


@pytest.mark.parametrize(("path", "value", "message"), [
    ("transformer_lm.positional_embedding", "rope", "transformer_lm.positional_embedding = 'rope'"),
    ("codebooks_pattern.modeling", "parallel", "codebooks_pattern.modeling = 'parallel'"),
    ("transformer_lm.kv_repeat", 2, "transformer_lm.kv_repeat = 2"),
    ("fuser.cross_attention_pos_emb", True, "fuser.cross_attention_pos_emb = True"),
    ("transformer_lm.two_step_cfg", True, "transformer_lm.two_step_cfg = True"),
    ("transformer_lm.bias_attn", True, "transformer_lm.bias_attn = True"),
])
def test_settings_we_cannot_run_are_refused_by_name(exports: dict[str, Path], tmp_path: Path, offline: None,
                                                    monkeypatch: pytest.MonkeyPatch, path: str, value: object,
                                                    message: str) -> None:
    pkg = torch.load(exports["mono"] / audiocraft_format.LM_FILE, weights_only=True)
    cfg = yaml.safe_load(pkg["xp.cfg"])
    node = cfg
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    folder = _rewrite(exports["mono"], tmp_path / "export", **{"xp.cfg": yaml.safe_dump(cfg)})
    monkeypatch.setattr(audiocraft_format, "lm_tensors", lambda *a: pytest.fail("weights read before the check"))
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        MusicGen.from_pretrained(folder, device="cpu")


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-state-dict",))


def test_a_code_running_pickle_is_refused_and_never_runs(exports: dict[str, Path], tmp_path: Path,
                                                          offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = copy_export(exports["mono"], tmp_path / "export")
    pkg = torch.load(folder / audiocraft_format.LM_FILE, weights_only=True)
    pkg["payload"] = Payload()
    torch.save(pkg, folder / audiocraft_format.LM_FILE)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="refusing to unpickle .* refers to posix.system"):
        MusicGen.from_pretrained(folder, device="cpu")
    assert not (tmp_path / "pwned-by-state-dict").exists()


@pytest.fixture(scope="module")
def full_codec(exports: dict[str, Path], cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mono export with a full audiocraft EnCodec (audiocraft's own builder and export_encodec) in place of
    the reference; audiocraft's decode of random codes in oracle_codec.pt."""
    folder = tmp_path_factory.mktemp("full-codec")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ORACLE), "encodec", str(folder), PROMPT, "40"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copyfile(exports["mono"] / audiocraft_format.LM_FILE, folder / audiocraft_format.LM_FILE)
    return folder


def test_a_full_audiocraft_encodec_decodes_as_audiocraft(full_codec: Path, offline: None) -> None:
    oracle = torch.load(full_codec / "oracle_codec.pt")
    mg = MusicGen.from_pretrained(full_codec, device="cpu")
    audio = mg.decode(oracle["codes"])
    assert audio.shape == oracle["audio"].shape
    assert (audio - oracle["audio"].clamp(-1, 1)).abs().max() < 1e-5 * oracle["audio"].abs().max() + 1e-7
    assert mg.generate(PROMPT, 0.1, temperature=0).audio.abs().max() > 0


def test_a_codec_setting_we_cannot_run_is_refused(full_codec: Path, tmp_path: Path, offline: None) -> None:
    folder = copy_export(full_codec, tmp_path / "export")
    pkg = torch.load(folder / audiocraft_format.COMPRESSION_FILE, weights_only=True)
    cfg = yaml.safe_load(pkg["xp.cfg"])
    cfg["encodec"]["renormalize"] = True
    pkg["xp.cfg"] = yaml.safe_dump(cfg)
    torch.save(pkg, folder / audiocraft_format.COMPRESSION_FILE)
    with pytest.raises(CheckpointError, match="encodec.renormalize = True"):
        MusicGen.from_pretrained(folder, device="cpu")


def test_from_the_hub_then_offline(exports: dict[str, Path], referenced: dict[str, Path], tmp_path: Path,
                                   offline: None) -> None:
    """A fine-tune published as an audiocraft export: only its two files are fetched (and the repos it names),
    converted once in the HF cache, then loaded offline."""
    local = MusicGen.from_pretrained(exports["mono"], device="cpu").generate(PROMPTS, 0.2, temperature=0)
    repo = "someone/musicgen-finetune"
    with FakeHub({repo: exports["mono"], **referenced}) as hub:
        got = run(repo, hub_env(hub.endpoint, tmp_path))
        fetched = set(hub.requested_files(repo))
    assert fetched == set(audiocraft_format.PATTERNS)  # not oracle.pt: only what an export is
    assert got == {"tokens": local.tokens.tolist()}
    assert run(repo, hub_env(hub.endpoint, tmp_path, offline=True)) == got
    assert list((tmp_path / "hub").glob("models--someone--musicgen-finetune/musicgen-converted/audiocraft-*"))
