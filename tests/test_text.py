"""T5 encoder and tokenizer against transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROMPTS
from helpers.checkpoints import build_tokenizer, save_checkpoint
from helpers.fakehub import hub_env
from safetensors import safe_open
from transformers import AutoTokenizer

from musicgen import MusicGen
from musicgen.errors import CheckpointError
from musicgen.text import TextTokenizer


def test_tokenizer_matches_transformers(mg: MusicGen, checkpoints, layout: str) -> None:
    hf = AutoTokenizer.from_pretrained(checkpoints[layout][1])
    ref = hf(PROMPTS, padding=True, return_tensors="pt")
    ids, mask = mg.tokenizer(PROMPTS)
    assert torch.equal(ids, ref.input_ids)
    assert torch.equal(mask, ref.attention_mask.bool())
    assert ids[0, -1].item() == hf.eos_token_id  # the longer prompt ends with </s>
    assert not mask[1, -1]  # the shorter one is padded


def test_t5_hidden_states_match(mg: MusicGen, ref) -> None:
    ids, mask = mg.tokenizer(PROMPTS)
    with torch.no_grad():
        want = ref.text_encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    got, _ = mg.encode_text(PROMPTS)
    m = mask[..., None]
    torch.testing.assert_close(got * m, want * m, rtol=1e-5, atol=1e-5)
    assert want.abs().max() > 0.5  # not a degenerate all-zero encoder


def test_empty_prompt_is_the_null_condition(small: MusicGen) -> None:
    ids, mask = small.tokenizer(["", "a song"])
    assert not mask[0].any() and mask[1].any()


def test_long_prompt_is_truncated_with_a_warning(small: MusicGen) -> None:
    words = " ".join(["piano drums bass guitar"] * 400)
    with pytest.warns(UserWarning, match="keeping the first 512"):
        ids, mask = small.tokenizer([words, "short"])
    assert ids.shape[1] == 512
    assert ids[0, -1].item() == small.tokenizer.tok.token_to_id("</s>")


def test_whitespace_is_normalised(small: MusicGen) -> None:
    ids, mask = small.tokenizer(["  lofi   hip hop\tbeat \n", "lofi hip hop beat", "   "])
    assert torch.equal(ids[0], ids[1]) and torch.equal(mask[0], mask[1])
    assert not mask[2].any()  # only whitespace: the null condition, like ""


def test_t5_embedding_stored_only_as_embed_tokens(checkpoints, engines, tmp_path: Path) -> None:
    """The tied T5 input embedding under `encoder.embed_tokens.weight` alone (no `shared.weight`) is used."""
    model = checkpoints["hub"][0]
    folder = save_checkpoint(model, tmp_path / "embed_tokens", layout="hub", shards=1, t5_embedding="embed_tokens")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert "text_encoder.shared.weight" not in f.keys()
    mg = MusicGen.from_pretrained(folder, device="cpu")
    got, mask = mg.encode_text(PROMPTS)
    want, want_mask = engines["hub"].encode_text(PROMPTS)
    assert torch.equal(mask, want_mask) and torch.equal(got, want)
    with torch.no_grad():
        ref = model.text_encoder(input_ids=mg.tokenizer(PROMPTS)[0], attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(got * mask[..., None], ref * mask[..., None], rtol=1e-5, atol=1e-5)


def _without_tokenizer(src: Path, dst: Path, text_encoder: str | None) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (dst / f.name).write_bytes(f.read_bytes())
    config = json.loads((dst / "config.json").read_text())
    config["text_encoder"].pop("_name_or_path", None)
    if text_encoder is not None:
        config["text_encoder"]["_name_or_path"] = text_encoder
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_tokenizer_of_the_named_text_encoder(checkpoints, small: MusicGen, tmp_path: Path) -> None:
    """No tokenizer.json: the one of the text encoder config.json names (here a local folder) is used."""
    t5 = tmp_path / "t5-base"
    build_tokenizer(t5)
    folder = _without_tokenizer(checkpoints["hub"][1], tmp_path / "ckpt", str(t5))
    tok = TextTokenizer(folder)
    ids, mask = tok(PROMPTS)
    want_ids, want_mask = small.tokenizer(PROMPTS)
    assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)


def test_no_tokenizer_and_no_text_encoder_name(checkpoints, tmp_path: Path) -> None:
    folder = _without_tokenizer(checkpoints["hub"][1], tmp_path / "ckpt", None)
    with pytest.raises(CheckpointError, match=r"has no tokenizer.json .*_name_or_path.*copy the T5 tokenizer.json"):
        TextTokenizer(folder)


def test_named_text_encoder_offline_and_not_cached(checkpoints, tmp_path: Path) -> None:
    """A local folder without tokenizer.json whose text encoder's tokenizer cannot be fetched: what to do."""
    folder = _without_tokenizer(checkpoints["hub"][1], tmp_path / "ckpt", "t5-base")
    code = ("import sys, pathlib; from musicgen.text import TextTokenizer\n"
            "try: TextTokenizer(pathlib.Path(sys.argv[1]))\n"
            "except Exception as e: print(type(e).__name__ + ': ' + str(e))")
    env = hub_env("http://127.0.0.1:9", tmp_path / "home", offline=True)
    out = subprocess.run([sys.executable, "-c", code, str(folder)], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], timeout=120).stdout
    assert out.startswith("DownloadError: ") and "text encoder 't5-base'" in out and "HF_HUB_OFFLINE" in out
    assert f"copy t5-base's tokenizer.json into {folder}" in out
