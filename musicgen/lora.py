"""PEFT LoRA adapters for transformers-layout checkpoints, merged into the base weights as they are read.

A fine-tune published with the musicgen-dreamboothing recipe is a folder / Hub repo holding `adapter_config.json`
(peft's LoraConfig, naming the base model in `base_model_name_or_path`) and `adapter_model.safetensors`, whose keys
are `base_model.model.<module>.lora_A.weight` [r, in] / `lora_B.weight` [out, r] for linears and
`<module>.lora_embedding_A` [r, num_embeddings] / `lora_embedding_B` [dim, r] for embeddings, `<module>` being
the module's name in MusicgenForConditionalGeneration (or its Melody twin), i.e. its checkpoint key less `.weight`.

`MergedCheckpoint` reads the base checkpoint and hands out W + scale * B @ A (linear, [out, in]) or
W + scale * (B @ A).T (embedding, [num_embeddings, dim]: peft's Embedding.get_delta_weight), computed in float32
and cast back to the stored dtype, so every later stage (re-layout, int8 quantization) sees the merged weight.
scale = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora, per module through rank_pattern / alpha_pattern.
Everything that is not a plain LoRA delta on a weight we load is refused, before any model is built.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import CheckpointError
from .hub import resolve
from .weights import DTYPES, Checkpoint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."  # peft's PeftModel -> LoraModel -> the transformers model

# The modules we merge, by their peft name (= checkpoint key less ".weight"). Linear weights are [out, in],
# embeddings [num_embeddings, dim]; biases (enc_to_dec_proj's) are left alone, as LoRA leaves them.
LINEAR, EMBEDDING = "linear", "embedding"
TARGETS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"decoder\.model\.decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q|k|v|out)_proj"), LINEAR),
    (re.compile(r"decoder\.model\.decoder\.layers\.\d+\.fc[12]"), LINEAR),  # [ffn, D], [D, ffn]
    (re.compile(r"decoder\.lm_heads\.\d+"), LINEAR),  # [card, D]
    (re.compile(r"enc_to_dec_proj"), LINEAR),  # [D, d_text]
    (re.compile(r"audio_enc_to_dec_proj"), LINEAR),  # melody: [D, num_chroma]
    (re.compile(r"decoder\.model\.decoder\.embed_tokens\.\d+"), EMBEDDING),  # [card + 1, D]
    (re.compile(r"text_encoder\.encoder\.block\.\d+\.layer\.0\.SelfAttention\.[qkvo]"), LINEAR),  # recipe with
    (re.compile(r"text_encoder\.encoder\.block\.\d+\.layer\.1\.DenseReluDense\.w[io]"), LINEAR),  # T5 unfrozen
)
# kind -> (suffix of A, suffix of B) in the adapter file
SUFFIXES = {LINEAR: ("lora_A.weight", "lora_B.weight"), EMBEDDING: ("lora_embedding_A", "lora_embedding_B")}
# LoraConfig fields that change what the adapter computes beyond W + scale * B @ A: must be empty / false.
UNSUPPORTED = ("use_dora", "modules_to_save", "fan_in_fan_out", "lora_bias", "trainable_token_indices",
               "target_parameters", "layer_replication", "use_qalora", "alora_invocation_tokens", "arrow_config",
               "use_bdlora", "kasa_config", "velora_config", "monteclora_config")
# init_lora_weights values whose adapters apply to a modified base (peft converts them on save when asked to)
MODIFIED_BASE_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def peft_to_checkpoint_key(module: str) -> tuple[str, str]:
    """peft module name (adapter key less prefix and suffix) -> (base checkpoint key, LINEAR | EMBEDDING)."""
    kinds = [kind for pattern, kind in TARGETS if pattern.fullmatch(module)]
    if not kinds:
        raise CheckpointError(f"LoRA adapter targets {module!r}, which this engine cannot merge (supported: the "
                              "LM's attention projections, fc1/fc2, lm_heads, embed_tokens, (audio_)enc_to_dec_proj "
                              "and T5's q/k/v/o/wi/wo)")
    assert len(kinds) == 1, f"{module} matches several LoRA targets"
    return module + ".weight", kinds[0]


@dataclass(frozen=True)
class AdapterConfig:
    """What we use of peft's LoraConfig (adapter_config.json)."""

    base: str  # base_model_name_or_path: Hub id or local folder
    revision: str | None
    r: int
    alpha: float
    rslora: bool
    rank_pattern: tuple[tuple[str, int], ...] = ()  # (regex, r) in file order, as peft matches them
    alpha_pattern: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_file(cls, path: Path) -> AdapterConfig:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
            assert isinstance(raw, dict)
        except (OSError, ValueError, AssertionError) as e:
            raise CheckpointError(f"{path} is not a valid adapter config: {e}") from e
        if raw.get("peft_type", "LORA") != "LORA":
            raise CheckpointError(f"{path}: peft_type {raw['peft_type']!r} is not supported (only LORA adapters)")
        for name in UNSUPPORTED:
            if raw.get(name):
                raise CheckpointError(f"{path}: {name}={raw[name]!r} is not supported (only plain LoRA deltas can be "
                                      "merged; merge the adapter with peft's merge_and_unload and save the model)")
        if raw.get("bias", "none") != "none":
            raise CheckpointError(f"{path}: bias={raw['bias']!r} is not supported (trained biases; only bias='none')")
        init = raw.get("init_lora_weights")
        if isinstance(init, str) and init.lower().startswith(MODIFIED_BASE_INITS):
            raise CheckpointError(f"{path}: init_lora_weights={init!r} adapters apply to a modified base model")
        base = raw.get("base_model_name_or_path")
        if not base:
            raise CheckpointError(f"{path} names no base model (base_model_name_or_path)")
        try:
            return cls(base=str(base), revision=raw.get("revision"), r=int(raw["r"]), alpha=float(raw["lora_alpha"]),
                       rslora=bool(raw.get("use_rslora", False)),
                       rank_pattern=tuple((str(k), int(v)) for k, v in (raw.get("rank_pattern") or {}).items()),
                       alpha_pattern=tuple((str(k), float(v)) for k, v in (raw.get("alpha_pattern") or {}).items()))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad LoRA config field: {e!r}") from e

    def rank_and_scale(self, module: str) -> tuple[int, float]:
        """peft's per-module rank and scaling: the first pattern matching the module name's tail wins."""

        def pick(patterns: tuple[tuple[str, Any], ...], default: Any) -> Any:
            return next((v for k, v in patterns if re.match(rf"(.*\.)?({k})$", module)), default)

        r, alpha = pick(self.rank_pattern, self.r), pick(self.alpha_pattern, self.alpha)
        return r, alpha / (math.sqrt(r) if self.rslora else r)


