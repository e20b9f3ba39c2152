"""The MusicGen language model: a pre-norm transformer decoder over K parallel codebook streams.

Shapes: B batch (x2 under classifier-free guidance), K codebooks, T time steps, D width, H heads,
L text tokens. Checkpoint keys live under `decoder.` (MusicgenForCausalLM naming) plus
`enc_to_dec_proj.` for the text projection.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import fused, native
from .config import LMConfig
from .layout import relayout_linears
from .weights import Cat, Checkpoint, Source, embedding, load_module, release_free_memory

PREFIX = "decoder.model.decoder."
HEADS_PREFIX = "decoder.lm_heads."
PROJ_PREFIX = "enc_to_dec_proj."
CHROMA_PROJ_PREFIX = "audio_enc_to_dec_proj."  # melody models: one-hot chroma -> width
SINUSOID_BASE = 10000.0  # transformers' MusicgenSinusoidalPositionalEmbedding / audiocraft


def sinusoid(positions: int, dim: int) -> torch.Tensor:
    """[positions, dim] table: cat(cos, sin), frequencies exp(-ln(base) * i / (half - 1))."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(SINUSOID_BASE) / (half - 1)))
    angle = torch.arange(positions, dtype=torch.float32)[:, None] * freq[None, :]
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)


@dataclass
class KVCache:
    """Preallocated self-attention keys / values for every layer: [layers, B, H, T_max, head_dim].

    With a conditioning prefix (melody models) whose rows have different text lengths, `valid` [B, T_max]
    marks the slots that may be attended (text padding is not) and `shift` [B] turns a slot index into
    that row's position, so a row attends and counts positions as if it were alone in the batch."""

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor | None = None
    shift: torch.Tensor | None = None

    @classmethod
    def empty(cls, cfg: LMConfig, batch: int, length: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (cfg.num_layers, batch, cfg.num_heads, length, cfg.head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))


@dataclass
class Condition:
    """Conditioning computed once per generation. Text-conditioned models: per-layer cross-attention keys /
    values and the text padding bias. Melody models: a prefix [chroma | text] the LM reads before the audio."""

    k: list[torch.Tensor] | None = None  # each [B, H, L, head_dim]
    v: list[torch.Tensor] | None = None
    bias: torch.Tensor | None = None  # [B, 1, 1, L]: 0 where attended, finfo.min on padding
    valid: torch.Tensor | None = None  # [B, L] bool: the same mask, for the C++ cross-attention (native.py)
    prefix: torch.Tensor | None = None  # [B, P, D]
    prefix_valid: torch.Tensor | None = None  # [B, P] bool

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[1]


@dataclass
class Group:
    """One request's rows in a decode step: its own cache slots and conditioning, and the cache slot its next
    token goes to (positions count from there, shifted per row for melody prefixes)."""

    cache: KVCache
    cond: Condition
    pos: int
    rows: int


def self_attn_mask(cache: KVCache, pos: int | torch.Tensor, T: int, device: torch.device) -> torch.Tensor | None:
    """Boolean mask [B or 1, 1, T, pos + T] for queries at slots pos..pos+T-1 (None: attend to all).
    With a tensor `pos` (static shapes, T = 1) the mask spans the whole cache: [B or 1, 1, 1, T_max]."""
    if isinstance(pos, torch.Tensor):
        keys = (torch.arange(cache.k.shape[3], device=device) <= pos)[None, None, None, :]
        return keys if cache.valid is None else keys & cache.valid[:, None, None, :]
    causal = None
    if T > 1:
        causal = torch.arange(pos + T, device=device)[None, :] <= pos + torch.arange(T, device=device)[:, None]
    if cache.valid is None:
        return None if causal is None else causal[None, None]
    keys = cache.valid[:, None, None, : pos + T]
    return keys if causal is None else keys & causal[None, None]


