"""EnCodec 32 kHz: SEANet encoder / decoder and the residual vector quantizer.

Module names mirror transformers' EncodecModel (`encoder.layers.N`, `decoder.layers.N`, ...) so the
checkpoint mapping is the identity except for weight norm (fused at load) and the codebooks (stacked).
Checkpoint keys live under `audio_encoder.`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CodecConfig
from .weights import Cat, Checkpoint, Source, WeightNorm, load_module

PREFIX = "audio_encoder."


def pad1d(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    """F.pad that also reflects inputs shorter than the padding (zero-extend first, as EnCodec does)."""
    if mode != "reflect":
        return F.pad(x, (left, right), mode=mode)
    extra = max(0, max(left, right) - x.shape[-1] + 1)
    if extra:
        x = F.pad(x, (0, extra))
    x = F.pad(x, (left, right), mode="reflect")
    return x[..., : x.shape[-1] - extra]


class SConv1d(nn.Module):
    """Conv1d with EnCodec's 'same' padding (non-causal: split, causal: all left) + full last window."""

    def __init__(self, cfg: CodecConfig, c_in: int, c_out: int, k: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, k, stride, dilation=dilation)
        self.causal, self.pad_mode = cfg.causal, cfg.pad_mode
        self.stride = stride
        self.k_eff = (k - 1) * dilation + 1
        self.pad_total = self.k_eff - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        frames = math.ceil((n - self.k_eff + self.pad_total) / self.stride + 1) - 1
        extra = frames * self.stride + self.k_eff - self.pad_total - n
        if self.causal:
            left, right = self.pad_total, extra
        else:
            right = self.pad_total // 2
            left, right = self.pad_total - right, right + extra
        return self.conv(pad1d(x, left, right, self.pad_mode))


class SConvTranspose1d(nn.Module):
    """ConvTranspose1d trimmed back to `stride` x input length."""

    def __init__(self, cfg: CodecConfig, c_in: int, c_out: int, k: int, stride: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(c_in, c_out, k, stride)
        total = k - stride
        right = math.ceil(total * cfg.trim_right_ratio) if cfg.causal else total // 2
        self.trim = (total - right, right)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y[..., self.trim[0] : y.shape[-1] - self.trim[1]]


class LSTM(nn.Module):
    """Multi-layer LSTM over [B, C, T] with a skip connection."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)  # [T, B, C]
        return (self.lstm(x)[0] + x).permute(1, 2, 0)


class ResBlock(nn.Module):
    def __init__(self, cfg: CodecConfig, dim: int, dilation: int):
        super().__init__()
        hidden = dim // cfg.compress
        self.block = nn.ModuleList([
            nn.ELU(), SConv1d(cfg, dim, hidden, cfg.residual_kernel_size, dilation=dilation),
            nn.ELU(), SConv1d(cfg, hidden, dim, 1),
        ])
        self.shortcut = SConv1d(cfg, dim, dim, 1) if cfg.conv_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.block:
            y = layer(y)
        return self.shortcut(x) + y


class SEANetEncoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        F_ = cfg.num_filters
        layers: list[nn.Module] = [SConv1d(cfg, cfg.channels, F_, cfg.kernel_size)]
        mult = 1
        for ratio in reversed(cfg.ratios):
            for j in range(cfg.num_residual_layers):
                layers.append(ResBlock(cfg, mult * F_, cfg.dilation_growth_rate**j))
            layers += [nn.ELU(), SConv1d(cfg, mult * F_, 2 * mult * F_, 2 * ratio, stride=ratio)]
            mult *= 2
        layers += [LSTM(mult * F_, cfg.num_lstm_layers), nn.ELU(),
                   SConv1d(cfg, mult * F_, cfg.dim, cfg.last_kernel_size)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SEANetDecoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        F_ = cfg.num_filters
        mult = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [SConv1d(cfg, cfg.dim, mult * F_, cfg.kernel_size),
                                   LSTM(mult * F_, cfg.num_lstm_layers)]
        for ratio in cfg.ratios:
            layers += [nn.ELU(), SConvTranspose1d(cfg, mult * F_, mult * F_ // 2, 2 * ratio, ratio)]
            for j in range(cfg.num_residual_layers):
                layers.append(ResBlock(cfg, mult * F_ // 2, cfg.dilation_growth_rate**j))
            mult //= 2
        layers += [nn.ELU(), SConv1d(cfg, F_, cfg.channels, cfg.last_kernel_size)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class EnCodec(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SEANetEncoder(cfg)
        self.decoder = SEANetDecoder(cfg)
        # all codebooks stacked: row q * card + i is entry i of codebook q
        self.codebooks = nn.Parameter(torch.empty(cfg.num_quantizers * cfg.codebook_size, cfg.dim))

    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Q, T] long -> quantized latent [B, D, T] (sum of the Q codebook vectors)."""
        Q, card = codes.shape[1], self.cfg.codebook_size
        offsets = torch.arange(Q, device=codes.device).view(1, Q, 1) * card
        return F.embedding(codes + offsets, self.codebooks).sum(1).transpose(1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Q, T] -> audio [B, 1, T * hop]."""
        return self.decoder(self.latent(codes))

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, 1, S] at the codec's sample rate -> codes [B, Q, ceil(S / hop)] (greedy residual VQ)."""
        residual = self.encoder(audio).transpose(1, 2)  # [B, T, D]
        card = self.cfg.codebook_size
        codes = []
        for q in range(self.cfg.num_quantizers):
            book = self.codebooks[q * card : (q + 1) * card]  # [card, D]
            # nearest neighbour by ||x||^2 - 2 x.e + ||e||^2, in the order transformers computes it
            dist = residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ book.t() + book.pow(2).sum(-1)
            idx = (-dist).argmax(-1)  # [B, T]
            residual = residual - F.embedding(idx, book)
            codes.append(idx)
        return torch.stack(codes, dim=1)

    def source_of(self, name: str) -> Source:
        """Our parameter name -> checkpoint key(s): identical names, weight norm fused, codebooks stacked."""
        if name == "codebooks":
            Q = self.cfg.num_quantizers
            return Cat(tuple(f"{PREFIX}quantizer.layers.{q}.codebook.embed" for q in range(Q)))
        if name.endswith("conv.weight"):
            return WeightNorm(PREFIX + name.removesuffix(".weight"))
        return PREFIX + name

    @classmethod
    def from_checkpoint(cls, cfg: CodecConfig, ckpt: Checkpoint, device: torch.device) -> EnCodec:
        with torch.device("meta"):
            model = cls(cfg)
        load_module(model, ckpt, model.source_of, device, torch.float32)
        return model.eval()


def is_ignored(key: str) -> bool:
    """Quantizer training statistics (EMA cluster sizes etc.) are not needed for inference."""
    stats = ("cluster_size", "embed_avg", "inited")
    return key.startswith(PREFIX + "quantizer.") and key.rsplit(".", 1)[-1] in stats
