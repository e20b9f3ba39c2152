"""The MusicGen language model: a pre-norm transformer decoder over K parallel codebook streams.

Shapes: B batch (x2 under classifier-free guidance), K codebooks, T time steps, D width, H heads,
L text tokens. Checkpoint keys live under `decoder.` (MusicgenForCausalLM naming) plus
`enc_to_dec_proj.` for the text projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LMConfig
from .weights import Cat, Checkpoint, Source, load_module

PREFIX = "decoder.model.decoder."
HEADS_PREFIX = "decoder.lm_heads."
PROJ_PREFIX = "enc_to_dec_proj."
SINUSOID_BASE = 10000.0  # transformers' MusicgenSinusoidalPositionalEmbedding / audiocraft


def sinusoid(positions: int, dim: int) -> torch.Tensor:
    """[positions, dim] table: cat(cos, sin), frequencies exp(-ln(base) * i / (half - 1))."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(SINUSOID_BASE) / (half - 1)))
    angle = torch.arange(positions, dtype=torch.float32)[:, None] * freq[None, :]
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)


@dataclass
class KVCache:
    """Preallocated self-attention keys / values for every layer: [layers, B, H, T_max, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, cfg: LMConfig, batch: int, length: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (cfg.num_layers, batch, cfg.num_heads, length, cfg.head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))


@dataclass
class CrossKV:
    """Text conditioning projected once per generation: per-layer keys / values and the padding bias."""

    k: list[torch.Tensor]  # each [B, H, L, head_dim]
    v: list[torch.Tensor]
    bias: torch.Tensor  # [B, 1, 1, L]: 0 where attended, finfo.min on padding


class SelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.h, self.hd = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, pos: int, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, self.hd).permute(2, 0, 3, 1, 4)  # each [B, H, T, hd]
        k_cache[:, :, pos : pos + T] = k
        v_cache[:, :, pos : pos + T] = v
        k, v = k_cache[:, :, : pos + T], v_cache[:, :, : pos + T]
        if T == 1:  # one new query sees everything cached so far
            y = F.scaled_dot_product_attention(q, k, v)
        elif pos == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a chunk after a cached prefix: query i sits at absolute position pos + i
            mask = torch.arange(pos + T, device=x.device)[None, :] <= pos + torch.arange(T, device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class CrossAttention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.h, self.hd = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def project(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond [B, L, D] -> k, v [B, H, L, hd], computed once per generation."""
        B, L, _ = cond.shape
        k, v = self.kv(cond).view(B, L, 2, self.h, self.hd).permute(2, 0, 3, 1, 4)
        return k.contiguous(), v.contiguous()

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.h, self.hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class Layer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.self_attn = SelfAttention(cfg)
        self.cross_attn_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.cross_attn = CrossAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, pos: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                ck: torch.Tensor, cv: torch.Tensor, cbias: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_norm(x), pos, k_cache, v_cache)
        x = x + self.cross_attn(self.cross_attn_norm(x), ck, cv, cbias)
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class LM(nn.Module):
    def __init__(self, cfg: LMConfig, text_dim: int):
        super().__init__()
        self.cfg = cfg
        K, D = cfg.num_codebooks, cfg.dim
        # the K embedding tables stacked: row k * (card + 1) + i embeds token i of codebook k
        self.emb = nn.Embedding(K * (cfg.card + 1), D)
        self.text_proj = nn.Linear(text_dim, D) if text_dim != D else None
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(D, eps=1e-5)
        self.heads = nn.Linear(D, K * cfg.card, bias=False)  # the K output heads stacked
        self.register_buffer("pos_table", torch.empty(cfg.max_positions, D), persistent=False)
        self.register_buffer("emb_offsets", torch.empty(K, dtype=torch.long), persistent=False)

    def init_buffers(self, device: torch.device, dtype: torch.dtype) -> None:
        """Non-persistent buffers are not in the checkpoint: compute them after a meta-device build."""
        K = self.cfg.num_codebooks
        self.pos_table = sinusoid(self.cfg.max_positions, self.cfg.dim).to(device, dtype)
        self.emb_offsets = torch.arange(K, device=device) * (self.cfg.card + 1)

    def cross_kv(self, text: torch.Tensor, mask: torch.Tensor) -> CrossKV:
        """text [B, L, D_text] T5 states, mask [B, L] bool -> per-layer cross-attention K / V."""
        x = text.to(self.norm.weight.dtype)
        if self.text_proj is not None:
            x = self.text_proj(x)
        x = x * mask[..., None].to(x.dtype)  # padding (and the null condition) are exactly zero
        ks, vs = zip(*(layer.cross_attn.project(x) for layer in self.layers))
        bias = torch.where(mask, 0.0, torch.finfo(x.dtype).min).to(x.dtype)[:, None, None, :]
        return CrossKV(list(ks), list(vs), bias)

    def forward(self, codes: torch.Tensor, pos: int, cache: KVCache, cross: CrossKV) -> torch.Tensor:
        """codes [B, K, T] at positions pos..pos+T-1 -> logits [B, K, T, card] (float32)."""
        B, K, T = codes.shape
        x = F.embedding(codes + self.emb_offsets.view(1, K, 1), self.emb.weight).sum(1)  # [B, T, D]
        if self.cfg.scale_embedding:
            x = x * math.sqrt(self.cfg.dim)
        x = x + self.pos_table[pos : pos + T]
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, cache.k[i], cache.v[i], cross.k[i], cross.v[i], cross.bias)
        logits = self.heads(self.norm(x)).float()  # [B, T, K * card]
        return logits.view(B, T, K, self.cfg.card).transpose(1, 2)

    def source_of(self, name: str) -> Source:
        """Our parameter name -> checkpoint key(s). Fused projections are concatenations."""
        K = self.cfg.num_codebooks
        if name == "emb.weight":
            return Cat(tuple(f"{PREFIX}embed_tokens.{k}.weight" for k in range(K)))
        if name == "heads.weight":
            return Cat(tuple(f"{HEADS_PREFIX}{k}.weight" for k in range(K)))
        if name.startswith("text_proj."):
            return PROJ_PREFIX + name.removeprefix("text_proj.")
        if name.startswith("norm."):
            return PREFIX + "layer_norm." + name.removeprefix("norm.")
        _, i, part, *rest = name.split(".")
        b = f"{PREFIX}layers.{i}."
        leaf = ".".join(rest)
        sources: dict[str, Source] = {
            "self_attn_norm": b + "self_attn_layer_norm." + leaf,
            "cross_attn_norm": b + "encoder_attn_layer_norm." + leaf,
            "ffn_norm": b + "final_layer_norm." + leaf,
            "fc1": b + "fc1.weight",
            "fc2": b + "fc2.weight",
        }
        if part in sources:
            return sources[part]
        attn = {"self_attn": "self_attn.", "cross_attn": "encoder_attn."}[part] + "{}_proj.weight"
        sub = rest[0]
        if sub == "qkv":
            return Cat(tuple(b + attn.format(n) for n in "qkv"))
        if sub == "kv":
            return Cat(tuple(b + attn.format(n) for n in "kv"))
        return b + attn.format(sub)

    @classmethod
    def from_checkpoint(cls, cfg: LMConfig, text_dim: int, ckpt: Checkpoint, device: torch.device,
                        dtype: torch.dtype) -> LM:
        with torch.device("meta"):
            model = cls(cfg, text_dim)
        load_module(model, ckpt, model.source_of, device, dtype)  # non-persistent buffers are not listed
        model.init_buffers(device, dtype)
        return model.eval()


def is_ignored(key: str) -> bool:
    """The stored sinusoid table of older files: we compute it (transformers no longer saves it)."""
    return key == PREFIX + "embed_positions.weights"
