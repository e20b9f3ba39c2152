"""Text conditioning: the T5 encoder and its tokenizer (tokenizer.json through `tokenizers`).

Checkpoint keys live under `text_encoder.` in T5EncoderModel's naming. A checkpoint without tokenizer.json
uses the tokenizer of the text encoder its config.json names (`text_encoder._name_or_path`, "t5-base" in
the official repos), fetched from the Hub into the HF cache.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from . import hub
from .config import T5Config
from .errors import CheckpointError, DownloadError
from .weights import Cat, Checkpoint, First, Source, embedding, load_module

MAX_TOKENS = 512  # t5-base's model_max_length (tokenizer_config.json); longer prompts are truncated
PREFIX = "text_encoder."
TOKENIZER_FILE = "tokenizer.json"


def tokenizer_folder(folder: Path) -> Path:
    """`folder` when it holds tokenizer.json, else the folder (local, or in the HF cache) holding the tokenizer
    of the text encoder its config.json names."""
    if (folder / TOKENIZER_FILE).is_file():
        return folder
    name = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        name = json.loads((folder / "config.json").read_text())["text_encoder"]["_name_or_path"]
    if not isinstance(name, str) or not name.strip():
        raise CheckpointError(f"{folder} has no {TOKENIZER_FILE} and its config.json does not name its text encoder "
                              f"(text_encoder._name_or_path): copy the T5 tokenizer.json (t5-base's) into {folder}")
    if (Path(name).expanduser() / TOKENIZER_FILE).is_file():
        return Path(name).expanduser()
    try:
        path = hub.download_file(name, TOKENIZER_FILE)
        with contextlib.suppress(DownloadError):  # optional: the pad token and length limit have defaults
            hub.download_file(name, "tokenizer_config.json")
    except DownloadError as e:
        in_cache = folder.parent.name == "snapshots"  # an HF cache snapshot: not a folder to edit by hand
        hint = "" if in_cache else f". Alternatively copy {name}'s {TOKENIZER_FILE} into {folder}"
        raise DownloadError(f"{folder} has no {TOKENIZER_FILE}, so the tokenizer of its text encoder {name!r} is "
                            f"needed: {e}{hint}") from e
    return path.parent


class TextTokenizer:
    """Batch tokenization with padding and the 512-token cap."""

    def __init__(self, path: str | Path, max_tokens: int = MAX_TOKENS) -> None:
        path = tokenizer_folder(Path(path))
        try:
            self.tok = Tokenizer.from_file(str(path / TOKENIZER_FILE))
        except Exception as e:
            raise CheckpointError(f"cannot load the tokenizer {path / TOKENIZER_FILE}: {e}") from e
        pad_token = "<pad>"
        cfg_path = path / "tokenizer_config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            pad = cfg.get("pad_token")
            pad_token = pad.get("content", pad_token) if isinstance(pad, dict) else (pad or pad_token)
            max_tokens = min(max_tokens, int(cfg.get("model_max_length", max_tokens)))
        pad_id = self.tok.token_to_id(pad_token)
        self.pad_id = 0 if pad_id is None else pad_id
        self.max_tokens = max_tokens
        self.tok.no_truncation()
        self.tok.no_padding()

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids [B, L] long, mask [B, L] bool. An empty prompt gets an all-False mask (unconditional).
        Whitespace is collapsed first, as the T5 tokenizer's WhitespaceSplit pre-tokenizer does."""
        prompts = [" ".join(p.split()) for p in prompts]
        encs = self.tok.encode_batch(prompts)
        ids_list: list[list[int]] = []
        for prompt, enc in zip(prompts, encs):
            ids = enc.ids
            if len(ids) > self.max_tokens:
                warnings.warn(f"prompt is {len(ids)} tokens long; keeping the first {self.max_tokens} "
                              f"(the model's limit): {prompt[:60]!r}...", stacklevel=3)
                ids = ids[: self.max_tokens - 1] + ids[-1:]  # keep the closing </s>
            ids_list.append(ids)
        L = max(len(x) for x in ids_list)
        ids = torch.full((len(prompts), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), L), dtype=torch.bool)
        for i, (prompt, x) in enumerate(zip(prompts, ids_list)):
            ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : len(x)] = prompt != ""  # audiocraft: an empty description is the null condition
        return ids, mask


