"""Progressive decoding for streamed playback: growing token prefixes in, new audio samples out.

`MusicGen.stream` yields, after every decode step, every frame complete so far ([B, K, n] tokens). The
`StreamDecoder` here turns those prefixes into audio chunks that, concatenated, are the samples a full
`MusicGen.decode` of the final tokens gives (up to float32 rounding), in linear time overall.

EnCodec's decoder is conv (k7, non-causal) -> 2-layer LSTM (causal) -> an upsampling stack (transposed
convs and residual blocks, non-causal but of finite reach) -> conv (k7). So a sample depends on a few
*future* frames (through the convs) and on *every* past frame (through the LSTM state). The scheme:

* conv 0 is evaluated only where its window is complete (its right padding: 3 frames of lookahead), on
  the new frames plus its left padding (3 frames) of context;
* the LSTM runs on exactly those frames, once each, carrying its (h, c) state from chunk to chunk: it
  sees the same sequence as in a full decode, so nothing "washes out" approximately;
* the upsampling stack runs on the new LSTM frames plus just enough already-decoded frames on the left
  for the first new sample to be exact, and only samples whose whole receptive field is known are emitted.

The reach of every layer is derived from the modules (kernel size, stride, dilation, padding / trim
split), not guessed. For the 32 kHz EnCodec (ratios 8, 5, 4, 4) the samples that can still change when
more frames arrive, `holdback`, are the last 3 * 640 + 482 = 2402 (75 ms); tests/test_streaming.py checks
that number against the first sample where decodes of a prefix and of a longer sequence differ.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .codec import LSTM, EnCodec, ResBlock, SConv1d, SConvTranspose1d
from .errors import InvalidInputError


def conv_padding(conv: SConv1d) -> tuple[int, int]:
    """(left, right) padding of a stride-1 non-causal SConv1d: how far its window reaches back / ahead."""
    if conv.stride != 1 or conv.causal:
        raise NotImplementedError("streaming supports the non-causal, stride-1 convs of EnCodec's decoder")
    right = conv.pad_total // 2
    return conv.pad_total - right, right


def exact_span(module: nn.Module, lo: int, hi: int, n: int, at_start: bool, at_end: bool) -> tuple[int, int, int]:
    """Run `module` (a decoder layer after the LSTM) on a window of `n` steps whose steps [lo, hi) are
    exact (a window cut out of the full sequence; `at_start` / `at_end`: its edges are the sequence's own,
    where the layer pads exactly as in a full decode). Returns (lo, hi, n) of its output."""
    if isinstance(module, (nn.ELU, nn.Identity)):
        return lo, hi, n
    if isinstance(module, SConv1d):
        left, right = conv_padding(module)
        return (0 if at_start else lo + left), (n if at_end else hi - right), n
    if isinstance(module, SConvTranspose1d):
        # trimmed output m sums inputs i with i*s <= m + trim_left <= i*s + k - 1
        k, s = module.conv.kernel_size[0], module.conv.stride[0]
        trim_left = module.trim[0]
        out_lo = 0 if at_start else max(0, s * (lo - 1) + k - trim_left)
        out_hi = s * n if at_end else s * hi - trim_left
        return out_lo, out_hi, s * n
    if isinstance(module, ResBlock):  # shortcut + branch: exact where both are
        b = (lo, hi, n)
        for layer in module.block:
            b = exact_span(layer, *b, at_start, at_end)
        s = exact_span(module.shortcut, lo, hi, n, at_start, at_end)
        return max(b[0], s[0]), min(b[1], s[1]), n
    raise NotImplementedError(f"no receptive-field rule for {type(module).__name__}")


def stack_reach(stack: list[nn.Module], hop: int) -> tuple[int, int]:
    """(left, right): output samples lost at a cut window edge of the upsampling stack. A window of LSTM
    frames [s, e) gives exact samples [s * hop + left, e * hop - right) (at a cut edge)."""
    frames = 64  # any window comfortably wider than the reach
    lo, hi, n = 0, frames, frames
    for layer in stack:
        lo, hi, n = exact_span(layer, lo, hi, n, at_start=False, at_end=False)
    if n != frames * hop:
        raise NotImplementedError(f"upsampling stack gives {n // frames} samples per frame, expected {hop}")
    return lo, n - hi


def can_stream(codec: nn.Module) -> bool:
    """Whether `codec`'s decoder has the layout and reach rules above (every EnCodec of the MusicGen
    checkpoints). A causal EnCodec (transformers' EncodecConfig default: all padding on the left, trims on
    the right) has other rules: it is decoded in one pass instead, and the app plays it when it is done."""
    layers = list(codec.decoder.layers)
    if len(layers) < 3 or not (isinstance(layers[0], SConv1d) and isinstance(layers[1], LSTM)):
        return False
    try:
        conv_padding(layers[0])
        stack_reach(layers[2:], codec.cfg.hop_length)
    except NotImplementedError:
        return False
    return True


class StreamDecoder:
    """Exact incremental EnCodec decoding of the growing token prefixes from `MusicGen.stream`.

    `push(tokens)` takes every frame complete so far ([B, K, n], n never decreasing) and returns the new
    samples [B, C, s] whose value can no longer change; `finish(tokens)` (or a push of all `frames` when
    that total was given) also returns the tail. The chunks concatenate to `MusicGen.decode(tokens)`.
    """

    def __init__(self, codec: EnCodec, channels: int, frames: int | None = None) -> None:
        """`codec` decodes each of the `channels` audio channels (stereo: codebooks interleaved L0 R0 L1 R1 ...);
        `frames`: the sequence's length, when known (its push then returns the tail too)."""
        layers = list(codec.decoder.layers)
        if not (isinstance(layers[0], SConv1d) and isinstance(layers[1], LSTM)):
            raise NotImplementedError("expected EnCodec's decoder layout: conv, LSTM, upsampling stack")
        self.codec, self.frames = codec, frames
        self.conv0, self.lstm, self.stack = layers[0], layers[1].lstm, layers[2:]
        self.hop = codec.cfg.hop_length
        self.channels = channels
        self.codebooks = codec.cfg.num_quantizers * channels  # K of the tokens it takes
        self.context, self.lookahead = conv_padding(self.conv0)  # in frames
        self.stack_left, self.stack_right = stack_reach(self.stack, self.hop)  # in samples
        #: samples at the end of a prefix that can still change when more frames arrive
        self.holdback = self.lookahead * self.hop + self.stack_right
        self.seen = 0  # token frames received
        self.consumed = 0  # frames the LSTM has run over
        self.emitted = 0  # samples returned
        self.done = False
        self._latent: torch.Tensor | None = None  # latents of frames [_latent_start, seen)
        self._latent_start = 0
        self._hidden: torch.Tensor | None = None  # LSTM outputs of frames [_hidden_start, consumed)
        self._hidden_start = 0
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None

    def finish(self, tokens: torch.Tensor) -> torch.Tensor:
        """The last push: `tokens` holds the whole sequence; returns every sample not yet returned."""
        return self._update(tokens, final=True)

    def push(self, tokens: torch.Tensor) -> torch.Tensor:
        """New exact samples [B, C, s] (s may be 0) for the prefix `tokens` [B, K, n]."""
        return self._update(tokens, final=self.frames is not None and tokens.shape[-1] == self.frames)

    @torch.inference_mode()
    def _update(self, tokens: torch.Tensor, final: bool) -> torch.Tensor:
        if self.done:
            raise InvalidInputError("this StreamDecoder has already returned the whole sequence")
        n = tokens.shape[-1]
        if tokens.dim() != 3 or tokens.shape[1] != self.codebooks:
            raise InvalidInputError(f"tokens must be [B, {self.codebooks}, frames], got {tuple(tokens.shape)}")
        if n < self.seen or (self.frames is not None and n > self.frames):
            raise InvalidInputError(f"got {n} frames after {self.seen} (expected a growing prefix of "
                                    f"{self.frames or 'any number of'} frames)")
        self._add_latents(tokens[..., self.seen:])
        self.seen = n
        self.done = final
        audio = self._advance(final)
        return rearrange(audio, "(b c) 1 s -> b c s", c=self.channels).clamp(-1.0, 1.0).float().cpu()

    def _add_latents(self, new: torch.Tensor) -> None:
        if new.shape[-1] == 0:
            return
        codes = rearrange(new.to(self.codec.codebooks.device).long(), "b (q c) t -> (b c) q t", c=self.channels)
        latent = self.codec.latent(codes)
        self._latent = latent if self._latent is None else torch.cat([self._latent, latent], dim=-1)

    def _advance(self, final: bool) -> torch.Tensor:
        """Run conv 0 + LSTM over the newly exact frames, then the stack over the newly exact samples."""
        assert self._latent is not None
        n = self.seen
        # conv 0 over latent frames [w0, n); its output is exact on [consumed, ready)
        w0 = max(0, self.consumed - self.context)
        ready = n if final else n - self.lookahead
        if ready > self.consumed:
            window = self._latent[..., w0 - self._latent_start:]
            x = self.conv0(window)[..., self.consumed - w0 : ready - w0]
            y, self._state = self.lstm(x.permute(2, 0, 1), self._state)
            h = (y + x.permute(2, 0, 1)).permute(1, 2, 0)
            self._hidden = h if self._hidden is None else torch.cat([self._hidden, h], dim=-1)
            self.consumed = ready
            keep = max(0, self.consumed - self.context)  # conv 0's left context for next time
            self._latent = self._latent[..., keep - self._latent_start:]
            self._latent_start = keep
        empty = torch.zeros(self._latent.shape[0], 1, 0, device=self._latent.device)
        if self._hidden is None:
            return empty
        # the stack over LSTM frames [s0, consumed): exact from s0 * hop + stack_left (or 0 at the start)
        s0 = max(0, (self.emitted - self.stack_left) // self.hop)
        end = self.consumed * self.hop - (0 if final else self.stack_right)
        if end <= self.emitted:
            return empty
        out = self._hidden[..., s0 - self._hidden_start:]
        for layer in self.stack:
            out = layer(out)
        audio = out[..., self.emitted - s0 * self.hop : end - s0 * self.hop]
        self.emitted = end
        keep = max(0, (self.emitted - self.stack_left) // self.hop)
        self._hidden = self._hidden[..., keep - self._hidden_start:]
        self._hidden_start = keep
        return audio


class ChunkedDecode:
    """`MusicGen.decode`'s chunked EnCodec pass fed as the frames complete: `push(tokens)` ([B, K, n], a growing
    prefix of a `frames`-frame sequence) decodes every whole `chunk` of frames that is there, at the same cuts
    as one call with all the frames would, so `audio` (once the last frame went in) is that call's result to
    the bit. The scheduler (serve.py) decodes while it generates this way."""

    def __init__(self, codec: EnCodec, channels: int, chunk: int, frames: int) -> None:
        self.dec = StreamDecoder(codec, channels, frames)
        self.chunk, self.frames = chunk, frames
        self.parts: list[torch.Tensor] = []

    def push(self, tokens: torch.Tensor) -> None:
        n = min(tokens.shape[-1], self.frames)
        while not self.dec.done and (end := min(self.dec.seen + self.chunk, self.frames)) <= n:
            self.parts.append(self.dec.push(tokens[..., :end]))

    @property
    def audio(self) -> torch.Tensor | None:
        """[B, C, S] once every frame was pushed, else None."""
        return torch.cat(self.parts, dim=-1) if self.dec.done else None
