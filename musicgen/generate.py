"""The token loop: one request's generation as a small state machine, and the decode step that advances many.

A `Generation` holds what one request needs between decode steps: its windows (longform.py), its delayed
token sequence, forced prompt tokens, sampling settings and random generator, and its KV cache slots. It
prepares each window itself (conditioning, melody prefix, continuation prompt) and turns logits into the
next tokens (classifier-free guidance, sampling, the codebook delay pattern). It does not run the model:
`decode_steps` runs one forward for several generations at once (the scheduler in serve.py) or for one
(`MusicGen.stream`), so a request's tokens are the same either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .lm import LM, Condition, Group, KVCache
from .longform import Window
from .sampling import SamplingParams, delay_columns, sample, undelay

StepFn = Callable[..., torch.Tensor]  # decode_step's signature
TextFn = Callable[[Window], tuple[torch.Tensor, torch.Tensor]]  # T5 states [B, L, D_text], mask [B, L] of a window
ChromaFn = Callable[[Window], torch.Tensor | None]  # one-hot chroma [B, F, 12] of a window (melody models)
AllocFn = Callable[[int, int], KVCache]  # (rows, slots) -> an empty cache for one window


def decode_rows(pieces: int, cfg_coef: float) -> int:
    """Rows a generation of `pieces` prompts runs in a decode step: [cond; uncond] under guidance; at cfg_coef 1
    the guided logits equal the conditional ones, so there is no null batch."""
    return pieces * (2 if cfg_coef != 1.0 else 1)


def decode_step(lm: LM, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache, cond: Condition) -> torch.Tensor:
    """The static-shaped step, for torch.compile / CUDA graphs: tokens [R, K] at the 0-dim tensor position
    `pos` -> logits [R, K, card]; attention spans the whole preallocated cache under a mask."""
    return lm(tokens[:, :, None], pos, cache, cond)[:, :, -1]


class Generation:
    """One request's tokens [B, K, frames], window by window, one decode step at a time.

    `text_of(window)` gives a window's T5 states [B, L, D_text] and mask [B, L] (a prompt timeline changes
    them between windows; timeline.py); `plan` the windows (one for pieces up to 30 s); `head` [B, K, P] the
    frames the piece starts with (the user's encoded audio; P may be 0); `chroma_of(window)` the melody
    condition of a window. `begin(alloc)` prepares the first window; then, until `done`, the driver feeds
    `tokens()` through the model (`group` says where) and hands the logits to `advance`. `text` / `mask` are
    those of the current window (of the first one before `begin`)."""

    def __init__(self, lm: LM, text_of: TextFn, plan: Sequence[Window], params: SamplingParams,
                 generator: torch.Generator, head: torch.Tensor, chroma_of: ChromaFn) -> None:
        self.lm, self.text_of, self.plan = lm, text_of, list(plan)
        self.params, self.generator, self.chroma_of = params, generator, chroma_of
        self.text, self.mask = text_of(self.plan[0])
        self.batch, self.device = self.text.shape[0], self.text.device  # B pieces
        self.delays = lm.cfg.delays
        self._delays = torch.tensor(self.delays, device=self.device)[None, :]  # [1, K]
        self.rows = decode_rows(self.batch, params.cfg_coef)
        self.guided = self.rows > self.batch
        self.total = sum(w.new + max(self.delays) for w in self.plan)  # decode steps in all
        self.piece = head  # [B, K, n]: the frames of the finished windows
        self.done_steps = 0  # decode steps of the finished windows
        self.window = -1
        self.done = False

    def begin(self, alloc: AllocFn | None = None) -> None:
        """Prepare the first window; `alloc(rows, slots)` gives each window its cache (default: a new one)."""
        self._alloc = alloc or (lambda rows, n: KVCache.empty(self.lm.cfg, rows, n, self.device, self.lm.cache_dtype))
        self._start(0)

    @torch.inference_mode()
    def _start(self, index: int) -> None:
        """Window `index`: condition (text and chroma per window), cache, melody prefix, and its prompt (the
        previous window's tail, or the user's audio), run through the model in one chunk and kept, not sampled."""
        lm, w, card = self.lm, self.plan[index], self.lm.cfg.card
        self.window, self.w = index, w
        self.steps = w.frames + max(self.delays)
        self.text, self.mask = self.text_of(w)
        cond = lm.condition(self.text, self.mask, self.guided, self.chroma_of(w))
        P = cond.prefix_len  # melody models read their conditioning prefix first
        cache = self._alloc(self.rows, P + self.steps)
        lm.prefill(cond, cache)
        B, K = self.piece.shape[:2]
        self.seq = torch.full((B, K, self.steps + 1), card, dtype=torch.long, device=self.device)
        self.forced = None
        if w.prompt:
            prompt = self.piece[..., w.offset : w.offset + w.prompt]
            self.forced = torch.zeros_like(self.seq, dtype=torch.bool)
            for k, d in enumerate(self.delays):
                self.seq[:, k, 1 + d : 1 + d + w.prompt] = prompt[:, k]
                self.forced[:, k, 1 + d : 1 + d + w.prompt] = True
            x = self.seq[:, :, : w.prompt]  # columns 0..T_p-1 predict only prompt tokens or the special token
            lm(torch.cat([x, x]) if self.guided else x, P, cache, cond)
        self.s = w.prompt  # the next sequence column fed to the model
        self.group = Group(cache, cond, P + self.s, self.rows)

    def tokens(self) -> torch.Tensor:
        """The next decode step's input [rows, K] ([cond; uncond] under guidance)."""
        x = self.seq[:, :, self.s]
        return torch.cat([x, x]) if self.guided else x

    @torch.inference_mode()
    def advance(self, logits: torch.Tensor) -> None:
        """logits [rows, K, card] of `tokens()` -> the next column (guided, sampled, delay pattern applied)."""
        if self.guided:
            cond, uncond = logits.chunk(2, dim=0)
            logits = uncond + (cond - uncond) * self.params.cfg_coef
        nxt = sample(logits, self.params, self.generator)  # [B, K]
        nxt = torch.where(delay_columns(self._delays, self.w.frames, self.s + 1), nxt, self.lm.cfg.card)
        if self.forced is not None:
            nxt = torch.where(self.forced[:, :, self.s + 1], self.seq[:, :, self.s + 1], nxt)
        self.seq[:, :, self.s + 1] = nxt
        self.s += 1
        self.group.pos += 1
        if self.s == self.steps:
            self.piece = self.frames()
            self.done_steps += self.w.new + max(self.delays)
            if self.window + 1 < len(self.plan):
                self._start(self.window + 1)
            else:
                self.done = True

    @property
    def length(self) -> int:
        """Frames of the finished piece (a user prompt included)."""
        return self.plan[-1].offset + self.plan[-1].frames

    @property
    def step(self) -> int:
        """Decode steps done so far, over all windows."""
        return self.done_steps + (0 if self.done else self.s - self.w.prompt)

    def frames(self) -> torch.Tensor:
        """Every frame complete so far [B, K, n] (all of them once `done`)."""
        if self.done:
            return self.piece
        n = max(0, min(self.w.frames, self.s - max(self.delays)))
        return torch.cat([self.piece, undelay(self.seq, self.delays, n)[..., self.w.prompt :]], dim=-1)


@torch.inference_mode()
def decode_steps(lm: LM, gens: Sequence[Generation], step_fn: StepFn | None = None) -> None:
    """One decode step for each generation: one forward over all their rows, then each samples its own
    tokens. `step_fn` (a compiled `decode_step`, one generation at a time) is the static-shaped path."""
    if step_fn is not None:
        for g in gens:
            pos = torch.tensor(g.group.pos, device=g.device)
            g.advance(step_fn(lm, g.tokens(), pos, g.group.cache, g.group.cond))
        return
    logits = lm.decode(torch.cat([g.tokens() for g in gens]), [g.group for g in gens])
    for g, part in zip(gens, logits.split([g.rows for g in gens]), strict=True):
        g.advance(part)