@dataclass(frozen=True)
class Delta:
    """One module's low-rank update: linear A [r, in], B [out, r]; embedding A [r, num], B [dim, r]."""

    kind: str
    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def shape(self) -> tuple[int, ...]:  # the base weight's
        out = (self.B.shape[0], self.A.shape[1])
        return out if self.kind == LINEAR else out[::-1]

    def weight(self) -> torch.Tensor:
        """The float32 delta to add to the base weight (its shape)."""
        d = (self.B.float() @ self.A.float()) * self.scale  # [out, in] / [dim, num]
        return d if self.kind == LINEAR else d.T


@dataclass(frozen=True)
class Adapter:
    folder: Path
    config: AdapterConfig
    deltas: dict[str, Delta]  # base checkpoint key -> its update


def read_adapter(folder: Path) -> Adapter:
    """Parse and check an adapter folder (config and tensors); nothing of the base is opened yet."""
    config = AdapterConfig.from_file(folder / ADAPTER_CONFIG)
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        pickle = " (adapter_model.bin, a pickle, is never loaded: save the adapter with safe_serialization=True)"
        raise CheckpointError(f"{folder} has no {ADAPTER_WEIGHTS}" + (pickle if (folder / ADAPTER_BIN).is_file()
                                                                      else ""))
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    parts: dict[str, dict[str, torch.Tensor]] = {}  # module -> {"A": ..., "B": ...}
    for key, t in tensors.items():
        suffix = next((s for pair in SUFFIXES.values() for s in pair if key.endswith("." + s)), None)
        if not key.startswith(PEFT_PREFIX) or suffix is None:
            raise CheckpointError(f"{path}: tensor {key!r} is not a LoRA A/B matrix this engine can merge")
        module = key[len(PEFT_PREFIX) : -len(suffix) - 1]
        _, kind = peft_to_checkpoint_key(module)
        if suffix not in SUFFIXES[kind]:
            want = " / ".join(SUFFIXES[kind])
            raise CheckpointError(f"{path}: tensor {key!r}: {module} is an {kind}, expected {want}")
        parts.setdefault(module, {})["AB"[SUFFIXES[kind].index(suffix)]] = t
    deltas: dict[str, Delta] = {}
    for module, ab in sorted(parts.items()):
        base_key, kind = peft_to_checkpoint_key(module)
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{path}: {module} has lora_{''.join(ab)} but not both A and B")
        r, scale = config.rank_and_scale(module)
        A, B = ab["A"], ab["B"]
        if not (A.is_floating_point() and B.is_floating_point() and A.dim() == B.dim() == 2
                and A.shape[0] == B.shape[1] == r):
            raise CheckpointError(f"{path}: {module}'s LoRA matrices have shapes {tuple(A.shape)} (A) and "
                                  f"{tuple(B.shape)} (B), expected [{r}, *] and [*, {r}] floating point (rank {r})")
        deltas[base_key] = Delta(kind, A, B, scale)
    if not deltas:
        raise CheckpointError(f"{path} holds no LoRA weights")
    return Adapter(folder, config, deltas)


