"""PEFT LoRA adapters (musicgen-dreamboothing's targets) merged at load, against peft itself: the merged weights,
the logits and the greedy tokens of transformers + peft; rslora / rank_pattern scales, a melody base, int8 (merged
before quantization) and every refusal."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import PROMPTS, transformers_tokens
from helpers.checkpoints import build_checkpoint
from helpers.fakehub import FakeHub, hub_env
from helpers.melody_checkpoints import build_melody_checkpoint
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from test_hub import run

from musicgen import MusicGen
from musicgen.errors import CheckpointError
from musicgen.layout import dynamic_int8_available, int8_available
from musicgen.lm import KVCache
from musicgen.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MergedCheckpoint, find_adapter
from musicgen.sampling import delay
from musicgen.weights import Checkpoint

FRAMES = 14
K = 4  # codebooks of the tiny mono checkpoints
# musicgen-dreamboothing's LoRA targets (dreambooth_musicgen.py, text encoder frozen)
RECIPE = (["enc_to_dec_proj", "audio_enc_to_dec_proj", "k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"]
          + [f"lm_heads.{k}" for k in range(K)] + [f"embed_tokens.{k}" for k in range(K)])
T5_TARGETS = ["q", "k", "v", "o", "wi", "wo"]  # the recipe without --freeze_text_encoder


def make_adapter(ref, base: Path, folder: Path, targets: list[str], seed: int = 1, **config) -> object:
    """peft-wrap a copy of `ref` (random, non-zero A and B), save the adapter into `folder` pointing at `base`;
    returns the transformers model with the LoRA layers active."""
    model = get_peft_model(copy.deepcopy(ref), LoraConfig(r=4, lora_alpha=8, target_modules=targets, **config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # std 0.1: the deltas change the greedy tokens without swamping the base
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.save_pretrained(folder)
    cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    (folder / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "base_model_name_or_path": str(base)}))
    return model.get_base_model().eval()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    return build_checkpoint(tmp_path_factory.mktemp("lora") / "base", layout="current", seed=0)


@pytest.fixture(scope="module")
def recipe(base, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, MusicGen]:
    """(transformers + peft, adapter folder, our engine loaded from the adapter folder)."""
    ref, folder = base
    adapter = tmp_path_factory.mktemp("lora") / "recipe"
    peft_ref = make_adapter(ref, folder, adapter, RECIPE)
    return peft_ref, adapter, MusicGen.from_pretrained(adapter, device="cpu")


def logits(mg: MusicGen, seq: torch.Tensor) -> torch.Tensor:
    text, mask = mg.encode_text(PROMPTS)
    cross = mg.lm.condition(text, mask, guided=False)
    with torch.inference_mode():
        out = mg.lm(seq, 0, KVCache.empty(mg.cfg.lm, seq.shape[0], seq.shape[2], mg.device, torch.float32), cross)
    return out.reshape(-1, seq.shape[2], out.shape[-1])


def delayed_codes(mg: MusicGen, T: int = 9) -> torch.Tensor:
    codes = torch.randint(0, 2048, (2, mg.num_codebooks, T), generator=torch.Generator().manual_seed(3))
    return delay(codes, mg.cfg.lm.delays, 2048)[:, :, :T]


def merged_state(peft_ref) -> dict[str, torch.Tensor]:
    """peft's own merge (merge_and_unload of a copy): the oracle for every merged weight."""
    model = copy.deepcopy(peft_ref)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}


def check_merged_weights(adapter: Path, peft_ref) -> float:
    """Every targeted tensor of MergedCheckpoint equals peft's merged weight; returns the largest difference."""
    folder, parsed = find_adapter(adapter)
    assert parsed is not None
    ckpt, plain = MergedCheckpoint(folder, parsed), Checkpoint(folder)
    want = merged_state(peft_ref)
    worst = 0.0
    for key in parsed.deltas:
        got = ckpt.tensor(key)
        torch.testing.assert_close(got, want[key], rtol=1e-6, atol=1e-6)
        worst = max(worst, (got - want[key]).abs().max().item())
        assert not torch.equal(got, plain.tensor(key)), key  # the delta is not zero
    return worst


