"""Next-token selection with audiocraft's semantics, and the codebook delay pattern.

Sampling draws through an exponential race (argmax of p / E, E ~ Exp(1)), which picks index i with
probability p_i like torch.multinomial, but needs no host sync and takes a seeded torch.Generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """audiocraft's defaults: top_k 250, top_p 0 (off; > 0 overrides top_k), temperature 1, CFG 3."""

    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0


def top_p_filter(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches p (always at least one)."""
    sorted_probs, idx = torch.sort(probs, dim=-1, descending=True)
    drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, idx, sorted_probs)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits [..., V] float -> token ids [...]. temperature 0 is greedy argmax.

    Top-k races among the k candidates only (softmax over their logits = the renormalised top-k
    probabilities): 8x fewer random draws per step than over the vocabulary. Exact ties at the k-th
    value are broken by `topk` (audiocraft would keep every tied token; with float logits, a rare case)."""
    if params.temperature == 0:
        return logits.argmax(-1)
    logits = logits / params.temperature
    if params.top_p <= 0 < params.top_k < logits.shape[-1]:
        top, idx = torch.topk(logits, params.top_k, dim=-1)
        return idx.gather(-1, race(torch.softmax(top, dim=-1), generator)[..., None]).squeeze(-1)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p > 0:
        probs = top_p_filter(probs, params.top_p)
    return race(probs, generator)


def race(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """probs [..., V] (need not sum to 1) -> index [...] drawn with probability proportional to probs."""
    return (probs / torch.empty_like(probs).exponential_(1.0, generator=generator)).argmax(-1)


def delay_columns(delays: torch.Tensor, frames: int, column: int) -> torch.Tensor:
    """Which codebooks hold a real token at sequence column `column` (column 0 is the start token).
    Codebook k carries frames 0..frames-1 at columns delays[k] + 1 .. delays[k] + frames."""
    return (column > delays) & (column <= delays + frames)


def undelay(seq: torch.Tensor, delays: tuple[int, ...], frames: int) -> torch.Tensor:
    """seq [B, K, 1 + steps] (start column included) -> codes [B, K, frames]."""
    return torch.stack([seq[:, k, 1 + d : 1 + d + frames] for k, d in enumerate(delays)], dim=1)


def delay(codes: torch.Tensor, delays: tuple[int, ...], special: int) -> torch.Tensor:
    """codes [B, K, T] -> seq [B, K, 1 + T + max(delays)]: start column, shifted codebooks, `special`
    wherever the pattern has no token. The inverse of `undelay`."""
    B, K, T = codes.shape
    seq = codes.new_full((B, K, 1 + T + max(delays)), special)
    for k, d in enumerate(delays):
        seq[:, k, 1 + d : 1 + d + T] = codes[:, k]
    return seq
