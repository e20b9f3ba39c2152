"""The multi-band diffusion (MBD) denoiser: audiocraft's 1-D `DiffusionUnet`, written from its description.

One network per frequency band predicts the noise (epsilon) in a noisy waveform, given the diffusion step
and the EnCodec latent. Module and parameter names reproduce audiocraft's state-dict keys exactly
(`encoders.0.conv.weight`, `transformer.layers.3.self_attn.mha.in_proj_weight`, ...), so the official
weights load with the identity key mapping.

Every hyper-parameter comes from a band's checkpoint config (`cfg.diffusion_unet`, `cfg.channels`,
`cfg.schedule.num_steps`); missing keys take the defaults of audiocraft's constructors. The bottleneck
transformer's shape (8 heads, 6 layers, feed-forward 2048, post-norm, ReLU, no biases) is fixed in
audiocraft's code rather than configurable, and is fixed here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .weights import embedding

TRANSFORMER_HEADS = 8
TRANSFORMER_LAYERS = 6
TRANSFORMER_FFN = 2048
RES_KERNEL = 3  # audiocraft's ResBlock kernel: the layers do not pass `kernel` on to their residual blocks


@dataclass(frozen=True)
class UNetConfig:
    """One band's network shape. Field defaults are those of audiocraft's `DiffusionUnet` / `EncoderLayer`."""

    channels: int = 1  # audio channels (cfg.channels)
    num_steps: int = 1000  # length of the step embedding tables (cfg.schedule.num_steps)
    hidden: int = 24
    depth: int = 3
    growth: float = 2.0
    max_channels: int = 10_000
    emb_all_layers: bool = False
    cross_attention: bool = False
    bilstm: bool = False
    transformer: bool = False
    codec_dim: int | None = None
    kernel: int = 4
    stride: int = 2
    norm_groups: int = 4
    res_blocks: int = 1
    dropout: float = 0.0  # training only

    @classmethod
    def from_band_cfg(cls, cfg: Mapping, where: str = "band") -> UNetConfig:
        """Build from a band's plain config dict (keys `channels`, `schedule.num_steps`, `diffusion_unet.*`)."""
        unet = dict(cfg.get("diffusion_unet") or {})
        if unet.pop("activation", None) not in (None, "ReLU", "relu"):
            raise CheckpointError(f"{where}: only the ReLU activation of audiocraft's DiffusionUnet is supported")
        values: dict[str, object] = {"channels": cfg.get("channels", 1),
                                     "num_steps": (cfg.get("schedule") or {}).get("num_steps", 1000)}
        known = {f.name: f for f in fields(cls)}
        for key, value in unet.items():
            if key not in known or key in ("channels", "num_steps"):
                raise CheckpointError(f"{where}: unknown diffusion_unet option {key!r} (audiocraft's DiffusionUnet "
                                      "would not accept it either): not a supported MBD checkpoint")
            values[key] = value
        for key, value in values.items():
            want = known[key].type
            ok = {"int": _is_int, "bool": _is_bool, "float": _is_num, "int | None": lambda v: v is None or _is_int(v)}
            if not ok[str(want)](value):
                raise CheckpointError(f"{where}: option {key} = {value!r} is not a valid {want}")
        out = cls(**values)  # type: ignore[arg-type]
        if min(out.channels, out.num_steps, out.hidden, out.depth, out.kernel, out.stride, out.norm_groups) < 1:
            raise CheckpointError(f"{where}: non-positive size in {out}")
        return out

    def widths(self) -> list[int]:
        """Channels after each encoder level (the bottleneck width is the last)."""
        out, hidden, chin = [], self.hidden, self.channels
        for _ in range(self.depth):
            out.append(hidden)
            chin = hidden
            hidden = min(int(chin * self.growth), self.max_channels)
        return out


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_bool(v: object) -> bool:
    return isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class ResBlock(nn.Module):
    """x + conv(relu(norm(conv(relu(norm(x)))))), kernel 3, 'same' padding, dilation 2**index."""

    def __init__(self, channels: int, groups: int, dilation: int):
        super().__init__()
        pad = dilation * (RES_KERNEL - 1) // 2
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv1d(channels, channels, RES_KERNEL, 1, pad, dilation=dilation)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv1d(channels, channels, RES_KERNEL, 1, pad, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(h)))


