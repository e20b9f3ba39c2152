"""A decode step's layers in one C++ call each (csrc/decode_layer.cpp), on int8 models on AVX512-VNNI CPUs.

`lm.Layer.decode` makes ~17 Python-level calls a layer (norms, linears, attention per request, GELU, adds): at
~5 us each that is ~2 ms of a ~11 ms musicgen-small step. `decode_layer` runs the same ops in the same order from
C++ (torch's norm, GELU and adds; our int8 linear and attention kernels), so its result is bit for bit that of
`Layer.decode` (tests/test_fused.py); the Python code stays the reference and the path everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import native
from .layout import DynamicInt8Linear

LayerArgs = tuple[list[torch.Tensor], list[torch.Tensor], int, int, float]


def _parts(layer: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    """The layer's norms, linears and attentions, in decode_layer's order."""
    cross = hasattr(layer, "cross_attn")
    norms = [layer.self_attn_norm, *([layer.cross_attn_norm] if cross else []), layer.ffn_norm]
    linears = [layer.self_attn.qkv, layer.self_attn.out, *([layer.cross_attn.q, layer.cross_attn.out] if cross else []),
               layer.fc1, layer.fc2]
    return norms, linears, [layer.self_attn, *([layer.cross_attn] if cross else [])]


def layer_args(layer: nn.Module) -> LayerArgs | None:
    """The layer's norms (weight, bias each) and int8 linears (our kernel's tensors each), with the activations'
    half / mid range and the norms' eps; None when the layer cannot run fused (another layout, a kernel off)."""
    norms, linears, attentions = _parts(layer)
    if not native.vnni() or not all(isinstance(q, DynamicInt8Linear) and q.native and q.vnni is not None
                                    for q in linears):
        return None
    if not all(a.native for a in attentions):
        return None
    if len({(q.half, q.mid) for q in linears}) != 1 or len({n.eps for n in norms}) != 1:
        return None
    if any(n.weight is None or n.bias is None for n in norms):
        return None
    return ([t for n in norms for t in (n.weight, n.bias)], [t for q in linears for t in q.vnni],
            linears[0].half, linears[0].mid, norms[0].eps)


def cached_args(layer: nn.Module) -> LayerArgs | None:
    """`layer_args`, computed again after any kernel switch (`native`, `reduce_range`, ...) was set anywhere."""
    cached = getattr(layer, "_fused", None)
    if cached is None or cached[0] != native.generation:
        cached = (native.generation, layer_args(layer))
        layer._fused = cached
    return cached[1]


def runner(layers: Sequence[nn.Module], groups: Sequence, masks: list[torch.Tensor | None],
           spans: list[tuple[int, int]], x: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """`run(x, i)`: layer i of this decode step in one call, or None where the step cannot run fused (any layer
    or request the C++ kernels do not take: then `Layer.decode` runs, as it would anyway)."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    args = [cached_args(layer) for layer in layers]
    if any(a is None for a in args):
        return None
    cross = hasattr(layers[0], "cross_attn")
    first = [g.cache.k[0] for g in groups]
    if not all(native.attention_usable(x, k) for k in first) or any(not isinstance(g.pos, int) for g in groups):
        return None
    if cross and any(g.cond.valid is None or g.cond.k is None for g in groups):
        return None
    bounds = [0, *(b for _, b in spans)]
    pos = [g.pos for g in groups]
    valids = [native.slot_valid(m, g.rows) for g, m in zip(groups, masks)]
    text_valids = [g.cond.valid for g in groups] if cross else []

    def run(x: torch.Tensor, i: int) -> torch.Tensor:
        norms, linears, half, mid, eps = args[i]  # type: ignore[misc]
        k = [g.cache.k[i] for g in groups]
        v = [g.cache.v[i] for g in groups]
        text_k = [g.cond.k[i] for g in groups] if cross else []
        text_v = [g.cond.v[i] for g in groups] if cross else []
        return native.decode_layer(x, norms, linears, half, mid, eps, bounds, pos, k, v, valids, text_k, text_v,
                                   text_valids)

    return run
