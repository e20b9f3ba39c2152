"""Weight layouts for the fastest linear kernels at decode time.

A decode step multiplies a handful of rows (2 x prompts under classifier-free guidance) by every weight
of the language model, so its speed is how fast the kernel gets through the weights. Measured on a
2-core AMD EPYC (Zen 4, AVX512-VNNI; torch 2.11), [2, 1024] x [1024, 4096] with the weights of 47 such
layers (out of cache, as in a real step):

    F.linear(x, W), W [out, in] (torch's default)          ~10 GB/s of float32
    x @ W^T pre-transposed to [in, out]                    ~13 GB/s of float32
    (W @ x^T)^T: MKL's path for <= 4 columns               ~40 GB/s of float32 (30-46 by shape)
    torch._weight_int8pack_mm, bf16 activations             ~33 GB/s of int8 (4x fewer bytes than float32)
    fbgemm dynamic int8 (quantized::linear_dynamic)         ~51 GB/s of int8 (int8 activations, VNNI)

(2 threads read plain memory at ~70 GB/s, so these kernels are compute-bound.) Float32 weights keep their
[out, in] layout on the CPU and decode steps (2 rows per prompt) go through W @ x^T. `quantize="int8"`
uses fbgemm's int8 linear on x86 with every activation row quantized on its own (batch-invariant, see
DynamicInt8Linear; mean KL from float32 0.0014 nats with 8-bit activations on VNNI CPUs, where fbgemm's own
per-tensor quantization gave 0.0010 and ran ~25 % faster alone: 38 vs 30 steps/s on Zen 5, real-size
small), and `_weight_int8pack_mm` elsewhere;
`quantize="int8-weight-only"` asks for the latter everywhere (float activations: KL 0.0004, ~7x). The
torch.ao *Python* API around the fbgemm op is deprecated in favour of torchao; the op itself is what we
call, and tests check it on the pinned torch.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import native

INT8_MAX = 127.0
QUANTIZE = (None, "int8", "int8-weight-only", "int4")  # what `quantize` may be
INT4_GROUPS = (64, 32)  # input weights per int4 scale / zero: gpt-fast's default 64 (128 measured no faster here),
# 32 for widths that 64 does not divide; a layer neither divides stays float
SKINNY_ROWS = 4  # MKL's fast W @ x^T path holds up to 4 columns (~40 GB/s; 5 and more: ~13 GB/s)
CHUNKED_ROWS = 12  # up to here, 4-row pieces beat one F.linear (measured: 8 rows 22 vs 13 GB/s, 16: equal)


class FloatLinear(nn.Module):
    """float32 y = x w^T (no bias: the LM's linears have none), by the kernel measured fastest for the number
    of rows: a decode step has 2 per prompt under CFG, and MKL streams W [out, in] fastest as the left
    operand of W @ x^T when x^T has at most `SKINNY_ROWS` columns."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] > CHUNKED_ROWS:  # prompts, prefixes: an ordinary matrix product
            return F.linear(x, self.weight)
        y = torch.cat([torch.mm(self.weight, c.t()) for c in rows.split(SKINNY_ROWS)], dim=1)  # [out, M]
        return y.t().contiguous().view(*x.shape[:-1], -1)


class Int8Linear(nn.Module):
    """Weight-only int8: w ~ q * scale per output channel, q int8 [out, in], scale [out]."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().float().clone()  # worked on in place: one float temporary per layer
        # the kernel takes bf16 scales: quantize with the rounded scale so the error stays within half a step
        scales = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=1e-30).to(torch.bfloat16)
        q = w.div_(scales.float()[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
        del w
        self.register_buffer("q", q)
        self.register_buffer("scales", scales)
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.to(torch.bfloat16) if x.dim() == 2 else x.flatten(0, -2).to(torch.bfloat16)
        y = torch._weight_int8pack_mm(rows, self.q, self.scales).to(x.dtype)
        return y if x.dim() == 2 else y.unflatten(0, x.shape[:-1])


class DynamicInt8Linear(native.KernelSwitches, nn.Module):
    """fbgemm's int8 linear with int32 accumulation, every activation row quantized on its own (batch-invariant).

    Weights: int8 per output channel, prepacked once. Activations: each row symmetric with its own scale
    s_r = max|x_r| / HALF, so a row's result is the same whatever other rows share the batch (the decode
    batch of serve.py holds strangers' requests: a seed must give the same music alone or beside others).
    fbgemm's `linear_dynamic` quantizes its input with one scale for the whole tensor; we hand its
    `linear_with_input_q_dq_qweight_dq_output_fp32` rows that are already integers in [-HALF, HALF] with
    input scale 1 and zero point MID, so its quantization is the identity and the int32 sums are exact:
    y_r = s_r * w_scale * sum(q_r * W_q). Without VNNI, fbgemm multiplies u8 x s8 pairs into saturating int16
    (vpmaddubsw), so activations then get 7 bits (reduce_range) to stay exact. The C++ kernels (native.py) do
    the same in one call: on AVX512-VNNI CPUs our own kernel, on weights stored in its order instead of
    fbgemm's (1.4-1.8x faster for a decode step's rows), else fbgemm's GEMM. `native=False` (or no compiler)
    keeps the ~10 torch ops, with identical results."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().float()
        out_features, in_features = w.shape
        scales = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=1e-30).double()
        qw = torch.quantize_per_channel(w, scales, torch.zeros(out_features, dtype=torch.long), 0, torch.qint8)
        del w
        self.in_features, self.out_features = in_features, out_features
        self.reduce_range = not has_vnni()
        self.native = native.load()
        self.vnni: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # our kernel's weights, colsum, scales
        self._packed: object | None = None  # fbgemm's packed weights, made when first needed
        if native.vnni():  # one copy of the weights: ours (fbgemm's is made from it only if the Python path runs)
            q = qw.int_repr()
            self.vnni = (native.vnni_pack(q), q.sum(1, dtype=torch.int32), qw.q_per_channel_scales().float())
        else:
            self._packed = torch.ops.quantized.linear_prepack(qw, None)  # fbgemm keeps only its packed copy

    @property
    def packed(self) -> object:
        """fbgemm's packed weights (the Python path, and the C++ path on CPUs without AVX512-VNNI)."""
        if self._packed is None:
            assert self.vnni is not None
            packed, _, wscale = self.vnni
            q = native.vnni_unpack(packed, self.out_features, self.in_features)
            zeros = torch.zeros(self.out_features, dtype=torch.long)
            qw = torch._make_per_channel_quantized_tensor(q.contiguous(), wscale.double(), zeros, 0)
            self._packed = torch.ops.quantized.linear_prepack(qw, None)
        return self._packed

    @property
    def reduce_range(self) -> bool:
        return self._reduce_range

    @reduce_range.setter
    def reduce_range(self, value: bool) -> None:
        """7-bit activations (non-VNNI CPUs) or 8-bit: the quantized range follows."""
        self._reduce_range = value
        qmax = 127 if value else 255  # fbgemm's activation range: [0, 127] with reduce_range, else [0, 255]
        self.mid, self.half = (qmax + 1) // 2, (qmax + 1) // 2 - 1

    @property
    def nbytes(self) -> int:
        """Bytes of the weights a call reads (not parameters or buffers: tensors of our own or an fbgemm object)."""
        if self.vnni is not None:
            return sum(t.numel() * t.element_size() for t in self.vnni)
        return self.in_features * self.out_features + 4 * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native and self.vnni is not None:
            return native.vnni_int8_linear(x, *self.vnni, self.half, self.mid)
        if self.native:
            return native.rowwise_int8_linear(x, self.packed, self.half, self.mid)
        rows = x.reshape(-1, self.in_features)
        s = rows.abs().amax(1, keepdim=True).clamp_(min=1e-30).div_(self.half)  # [M, 1] per-row scales
        q = torch.div(rows, s).round_()  # [M, in]: integers in [-half, half]
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(q, 1.0, self.mid, self.packed)
        return y.mul_(s).view(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """Weight-only int4 on the CPU: w ~ (q - 8) * scale + zero per `group` input weights (asymmetric,
    bf16 scales and zeros, gpt-fast's layout), bf16 activations, torch's `_weight_int4pack_mm_for_cpu`. Half the
    bytes of int8 and no activation quantization: measured 3.1 ms for 40 [4096, 1024] layers on 2 Zen 5 cores
    against 4.0 ms for fbgemm's int8 kernel alone (and ~1 ms more for int8's per-row quantization). Each row's
    result is computed on its own (batch-invariant: tests/test_layout.py)."""

    def __init__(self, weight: torch.Tensor, group: int = INT4_GROUPS[0]) -> None:
        super().__init__()
        w = weight.detach().float()
        N, K = w.shape
        groups = w.view(N, K // group, group)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = ((groups - low) / scale).round_().clamp_(0, 15).to(torch.int32).view(N, K)
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, 1))
        zero = low + 8 * scale  # the kernel computes (q - 8) * scale + zero
        self.register_buffer("scales_zeros", torch.stack([scale.view(N, -1).t(), zero.view(N, -1).t()], dim=-1)
                             .to(torch.bfloat16).contiguous())  # [K / G, N, 2]
        self.in_features, self.out_features, self.group = K, N, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int4pack_mm_for_cpu(rows, self.packed, self.group, self.scales_zeros)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


