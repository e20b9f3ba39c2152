"""Weight layouts for the fastest linear kernels at decode time.

A decode step multiplies a handful of rows (2 x prompts under classifier-free guidance) by every weight
of the language model, so it is bound by how fast the kernel streams the weights. Measured on a
2-core AMD EPYC (bench/bench_generate.py, torch 2.11), [2, 1024] x [1024, 4096]:

    F.linear, weight [out, in] (torch's default)         ~10 GB/s of float32
    x @ weight_t, weight pre-transposed to [in, out]     ~13 GB/s of float32
    torch._weight_int8pack_mm, bf16 activations           ~31 GB/s of int8 (4x fewer bytes than float32)
    dynamic int8 (fbgemm, torch.ao quantize_dynamic)      ~29 GB/s of int8, int8 activations, deprecated

so float32 weights are kept transposed on the CPU, and `quantize="int8"` stores symmetric per-output-channel
int8 weights for `_weight_int8pack_mm` (weight-only: activations stay bf16, accumulation is float).
"""

from __future__ import annotations

import torch
from torch import nn

INT8_MAX = 127.0


class TransposedLinear(nn.Module):
    """y = x @ w_t with w_t [in, out]: the float32 CPU layout (no bias: the LM's linears have none)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(weight.t().contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_t


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


def int8_available() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


def relayout_linears(module: nn.Module, device: torch.device, quantize: str | None) -> None:
    """Replace every bias-free nn.Linear inside `module` by the fastest layout for `device`: int8 when
    `quantize == "int8"`, transposed float on the CPU, left as it is on CUDA (cuBLAS needs no help)."""
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize is None and device.type != "cpu":
        return
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.bias is None:
                new = Int8Linear(child.weight) if quantize == "int8" else TransposedLinear(child.weight)
                setattr(parent, name, new)  # the old weight is freed here, one layer at a time
