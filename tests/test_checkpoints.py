"""Sanity checks for the tiny random MusicGen checkpoints built by ``tests/helpers/checkpoints.py``."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import (
    REAL_SMALL_CONFIG,
    TEXT_VOCAB_SIZE,
    TOKENIZER_VOCAB_SIZE,
    build_checkpoint,
    build_model,
    build_real_size,
    save_checkpoint,
)
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import AutoTokenizer, MusicgenConfig, MusicgenForConditionalGeneration

Model = MusicgenForConditionalGeneration

PROMPTS = ["lofi hip hop beat with mellow piano", "80s synthwave, driving bass"]
OTHER_PROMPTS = ["epic orchestral soundtrack with choir", "sad violin melody"]


# ------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Model, Path]]:
    """One in-memory model (seed 0) saved in both layouts."""
    root = tmp_path_factory.mktemp("ckpt")
    model, current = build_checkpoint(root / "current", layout="current", seed=0)
    hub = save_checkpoint(model, root / "hub", layout="hub")
    return {"current": (model, current), "hub": (model, hub)}


@pytest.fixture(scope="module")
def loaded(built: dict) -> dict[str, MusicgenForConditionalGeneration]:
    """Both folders loaded back by transformers, checking the loading report is clean."""
    out = {}
    for layout, (_, folder) in built.items():
        model, info = MusicgenForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"], (layout, info["missing_keys"])
        assert not info["unexpected_keys"], (layout, info["unexpected_keys"])
        assert not info["mismatched_keys"], (layout, info["mismatched_keys"])
        out[layout] = model.eval()
    return out


def _keys(folder: Path) -> dict[str, tuple[int, ...]]:
    """All tensor names in a checkpoint folder with their shapes (reads every *.safetensors file)."""
    out: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                assert key not in out, f"{key} appears in two shards"
                out[key] = tuple(f.get_slice(key).get_shape())
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118
                out[key] = f.get_tensor(key)
    return out


def _text_inputs(folder: Path, prompts: list[str]) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return dict(tokenizer(prompts, padding=True, return_tensors="pt"))


# ------------------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------------------


def test_tokenizer_matches_transformers(built: dict) -> None:
    _, folder = built["current"]
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(folder)
    assert type(hf).__name__ == "T5Tokenizer"
    assert raw.get_vocab_size() == TOKENIZER_VOCAB_SIZE == len(hf) <= TEXT_VOCAB_SIZE
    assert (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2)
    assert [raw.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert hf.model_max_length == 512
    texts = [
        "lofi hip hop beat with mellow piano",
        "double  spaces   inside",
        "ｆｕｌｌ　ｗｉｄｔｈ ＡＢＣ① (NFKC)",
        "tab\tand\nnewline",
        "café ümlaut 🎵 unknown chars",
        "UPPER case 123 !?",
        "",
        "  leading and trailing  ",
    ]
    for text in texts:
        ids = hf(text).input_ids
        assert ids[-1] == 1, text
        # transformers 5.23 drops leading/trailing whitespace (WhitespaceSplit); tokenizers keeps it.
        assert ids == raw.encode(" ".join(text.split())).ids, text
        if text == text.strip():
            assert ids == raw.encode(text).ids, text
    assert raw.encode("a b").tokens[-1] == "</s>"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "T5Tokenizer" and config["extra_ids"] == 0


# ------------------------------------------------------------------------------------------------------------
# File layouts
# ------------------------------------------------------------------------------------------------------------


def test_current_layout_files(built: dict) -> None:
    model, folder = built["current"]
    names = {p.name for p in folder.iterdir()}
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}
    assert expected | {"tokenizer_config.json", "special_tokens_map.json"} <= names
    assert "pytorch_model.bin" not in names
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    keys = _keys(folder)
    assert any(".parametrizations.weight.original0" in k for k in keys)
    assert not any(k.endswith((".weight_g", ".weight_v")) for k in keys)
    # transformers 5.23 drops the tied T5 input embedding and the non-persistent sinusoid buffer.
    assert "text_encoder.encoder.embed_tokens.weight" not in keys
    assert "decoder.model.decoder.embed_positions.weights" not in keys
    assert keys["audio_encoder.quantizer.layers.0.codebook.embed"] == (2048, 16)
    state = model.state_dict()
    assert set(keys) == set(state) - {"text_encoder.encoder.embed_tokens.weight"}
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["decoder_start_token_id"] == gen["pad_token_id"] == gen["bos_token_id"] == 2048
    assert gen["do_sample"] is True and gen["guidance_scale"] == 3.0 and gen["max_length"] == 1500


def test_hub_layout_files(built: dict) -> None:
    model, folder = built["hub"]
    names = {p.name for p in folder.iterdir()}
    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(shards) <= names
    assert {"model.safetensors.index.json", "pytorch_model.bin", "config.json"} <= names
    assert {"generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "model.safetensors" not in names
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    keys = _keys(folder)
    assert set(index["weight_map"]) == set(keys)
    assert set(index["weight_map"].values()) == set(shards)
    for shard in shards:
        with safe_open(str(folder / shard), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            assert {k for k, v in index["weight_map"].items() if v == shard} == set(f.keys())
    tensors = _tensors(folder)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())

    assert not any("parametrizations" in k for k in keys)
    weight_g = {k[: -len(".weight_g")] for k in keys if k.endswith(".weight_g")}
    weight_v = {k[: -len(".weight_v")] for k in keys if k.endswith(".weight_v")}
    assert weight_g and weight_g == weight_v
    assert keys["audio_encoder.decoder.layers.0.conv.weight_g"] == (64, 1, 1)
    assert keys["audio_encoder.decoder.layers.0.conv.weight_v"] == (64, 16, 7)
    # ConvTranspose1d: weight is [in, out, k] and weight norm is over dim 0 = in_channels.
    assert keys["audio_encoder.decoder.layers.3.conv.weight_g"] == (64, 1, 1)
    assert keys["audio_encoder.decoder.layers.3.conv.weight_v"] == (64, 32, 16)

    positions = tensors["decoder.model.decoder.embed_positions.weights"]
    assert positions.shape == (2048, 48)
    assert torch.equal(positions, model.decoder.model.decoder.embed_positions.weights)
    shared = tensors["text_encoder.shared.weight"]
    assert torch.equal(tensors["text_encoder.encoder.embed_tokens.weight"], shared)
    current = {
        k.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        )
        for k in _keys(built["current"][1])
    }
    extra = {"text_encoder.encoder.embed_tokens.weight", "decoder.model.decoder.embed_positions.weights"}
    assert set(keys) == current | extra
    config = json.loads((folder / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and "dtype" not in config


def test_hub_weight_norm_reconstruction(built: dict) -> None:
    """w = g * v / ||v|| (norm over every dim but 0) reproduces the model's effective conv weights."""
    model, folder = built["hub"]
    tensors = _tensors(folder)
    count = 0
    for key, g in tensors.items():
        if not key.endswith(".weight_g"):
            continue
        prefix = key[: -len(".weight_g")]
        v = tensors[prefix + ".weight_v"]
        norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
        assert not torch.allclose(g, norm), "g should differ from ||v|| so swapped g/v is caught"
        expected = model.get_submodule(prefix).weight
        torch.testing.assert_close(g * v / norm, expected, rtol=1e-5, atol=1e-6)
        count += 1
    assert count == 2 * 14  # 14 weight-normed (transposed) convs in the SEANet encoder, 14 in the decoder