def find_adapter(folder: Path) -> tuple[Path, Adapter | None]:
    """`folder` (resolved) -> (the folder holding the model's weights and configs, the adapter if `folder` is a
    PEFT LoRA adapter: then its base model is resolved, Hub id or local folder)."""
    if not (folder / ADAPTER_CONFIG).is_file():
        return folder, None
    adapter = read_adapter(folder)
    base = resolve(adapter.config.base, adapter.config.revision)
    if (base / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"the base model of the adapter in {folder}, {adapter.config.base}, is an adapter itself")
    return base, adapter


class MergedCheckpoint(Checkpoint):
    """The base checkpoint with the adapter's deltas added to the weights they target, on read."""

    def __init__(self, folder: str | Path, adapter: Adapter) -> None:
        super().__init__(folder)
        self.adapter = adapter
        for key, delta in adapter.deltas.items():
            if key not in self:
                raise CheckpointError(f"LoRA adapter {adapter.folder} targets {key!r}, which the base checkpoint in "
                                      f"{self.folder} does not hold")
            dtype, shape = self.spec(key)
            if shape != delta.shape or not DTYPES[dtype].is_floating_point:
                raise CheckpointError(f"LoRA adapter {adapter.folder}: the update of {key!r} has shape {delta.shape}, "
                                      f"but the base tensor is {dtype} {shape} (an adapter for another model?)")

    def tensor(self, key: str) -> torch.Tensor:
        t = super().tensor(key)
        delta = self.adapter.deltas.get(key)
        return t if delta is None else (t.float() + delta.weight()).to(t.dtype)

    def check_all_used(self, ignored: Callable[[str], bool]) -> None:
        super().check_all_used(ignored)
        unread = sorted(set(self.adapter.deltas) - self.used)
        assert not unread, f"LoRA deltas never merged: {unread}"  # every TARGETS weight is one the engine loads


def open_checkpoint(folder: Path, adapter: Adapter | None) -> Checkpoint:
    """`Checkpoint(folder)`, with `adapter` merged into it when there is one."""
    return Checkpoint(folder) if adapter is None else MergedCheckpoint(folder, adapter)

