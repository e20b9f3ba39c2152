"""The token loop: classifier-free guidance as one batched forward, delay pattern, sampling."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .lm import LM, Condition, KVCache
from .options import ProgressFn
from .sampling import SamplingParams, delay_columns, sample, undelay

StepFn = Callable[..., torch.Tensor]  # decode_step's signature


def decode_step(lm: LM, tokens: torch.Tensor, pos: int | torch.Tensor, cache: KVCache, cond: Condition,
                cfg_coef: float | None) -> torch.Tensor:
    """tokens [B, K] at position `pos` -> next-token logits [B, K, card] (guided when cfg_coef is set:
    the batch runs as [cond; uncond] and logits = uncond + (cond - uncond) * cfg_coef)."""
    x = tokens[:, :, None]
    if cfg_coef is not None:
        x = torch.cat([x, x], dim=0)
    logits = lm(x, pos, cache, cond)[:, :, -1]
    if cfg_coef is None:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * cfg_coef


def iter_steps(
    lm: LM,
    text: torch.Tensor,
    mask: torch.Tensor,
    frames: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    chroma: torch.Tensor | None = None,
    step_fn: StepFn | None = None,
    prompt: torch.Tensor | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """text [B, L, D_text] T5 states, mask [B, L] (+ one-hot chroma [B, C, 12] for melody models) -> yields
    (step, total, seq) after every decode step;
    seq [B, K, 1 + total] is the delayed token sequence, filled up to column `step`.

    Runs frames + max(delay) steps; step s feeds sequence column s and fills column s + 1, forcing the
    special token wherever the delay pattern has none. `undelay(seq, delays, frames)` at the end (or
    `complete_frames(step)` frames of it on the way) gives the codes.

    `step_fn` (e.g. a torch.compile'd `decode_step`) runs with static shapes: the position is a tensor and
    attention spans the whole preallocated cache under a mask.

    `prompt` [B, K, T_p] (T_p < frames): codes the output starts with (continuation). They are run through
    the model in one chunk and kept, not sampled; the first step yielded is then T_p + 1."""
    config = lm.cfg
    B, K, device = text.shape[0], config.num_codebooks, text.device
    delays = torch.tensor(config.delays, device=device)[None, :]  # [1, K]
    steps = frames + max(config.delays)
    guided = params.cfg_coef != 1.0  # at 1 the guided logits equal the conditional ones: skip the null batch
    with torch.inference_mode():
        cond = lm.condition(text, mask, guided, chroma)
        P = cond.prefix_len  # melody models read their conditioning prefix first
        cache = KVCache.empty(config, B * (2 if guided else 1), P + steps, device, lm.dtype)
        lm.prefill(cond, cache)
        seq = torch.full((B, K, steps + 1), config.card, dtype=torch.long, device=device)
        Tp = 0 if prompt is None else prompt.shape[-1]
        if Tp:
            assert Tp < frames, "the prompt must be shorter than the output"
            forced = torch.zeros_like(seq, dtype=torch.bool)
            for k, d in enumerate(config.delays):
                seq[:, k, 1 + d : 1 + d + Tp] = prompt[:, k]
                forced[:, k, 1 + d : 1 + d + Tp] = True
            x = seq[:, :, :Tp]  # columns 0..T_p-1 predict only prompt tokens or the special token
            lm(torch.cat([x, x]) if guided else x, P, cache, cond)
    coef = params.cfg_coef if guided else None
    for s in range(Tp, steps):
        with torch.inference_mode():
            if step_fn is None:
                logits = decode_step(lm, seq[:, :, s], P + s, cache, cond, coef)
            else:
                logits = step_fn(lm, seq[:, :, s], torch.tensor(P + s, device=device), cache, cond, coef)
            nxt = sample(logits, params, generator)  # [B, K]
            nxt = torch.where(delay_columns(delays, frames, s + 1), nxt, config.card)
            seq[:, :, s + 1] = torch.where(forced[:, :, s + 1], seq[:, :, s + 1], nxt) if Tp else nxt
        yield s + 1, steps, seq


def complete_frames(step: int, delays: tuple[int, ...], frames: int) -> int:
    """How many frames have all their codebooks filled after `step` decode steps."""
    return max(0, min(frames, step - max(delays)))


def generate_tokens(
    lm: LM,
    text: torch.Tensor,
    mask: torch.Tensor,
    frames: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
    chroma: torch.Tensor | None = None,
    step_fn: StepFn | None = None,
    prompt: torch.Tensor | None = None,
) -> torch.Tensor:
    """text [B, L, D_text] T5 states, mask [B, L] -> codes [B, K, frames] (starting with `prompt`)."""
    seq = None
    for step, total, seq_so_far in iter_steps(lm, text, mask, frames, params, generator, chroma, step_fn, prompt):
        seq = seq_so_far
        if progress is not None:
            progress(step, total)
    assert seq is not None
    return undelay(seq, lm.cfg.delays, frames)