def test_recipe_weights_logits_and_greedy_tokens_match_peft(base, recipe) -> None:
    ref, _ = base
    peft_ref, adapter, mg = recipe
    parsed = find_adapter(adapter)[1]
    # 2 layers x (q k v o of self and cross attention, fc1, fc2), lm_heads, embed_tokens, enc_to_dec_proj
    assert parsed is not None and len(parsed.deltas) == 2 * (8 + 2) + K + K + 1
    check_merged_weights(adapter, peft_ref)
    B, T = 2, 9
    seq = delayed_codes(mg, T)
    ids, mask = mg.tokenizer(PROMPTS)
    with torch.no_grad():
        want = peft_ref(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=seq.reshape(B * K, T)).logits
        plain = ref(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=seq.reshape(B * K, T)).logits
    got = logits(mg, seq)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (want - plain).abs().max() > 1.0  # the adapter matters
    out = mg.generate(PROMPTS, FRAMES / 50, temperature=0, normalize="none")
    with torch.no_grad():
        want_tokens = transformers_tokens(peft_ref, ids, mask, FRAMES)
        base_tokens = transformers_tokens(ref, ids, mask, FRAMES)
    assert torch.equal(out.tokens, want_tokens)
    assert not torch.equal(out.tokens, base_tokens)


def test_rslora_rank_alpha_patterns_and_t5_targets(base, tmp_path: Path) -> None:
    ref, folder = base
    peft_ref = make_adapter(ref, folder, tmp_path, RECIPE + T5_TARGETS, seed=2, use_rslora=True,
                            rank_pattern={"fc1": 2, "layers.1.self_attn.q_proj": 6}, alpha_pattern={"lm_heads.2": 3})
    parsed = find_adapter(tmp_path)[1]
    assert parsed is not None
    r, scale = parsed.config.rank_and_scale("decoder.model.decoder.layers.1.fc1")
    assert (r, scale) == (2, 8 / 2 ** 0.5)
    assert parsed.config.rank_and_scale("decoder.lm_heads.2") == (4, 3 / 2)
    assert parsed.config.rank_and_scale("decoder.model.decoder.layers.0.self_attn.q_proj")[0] == 4
    assert parsed.config.rank_and_scale("decoder.model.decoder.layers.1.self_attn.q_proj")[0] == 6
    assert any(k.startswith("text_encoder.") for k in parsed.deltas)
    check_merged_weights(tmp_path, peft_ref)
    mg = MusicGen.from_pretrained(tmp_path, device="cpu")
    seq = delayed_codes(mg)
    ids, mask = mg.tokenizer(PROMPTS)
    with torch.no_grad():
        want = peft_ref(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=seq.reshape(-1, 9)).logits
    torch.testing.assert_close(logits(mg, seq), want, rtol=1e-4, atol=1e-4)


def test_melody_base(tmp_path: Path) -> None:
    ref, folder = build_melody_checkpoint(tmp_path / "base", layout="current", seed=7)
    peft_ref = make_adapter(ref, folder, tmp_path / "adapter", RECIPE, seed=3)
    parsed = find_adapter(tmp_path / "adapter")[1]
    assert parsed is not None and "audio_enc_to_dec_proj.weight" in parsed.deltas
    check_merged_weights(tmp_path / "adapter", peft_ref)
    mg = MusicGen.from_pretrained(tmp_path / "adapter", device="cpu")
    assert mg.cfg.melody is not None


@pytest.mark.skipif(not (int8_available() or dynamic_int8_available(torch.device("cpu"))), reason="no int8 kernels")
def test_int8_quantizes_the_merged_weights(base, recipe) -> None:
    _, folder = base
    _, adapter, merged = recipe
    q = MusicGen.from_pretrained(adapter, device="cpu", quantize="int8")
    plain = MusicGen.from_pretrained(folder, device="cpu")
    seq = delayed_codes(merged)
    to_merged = (logits(q, seq) - logits(merged, seq)).abs().mean()
    to_base = (logits(q, seq) - logits(plain, seq)).abs().mean()
    assert to_merged < 0.2 * to_base, (to_merged, to_base)


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    (folder / ADAPTER_CONFIG).write_text(json.dumps({**cfg, **changes}))