class SelfAttention(native.KernelSwitches, nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.h, self.hd = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.native = True  # the C++ decode attention where it applies (native.py); False: torch's SDPA

    def forward(self, x: torch.Tensor, pos: int | torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        return self.out(self.attend(self.qkv(x), pos, k_cache, v_cache, mask))

    def attend(self, qkv: torch.Tensor, pos: int | torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """qkv [B, T, 3D] of queries at cache slots pos..pos+T-1 -> attention output [B, T, D] (before `out`);
        their keys and values are written into the cache [B, H, T_max, hd]."""
        B, T, _ = qkv.shape
        if T == 1 and isinstance(pos, int) and self.native and native.attention_usable(qkv, k_cache):
            valid = native.slot_valid(mask, B)  # [B, pos + 1]
            return native.decode_attention(qkv, k_cache, v_cache, pos, valid)  # the decode step on a CPU: one call
        q, k, v = qkv.view(B, T, 3, self.h, self.hd).permute(2, 0, 3, 1, 4)  # each [B, H, T, hd]
        if isinstance(pos, torch.Tensor):  # static shapes (compile / CUDA graphs): whole cache, masked
            k_cache.index_copy_(2, pos.view(1), k.to(k_cache.dtype))
            v_cache.index_copy_(2, pos.view(1), v.to(v_cache.dtype))
            keys, values = k_cache, v_cache
        else:  # eager: attend to the filled part only
            k_cache[:, :, pos : pos + T] = k
            v_cache[:, :, pos : pos + T] = v
            keys, values = k_cache[:, :, : pos + T], v_cache[:, :, : pos + T]
        keys, values = keys.to(q.dtype), values.to(q.dtype)  # a bfloat16 cache (see LM.cache_dtype): widened
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return y.transpose(1, 2).reshape(B, T, self.h * self.hd)


class CrossAttention(native.KernelSwitches, nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.h, self.hd = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.native = True  # the C++ decode cross-attention where it applies (native.py); False: torch's SDPA

    def project(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond [B, L, D] -> k, v [B, H, L, hd], computed once per generation."""
        B, L, _ = cond.shape
        k, v = self.kv(cond).view(B, L, 2, self.h, self.hd).permute(2, 0, 3, 1, 4)
        return k.contiguous(), v.contiguous()

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.out(self.attend(self.q(x), k, v, bias))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
               valid: torch.Tensor | None = None) -> torch.Tensor:
        """projected queries [B, T, D], the text's k, v [B, H, L, hd] -> [B, T, D] (before `out`). A decode step on a
        CPU with the text's `valid` mask [B, L] (Condition.valid) runs the C++ kernel."""
        B, T, D = q.shape
        if T == 1 and valid is not None and self.native and native.attention_usable(q, k):
            return native.cross_attention(q, k, v, valid)
        y = F.scaled_dot_product_attention(q.view(B, T, self.h, self.hd).transpose(1, 2), k, v, attn_mask=bias)
        return y.transpose(1, 2).reshape(B, T, D)


class Layer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.self_attn = SelfAttention(cfg)
        if cfg.cross_attention:
            self.cross_attn_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
            self.cross_attn = CrossAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, i: int, pos: int | torch.Tensor, cache: KVCache, mask: torch.Tensor | None,
                cond: Condition) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_norm(x), pos, cache.k[i], cache.v[i], mask)
        if cond.k is not None:
            x = x + self.cross_attn(self.cross_attn_norm(x), cond.k[i], cond.v[i], cond.bias)
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))

    def decode(self, x: torch.Tensor, i: int, groups: Sequence[Group], masks: list[torch.Tensor | None],
               spans: list[tuple[int, int]]) -> torch.Tensor:
        """One decode step of several requests: x [R, 1, D], group g's rows at spans[g]. The linears and norms
        run over every row at once (a step reads the weights once whatever the batch); attention runs per
        group on its own cache slots and text, with the shapes it has when it runs alone."""
        qkv = self.self_attn.qkv(self.self_attn_norm(x))
        y = torch.cat([self.self_attn.attend(qkv[a:b], g.pos, g.cache.k[i], g.cache.v[i], m)
                       for g, m, (a, b) in zip(groups, masks, spans, strict=True)])
        x = x + self.self_attn.out(y)
        if hasattr(self, "cross_attn"):
            q = self.cross_attn.q(self.cross_attn_norm(x))
            y = torch.cat([self.cross_attn.attend(q[a:b], g.cond.k[i], g.cond.v[i], g.cond.bias, g.cond.valid)
                           for g, (a, b) in zip(groups, spans, strict=True)])
            x = x + self.cross_attn.out(y)
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class LM(nn.Module):
    def __init__(self, cfg: LMConfig, text_dim: int, num_chroma: int | None = None):
        super().__init__()
        self.cfg = cfg
        K, D = cfg.num_codebooks, cfg.dim
        # the K embedding tables stacked: row k * (card + 1) + i embeds token i of codebook k
        self.emb = embedding(K * (cfg.card + 1), D)
        self.text_proj = nn.Linear(text_dim, D) if text_dim != D else None
        self.chroma_proj = nn.Linear(num_chroma, D) if num_chroma is not None else None
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(D, eps=1e-5)
        self.heads = nn.Linear(D, K * cfg.card, bias=False)  # the K output heads stacked
        self.register_buffer("pos_table", torch.empty(cfg.max_positions, D), persistent=False)
        self.register_buffer("emb_offsets", torch.empty(K, dtype=torch.long), persistent=False)
        self.kv_dtype: torch.dtype | None = None  # the KV cache's, when not the model's: see cache_dtype
        self.fused = True  # decode steps' layers in one C++ call each where they can (fused.py); False: Layer.decode

    def init_buffers(self, device: torch.device, dtype: torch.dtype) -> None:
        """Non-persistent buffers are not in the checkpoint: compute them after a meta-device build."""
        K = self.cfg.num_codebooks
        self.pos_table = sinusoid(self.cfg.max_positions, self.cfg.dim).to(device, dtype)
        self.emb_offsets = torch.arange(K, device=device) * (self.cfg.card + 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    @property
    def cache_dtype(self) -> torch.dtype:
        """The self-attention KV cache's dtype: the model's, or bfloat16 for int8 / int4 models on a CPU with the C++
        attention (native.py), which reads it at half the bytes (a step reads the whole cache so far; quality in
        README's Speed) and widens it to float32 as it goes."""
        return self.kv_dtype or self.dtype

    def condition(self, text: torch.Tensor, mask: torch.Tensor, guided: bool,
                  chroma: torch.Tensor | None = None) -> Condition:
        """T5 states [B, L, D_text] with mask [B, L] (and one-hot chroma [B, F, 12], F chroma frames, for melody
        models) -> the conditioning of a batch of B, or of 2B rows [cond; uncond] when guided. The unconditional rows
        get zero text (and the null melody, bin 0); on melody models they keep their row's text length, as
        in audiocraft and transformers, where the null text is zeros of the padded length."""
        x = text.to(self.dtype)
        if self.text_proj is not None:
            x = self.text_proj(x)
        x = x * mask[..., None].to(x.dtype)  # padding (and empty prompts) are exactly zero
        if guided:
            x = torch.cat([x, torch.zeros_like(x)])
        if self.chroma_proj is None:
            m = torch.cat([mask, torch.zeros_like(mask)]) if guided else mask
            ks, vs = zip(*(layer.cross_attn.project(x) for layer in self.layers))
            bias = torch.where(m, 0.0, torch.finfo(x.dtype).min).to(x.dtype)[:, None, None, :]
            return Condition(k=list(ks), v=list(vs), bias=bias, valid=m.bool().contiguous())
        assert chroma is not None, "melody models need a chroma condition (the null melody when none is given)"
        if guided:
            null = torch.zeros_like(chroma)
            null[..., 0] = 1.0
            chroma = torch.cat([chroma, null])
            mask = torch.cat([mask, mask])
        c = self.chroma_proj(chroma.to(self.dtype))
        valid = torch.cat([torch.ones(c.shape[:2], dtype=torch.bool, device=c.device), mask], dim=1)
        return Condition(prefix=torch.cat([c, x], dim=1), prefix_valid=valid)

    def prefill(self, cond: Condition, cache: KVCache) -> None:
        """Run the conditioning prefix (if any) through the layers into the cache's first slots, and set up
        per-row validity and positions for the steps after it."""
        if cond.prefix is None:
            return
        B, P, _ = cond.prefix.shape
        valid = cond.prefix_valid
        cache.valid = torch.ones(B, cache.k.shape[3], dtype=torch.bool, device=valid.device)
        cache.valid[:, :P] = valid
        n_valid = valid.sum(1)
        cache.shift = n_valid - P  # audio slot P + s sits at position n_valid + s
        positions = (valid.cumsum(1) - 1).clamp(min=0)  # padding slots: any position, they are never attended
        x = cond.prefix + self.pos_table[positions]
        mask = self_attn_mask(cache, 0, P, x.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, i, 0, cache, mask, cond)

    def forward(self, codes: torch.Tensor, pos: int | torch.Tensor, cache: KVCache, cond: Condition) -> torch.Tensor:
        """codes [B, K, T] at cache slots pos..pos+T-1 -> logits [B, K, T, card] (float32).
        `pos` as a 0-dim tensor (with T = 1) keeps every shape static, for torch.compile / CUDA graphs."""
        B, K, T = codes.shape
        x = self.embed(codes) + self.positions(cache, pos, T)
        mask = self_attn_mask(cache, pos, T, x.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, i, pos, cache, mask, cond)
        logits = self.heads(self.norm(x)).float()  # [B, T, K * card]
        return logits.view(B, T, K, self.cfg.card).transpose(1, 2)

    def decode(self, tokens: torch.Tensor, groups: Sequence[Group]) -> torch.Tensor:
        """One decode step of several requests at once: tokens [R, K] (group after group, each at its own
        position) -> logits [R, K, card] (float32). Every op is row by row or per group, so a row's logits
        do not depend on the other groups (exactly so with row-wise int8 linears, layout.py)."""
        R, K = tokens.shape
        spans = list(itertools.pairwise(itertools.accumulate((g.rows for g in groups), initial=0)))
        assert spans[-1][1] == R, "the groups' rows must add up to the batch"
        pe = torch.cat([self.positions(g.cache, g.pos, 1).expand(g.rows, -1, -1) for g in groups])
        x = self.embed(tokens[:, :, None]) + pe  # [R, 1, D]
        masks = [self_attn_mask(g.cache, g.pos, 1, x.device) for g in groups]
        run = fused.runner(self.layers, groups, masks, spans, x) if self.fused else None  # C++, same bits
        for i, layer in enumerate(self.layers):
            x = run(x, i) if run is not None else layer.decode(x, i, groups, masks, spans)
        return self.heads(self.norm(x)).float().view(R, K, self.cfg.card)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> the sum of the K codebook embeddings [B, T, D]."""
        K = codes.shape[1]
        x = F.embedding(codes + self.emb_offsets.view(1, K, 1), self.emb.weight).sum(1)
        return x * math.sqrt(self.cfg.dim) if self.cfg.scale_embedding else x

    def positions(self, cache: KVCache, pos: int | torch.Tensor, T: int) -> torch.Tensor:
        """Sinusoid embeddings [B or 1, T, D] of cache slots pos..pos+T-1 (per row with a melody prefix)."""
        if cache.shift is None and not isinstance(pos, torch.Tensor):
            return self.pos_table[pos : pos + T][None]
        device = self.pos_table.device
        slots = pos.view(1) if isinstance(pos, torch.Tensor) else torch.arange(pos, pos + T, device=device)
        if cache.shift is None:
            return self.pos_table[slots][None]
        return self.pos_table[cache.shift[:, None] + slots]

    def source_of(self, name: str) -> Source:
        """Our parameter name -> checkpoint key(s). Fused projections are concatenations."""
        K = self.cfg.num_codebooks
        if name == "emb.weight":
            return Cat(tuple(f"{PREFIX}embed_tokens.{k}.weight" for k in range(K)))
        if name == "heads.weight":
            return Cat(tuple(f"{HEADS_PREFIX}{k}.weight" for k in range(K)))
        if name.startswith("text_proj."):
            return PROJ_PREFIX + name.removeprefix("text_proj.")
        if name.startswith("chroma_proj."):
            return CHROMA_PROJ_PREFIX + name.removeprefix("chroma_proj.")
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
    def from_checkpoint(cls, cfg: LMConfig, text_dim: int, num_chroma: int | None, ckpt: Checkpoint,
                        device: torch.device, dtype: torch.dtype, quantize: str | None = None) -> LM:
        """Load layer by layer, giving each its fast weight layout (`layout.relayout_linears`) right away,
        so that loading never holds much more than the final weights plus one float layer. On a CPU the C++
        decode kernels are built (once per machine) or found here, not at the first step (native.py)."""
        if device.type == "cpu":
            native.load()
        with torch.device("meta"):
            model = cls(cfg, text_dim, num_chroma)
        parts = [(f"layers.{i}.", layer) for i, layer in enumerate(model.layers)]
        parts += [(f"{name}.", child) for name, child in model.named_children() if name != "layers"]
        for prefix, part in parts:  # (non-persistent buffers are not in any state dict)
            load_module(part, ckpt, lambda n, p=prefix: model.source_of(p + n), device, dtype)
            relayout_linears(part, device, quantize)
            release_free_memory()
        relayout_linears(model, device, quantize)  # the parts that are linears themselves (the heads)
        if device.type == "cpu" and quantize in ("int8", "int4") and native.load():
            model.kv_dtype = torch.bfloat16
        model.init_buffers(device, dtype)
        return model.eval()


def is_ignored(key: str) -> bool:
    """The stored sinusoid table of older files: we compute it (transformers no longer saves it)."""
    return key == PREFIX + "embed_positions.weights"