def int4_available(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch, "_weight_int4pack_mm_for_cpu")


def int8_available() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


@functools.cache
def has_vnni() -> bool:
    """AVX512-VNNI or AVX-VNNI: int8 dot products accumulate in int32 (Linux: /proc/cpuinfo; else assume not)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def dynamic_int8_available(device: torch.device) -> bool:
    """fbgemm's dynamic quantized linear: x86 CPUs (the "x86" / "fbgemm" quantized engines)."""
    return (device.type == "cpu" and torch.backends.quantized.engine in ("x86", "fbgemm")
            and hasattr(torch.ops.quantized, "linear_dynamic"))


def relayout_linears(module: nn.Module, device: torch.device, quantize: str | None) -> None:
    """Replace every bias-free nn.Linear inside `module` by the fastest layout for `device`: int8 when
    `quantize` is "int8" (fbgemm's dynamic int8 where available) or "int8-weight-only" (int8 weights, float
    activations), int4 weights with bf16 activations for "int4" (CPU), float32 W @ x^T on the CPU, left as it is
    on CUDA (cuBLAS needs no help)."""
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if quantize is None and device.type != "cpu":
        return
    int8 = DynamicInt8Linear if quantize == "int8" and dynamic_int8_available(device) else Int8Linear
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.bias is None:
                if quantize is None:
                    new: nn.Module = FloatLinear(child.weight)
                elif quantize == "int4":  # a width no group divides (the melody's 12 chroma inputs): float
                    group = next((g for g in INT4_GROUPS if child.in_features % g == 0), None)
                    new = FloatLinear(child.weight) if group is None else Int4Linear(child.weight, group)
                else:
                    new = int8(child.weight)
                setattr(parent, name, new)  # the old weight is freed here, one layer at a time