# ------------------------------------------------------------------------------------------------------------
# transformers loads both layouts back to the same numbers
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["current", "hub"])
def test_load_roundtrip(built: dict, loaded: dict, layout: str) -> None:
    model, folder = built[layout]
    other = loaded[layout]
    reference_state = model.state_dict()
    for key, value in other.state_dict().items():
        assert torch.equal(value, reference_state[key]), key
    assert other.generation_config.guidance_scale == 3.0
    assert other.generation_config.decoder_start_token_id == 2048

    inputs = _text_inputs(folder, PROMPTS)
    codes = torch.randint(0, 2048, (1, 2, 4, 12), generator=torch.Generator().manual_seed(1))
    decoder_ids = torch.randint(0, 2049, (2 * 4, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = model.text_encoder(**inputs).last_hidden_state
        assert torch.equal(other.text_encoder(**inputs).last_hidden_state, hidden)
        audio = model.audio_encoder.decode(codes, [None]).audio_values
        assert torch.equal(other.audio_encoder.decode(codes, [None]).audio_values, audio)
        logits = model(**inputs, decoder_input_ids=decoder_ids).logits
        assert torch.equal(other(**inputs, decoder_input_ids=decoder_ids).logits, logits)
    assert audio.shape == (2, 1, 12 * 640)
    assert logits.shape == (2 * 4, 7, 2048)


@pytest.mark.parametrize("t5_embedding", ["shared", "embed_tokens"])
def test_hub_layout_single_t5_embedding_name(built: dict, tmp_path: Path, t5_embedding: str) -> None:
    """The tied T5 input embedding may be stored under only one of its two names: both load."""
    model, _ = built["hub"]
    folder = save_checkpoint(model, tmp_path / "hub1", layout="hub", shards=1, t5_embedding=t5_embedding)
    assert (folder / "model.safetensors").exists() and not (folder / "model.safetensors.index.json").exists()
    keys = _keys(folder)
    shared, embed_tokens = "text_encoder.shared.weight", "text_encoder.encoder.embed_tokens.weight"
    assert {shared, embed_tokens} & set(keys) == {shared if t5_embedding == "shared" else embed_tokens}
    other, info = MusicgenForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert torch.equal(other.text_encoder.shared.weight, model.text_encoder.shared.weight)
    assert other.text_encoder.encoder.embed_tokens.weight is other.text_encoder.shared.weight


# ------------------------------------------------------------------------------------------------------------
# The weights are at a scale where the tests can see something
# ------------------------------------------------------------------------------------------------------------


def test_different_codes_decode_differently(built: dict) -> None:
    model, _ = built["current"]
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(0, 2048, (1, 1, 4, 10), generator=gen)
    b = a.clone()
    b[0, 0, 0, 5] = (b[0, 0, 0, 5] + 1) % 2048  # one code differs
    c = torch.randint(0, 2048, (1, 1, 4, 10), generator=gen)
    with torch.no_grad():
        wa, wb, wc = (model.audio_encoder.decode(x, [None]).audio_values for x in (a, b, c))
    assert wa.std() > 0.05
    for other in (wb, wc):
        assert (wa - other).abs().max() > 0.1 * wa.abs().max()
    codebook = model.audio_encoder.quantizer.layers[0].codebook.embed
    assert codebook.std() > 0.5


def test_text_changes_logits(built: dict) -> None:
    model, folder = built["current"]
    decoder_ids = torch.randint(0, 2049, (2 * 4, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = model(**_text_inputs(folder, PROMPTS), decoder_input_ids=decoder_ids).logits
        b = model(**_text_inputs(folder, OTHER_PROMPTS), decoder_input_ids=decoder_ids).logits
    relative = ((a - b).norm() / a.norm()).item()
    assert relative > 0.1, relative
    # and the greedy next tokens differ for most positions
    changed = (a.argmax(-1) != b.argmax(-1)).float().mean().item()
    assert changed > 0.25, changed


def test_build_is_deterministic() -> None:
    a, b, c = build_model(seed=0), build_model(seed=0), build_model(seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["decoder.lm_heads.0.weight"], sc["decoder.lm_heads.0.weight"])


def _fingerprint() -> str:
    """sha256 over the tokenizer.json text and every tensor of the seed-0 tiny model."""
    import hashlib

    from helpers.checkpoints import _tokenizer_json

    digest = hashlib.sha256(_tokenizer_json().encode())
    for key, tensor in sorted(build_model(seed=0).state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_fixture_is_identical_across_processes() -> None:
    """Tokenizer training and weight init must not depend on the process (hash seeds, threads)."""
    code = "import test_checkpoints as t; print(t._fingerprint())"
    tests = str(Path(__file__).parent)  # this module and helpers/ import from tests/, as pytest runs them
    env = dict(os.environ, PYTHONHASHSEED="123", TOKENIZERS_PARALLELISM="true",
               PYTHONPATH=os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == _fingerprint()


def test_stereo_config() -> None:
    model = build_model(audio_channels=2)
    assert model.config.decoder.num_codebooks == 8 and model.config.decoder.audio_channels == 2
    assert model.config.audio_encoder.audio_channels == 1
    assert len(model.decoder.model.decoder.embed_tokens) == 8 and len(model.decoder.lm_heads) == 8
    assert model.config.audio_encoder.num_quantizers == 4


# ------------------------------------------------------------------------------------------------------------
# Real-size config
# ------------------------------------------------------------------------------------------------------------


def _pattern(key: str) -> str:
    return re.sub(r"\.\d+\.", ".{i}.", key)


def test_real_small_config_matches_tiny_key_patterns() -> None:
    config = MusicgenConfig(**copy.deepcopy(REAL_SMALL_CONFIG))
    assert config.audio_encoder.num_quantizers == 4 and config.audio_encoder.frame_rate == 50
    assert config.text_encoder.vocab_size == 32128 and config.decoder.hidden_size == 1024
    with torch.device("meta"):
        real = MusicgenForConditionalGeneration(config)
    n_params = sum(p.numel() for p in real.parameters())
    assert 580e6 < n_params < 600e6
    tiny = build_model()
    assert {_pattern(k) for k in real.state_dict()} == {_pattern(k) for k in tiny.state_dict()}


@pytest.mark.skipif(not os.environ.get("MUSICGEN_SLOW_TESTS"), reason="set MUSICGEN_SLOW_TESTS=1 (~6 GB RAM)")
def test_build_real_size(tmp_path: Path) -> None:
    folder = build_real_size(tmp_path / "small", layout="hub")
    keys = _keys(folder)
    assert (folder / "model.safetensors").exists()
    assert keys["text_encoder.shared.weight"] == (32128, 768)
    assert keys["decoder.model.decoder.embed_positions.weights"] == (2048, 1024)
    assert keys["audio_encoder.quantizer.layers.3.codebook.embed"] == (2048, 128)
    assert "text_encoder.encoder.embed_tokens.weight" not in keys