class EncoderLayer(nn.Module):
    """Right-pad to a multiple of the stride, strided conv (no bias), GroupNorm, ReLU, residual blocks."""

    def __init__(self, cfg: UNetConfig, chin: int, chout: int):
        super().__init__()
        self.stride = cfg.stride
        self.conv = nn.Conv1d(chin, chout, cfg.kernel, cfg.stride, (cfg.kernel - cfg.stride) // 2, bias=False)
        self.norm = nn.GroupNorm(cfg.norm_groups, chout)
        self.res_blocks = nn.Sequential(*[ResBlock(chout, cfg.norm_groups, 2**i) for i in range(cfg.res_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, -x.shape[-1] % self.stride))
        return self.res_blocks(F.relu(self.norm(self.conv(x))))


class DecoderLayer(nn.Module):
    """Residual blocks, GroupNorm, ReLU, transposed conv (no bias) upsampling by the stride."""

    def __init__(self, cfg: UNetConfig, chin: int, chout: int):
        super().__init__()
        self.res_blocks = nn.Sequential(*[ResBlock(chin, cfg.norm_groups, 2**i) for i in range(cfg.res_blocks)])
        self.norm = nn.GroupNorm(cfg.norm_groups, chin)
        self.convtr = nn.ConvTranspose1d(chin, chout, cfg.kernel, cfg.stride, (cfg.kernel - cfg.stride) // 2,
                                         bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convtr(F.relu(self.norm(self.res_blocks(x))))


class BLSTM(nn.Module):
    """2-layer bidirectional LSTM over [B, C, T] and a linear map back to C channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers=2, bidirectional=True)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lstm(x.permute(2, 0, 1))[0]
        return self.linear(y).permute(1, 2, 0)


def sin_embedding(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, length, dim] sinusoid: cos then sin halves, frequencies 10000 ** (-i / (dim / 2 - 1))."""
    half = dim // 2
    pos = torch.arange(length, device=device, dtype=dtype).view(1, -1, 1)
    phase = pos / 10_000 ** (torch.arange(half, device=device, dtype=dtype) / (half - 1))
    return torch.cat([phase.cos(), phase.sin()], dim=-1)


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention's parameters (packed q/k/v `in_proj_weight`, `out_proj`), without biases."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        B, T, C = query.shape
        if query is memory:
            q, k, v = F.linear(query, self.in_proj_weight).chunk(3, dim=-1)
        else:
            q = F.linear(query, self.in_proj_weight[:C])
            k, v = F.linear(memory, self.in_proj_weight[C:]).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).flatten(2))


class Attention(nn.Module):
    """audiocraft's StreamingMultiheadAttention holds the torch module as `.mha` (hence the key names)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.mha = MultiheadAttention(dim, heads)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.mha(query, memory)


class TransformerLayer(nn.Module):
    """Post-norm encoder layer (torch's default norm_first=False), ReLU feed-forward, no linear biases.

    With cross-attention the query is the layer's *input*, not the self-attention output: audiocraft's
    post-norm branch does exactly that, and the released weights were trained with it."""

    def __init__(self, dim: int, cross_attention: bool):
        super().__init__()
        self.self_attn = Attention(dim, TRANSFORMER_HEADS)
        self.linear1 = nn.Linear(dim, TRANSFORMER_FFN, bias=False)
        self.linear2 = nn.Linear(TRANSFORMER_FFN, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.cross_attention: Attention | None = None
        if cross_attention:
            self.cross_attention = Attention(dim, TRANSFORMER_HEADS)
            self.norm_cross = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, src: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(src + self.self_attn(src, src))
        if self.cross_attention is not None and memory is not None:
            x = self.norm_cross(x + self.cross_attention(src, memory))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class Transformer(nn.Module):
    def __init__(self, dim: int, cross_attention: bool):
        super().__init__()
        if dim % TRANSFORMER_HEADS or dim // TRANSFORMER_HEADS < 2:
            raise CheckpointError(f"transformer bottleneck width {dim} is not a multiple of {TRANSFORMER_HEADS} heads")
        self.layers = nn.ModuleList([TransformerLayer(dim, cross_attention) for _ in range(TRANSFORMER_LAYERS)])

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, C] -> [B, T, C]; a sinusoidal position embedding is added first."""
        x = x + sin_embedding(x.shape[1], x.shape[2], x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, memory)
        return x


class DiffusionUnet(nn.Module):
    """Epsilon predictor: `unet(x [B, C, S], step [B] long, condition [B, codec_dim, T]) -> [B, C, S]`."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        widths = cfg.widths()
        chins = [cfg.channels, *widths[:-1]]
        self.encoders = nn.ModuleList([EncoderLayer(cfg, a, b) for a, b in zip(chins, widths)])
        self.decoders = nn.ModuleList([DecoderLayer(cfg, b, a) for a, b in reversed(list(zip(chins, widths)))])
        self.embedding = embedding(cfg.num_steps, widths[0])
        self.embeddings: nn.ModuleList | None = None
        if cfg.emb_all_layers:
            self.embeddings = nn.ModuleList([embedding(cfg.num_steps, w) for w in widths[1:]])
        bottleneck = widths[-1]
        self.bilstm = BLSTM(bottleneck) if cfg.bilstm else None
        self.transformer = Transformer(bottleneck, cfg.cross_attention) if cfg.transformer else None
        # audiocraft only honours cross_attention together with the transformer
        self.cross_attention = cfg.transformer and cfg.cross_attention
        self.conv_codec = nn.Conv1d(cfg.codec_dim, bottleneck, 1) if cfg.codec_dim is not None else None

    @property
    def downsampling(self) -> int:
        return self.cfg.stride**self.cfg.depth

    def forward(self, x: torch.Tensor, step: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, S], step [B] long, condition [B, codec_dim, T] -> predicted noise [B, C, S]."""
        skips = []
        z = x
        for i, encoder in enumerate(self.encoders):
            z = encoder(z)  # [B, width_i, ceil(S_i / stride)]
            if i == 0:
                z = z + self.embedding(step)[:, :, None]
            elif self.embeddings is not None:
                z = z + self.embeddings[i - 1](step)[:, :, None]
            skips.append(z)

        z, memory = self._add_condition(z, condition)
        skips[-1] = z  # audiocraft adds the condition in place (`z += ...`) to the deepest skip's tensor
        if self.transformer is not None:
            z = self.transformer(z.transpose(1, 2), memory).transpose(1, 2)
        elif self.bilstm is not None:
            z = self.bilstm(z)
        else:  # audiocraft's UNet without a bottleneck module zeroes the bottleneck (the skips remain)
            z = torch.zeros_like(z)

        for decoder in self.decoders:
            s = skips.pop()
            z = decoder(z[..., : s.shape[-1]] + s)
        return z[..., : x.shape[-1]]

    def _add_condition(self, z: torch.Tensor, condition: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bottleneck z [B, W, L] -> (z with the codec condition added, or cross-attention memory [B, T, W])."""
        if self.conv_codec is None:
            return z, None
        if condition is None:
            raise ValueError("this band model is conditioned on the codec latent: pass `condition`")
        cond = self.conv_codec(condition)  # [B, W, T]
        if cond.shape[-1] > 2 * z.shape[-1]:
            raise CheckpointError(f"band model downsamples {self.downsampling}x, more than twice the condition's "
                                  f"frame rate ({cond.shape[-1]} frames for {z.shape[-1]} bottleneck steps)")
        if self.cross_attention:
            memory = cond.transpose(1, 2)
            return z, memory + sin_embedding(memory.shape[1], memory.shape[2], memory.device, memory.dtype)
        return z + F.interpolate(cond, z.shape[-1]), None  # nearest neighbour, as audiocraft


def expected_state_shapes(cfg: UNetConfig) -> dict[str, tuple[int, ...]]:
    """The official state-dict key -> shape of a band network (built on the meta device, no memory)."""
    with torch.device("meta"):
        net = DiffusionUnet(cfg)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}