def edit_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / ADAPTER_WEIGHTS)
    save_file(edit(tensors), folder / ADAPTER_WEIGHTS)


def rename(tensors: dict, old: str, new: str) -> dict:
    return {k.replace(old, new): v for k, v in tensors.items()}


LAYER0_Q = "base_model.model.decoder.model.decoder.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: edit_config(f, use_dora=True), "use_dora"),
    (lambda f: edit_config(f, modules_to_save=["lm_heads.0"]), "modules_to_save"),
    (lambda f: edit_config(f, bias="lora_only"), "bias='lora_only'"),
    (lambda f: edit_config(f, fan_in_fan_out=True), "fan_in_fan_out"),
    (lambda f: edit_config(f, peft_type="IA3"), "IA3"),
    (lambda f: edit_config(f, init_lora_weights="pissa"), "pissa"),
    (lambda f: edit_config(f, base_model_name_or_path=None), "base_model_name_or_path"),
    (lambda f: edit_weights(f, lambda t: rename(t, "layers.0.fc1", "layers.0.final_layer_norm")),
     "layers.0.final_layer_norm"),
    (lambda f: edit_weights(f, lambda t: rename(t, "enc_to_dec_proj", "audio_encoder.decoder.layers.0.conv")),
     "audio_encoder.decoder.layers.0.conv"),
    (lambda f: edit_weights(f, lambda t: rename(t, "layers.0.fc1", "layers.5.fc1")), "layers.5.fc1.weight"),
    (lambda f: edit_weights(f, lambda t: {**t, f"{LAYER0_Q}.lora_B.weight": torch.zeros(49, 4)}), "(49, 48)"),
    (lambda f: edit_weights(f, lambda t: {k: v for k, v in t.items() if k != f"{LAYER0_Q}.lora_A.weight"}),
     "q_proj has lora_B but not both"),
    (lambda f: edit_weights(f, lambda t: {**t, f"{LAYER0_Q}.lora_magnitude_vector": torch.ones(48)}),
     "lora_magnitude_vector"),
    (lambda f: ((f / ADAPTER_WEIGHTS).rename(f / "adapter_model.bin")), "adapter_model.bin"),
])
def test_refusals_name_the_problem(base, recipe, tmp_path: Path, change, message: str) -> None:
    _, adapter, _ = recipe
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        (tmp_path / name).write_bytes((adapter / name).read_bytes())
    change(tmp_path)
    with pytest.raises(CheckpointError, match=None) as e:
        MusicGen.from_pretrained(tmp_path, device="cpu")
    assert message in str(e.value), str(e.value)


def test_unknown_target_module_from_peft_is_refused(base, tmp_path: Path) -> None:
    """An adapter peft itself made for a module we cannot merge (T5's relative attention bias embedding)."""
    ref, folder = base
    make_adapter(ref, folder, tmp_path, ["q_proj", "relative_attention_bias"])
    with pytest.raises(CheckpointError, match="relative_attention_bias"):
        MusicGen.from_pretrained(tmp_path, device="cpu")


def test_plain_checkpoint_is_not_an_adapter(base) -> None:
    _, folder = base
    assert find_adapter(folder) == (folder, None)


def test_adapter_and_its_base_from_the_hub(base, recipe, tmp_path: Path) -> None:
    """An adapter repo naming a Hub base: both come through the HF cache; the adapter's pickle is never fetched."""
    _, folder = base
    _, adapter, mg = recipe
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ADAPTER_WEIGHTS).write_bytes((adapter / ADAPTER_WEIGHTS).read_bytes())
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    (repo / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "base_model_name_or_path": "facebook/musicgen-small"}))
    torch.save({}, repo / "adapter_model.bin")  # decoy
    with FakeHub({"someone/musicgen-lora": repo, "facebook/musicgen-small": folder}) as hub:
        got = run("someone/musicgen-lora", hub_env(hub.endpoint, tmp_path / "home"))
        fetched = set(hub.requested_files("someone/musicgen-lora"))
    assert got == {"tokens": mg.generate(PROMPTS, 0.2, temperature=0).tokens.tolist()}
    assert fetched == {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