def relative_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int,
                     device: torch.device) -> torch.Tensor:
    """T5's bidirectional relative-position buckets -> [q_len, k_len] long."""
    rel = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = torch.clamp(large, max=half - 1)
    return buckets + torch.where(rel < exact, rel, large)


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(self.weight.dtype)


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.h, self.d_kv = cfg.num_heads, cfg.d_kv
        self.attn_norm = RMSNorm(cfg.d_model, cfg.eps)
        self.qkv = nn.Linear(cfg.d_model, 3 * inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.eps)
        self.wi = nn.Linear(cfg.d_model, (2 if cfg.gated else 1) * cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.gated = cfg.gated

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, L, 3, self.h, self.d_kv).permute(2, 0, 3, 1, 4)
        # T5 has no 1/sqrt(d) scaling (folded into its init); bias = position bias + padding mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        x = x + self.o(y.transpose(1, 2).reshape(B, L, -1))
        h = self.wi(self.ff_norm(x))
        if self.gated:
            a, b = h.chunk(2, dim=-1)
            h = F.gelu(a, approximate="tanh") * b
        else:
            h = F.relu(h)
        return x + self.wo(h)


class T5Encoder(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = embedding(cfg.vocab_size, cfg.d_model)
        self.rel_bias = embedding(cfg.num_buckets, cfg.num_heads)  # block 0's, shared by all blocks
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids [B, L], mask [B, L] bool -> hidden states [B, L, d_model]."""
        B, L = ids.shape
        x = self.embed(ids)
        buckets = relative_buckets(L, L, self.cfg.num_buckets, self.cfg.max_distance, ids.device)
        bias = self.rel_bias(buckets).permute(2, 0, 1)[None]  # [1, H, L, L]
        neg = torch.finfo(x.dtype).min
        bias = bias + torch.where(mask[:, None, None, :], 0.0, neg).to(x.dtype)  # [B, H, L, L]
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)

    def source_of(self, name: str) -> Source:
        """Our parameter name -> checkpoint key(s) (T5EncoderModel naming)."""
        p = PREFIX
        if name == "embed.weight":  # tied: some files keep only one of the two names
            return First((p + "shared.weight", p + "encoder.embed_tokens.weight"))
        if name == "rel_bias.weight":
            return p + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        if name == "norm.weight":
            return p + "encoder.final_layer_norm.weight"
        _, i, part, _ = name.split(".")
        b = f"{p}encoder.block.{i}."
        ff = b + "layer.1.DenseReluDense."
        sources: dict[str, Source] = {
            "attn_norm": b + "layer.0.layer_norm.weight",
            "qkv": Cat(tuple(b + f"layer.0.SelfAttention.{n}.weight" for n in "qkv")),
            "o": b + "layer.0.SelfAttention.o.weight",
            "ff_norm": b + "layer.1.layer_norm.weight",
            "wi": Cat((ff + "wi_0.weight", ff + "wi_1.weight")) if self.cfg.gated else ff + "wi.weight",
            "wo": ff + "wo.weight",
        }
        return sources[part]

    @classmethod
    def from_checkpoint(cls, cfg: T5Config, ckpt: Checkpoint, device: torch.device) -> T5Encoder:
        with torch.device("meta"):
            model = cls(cfg)
        load_module(model, ckpt, model.source_of, device, torch.float32)
        return model.eval()


def is_ignored(key: str) -> bool:
    """T5 keys we do not need: the input embedding tied to `shared`, when a file stores both names (when it
    stores only `encoder.embed_tokens.weight`, that one is read)."""
    return key == PREFIX + "encoder.embed_tokens.weight"
