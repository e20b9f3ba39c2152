"""A full audiocraft EnCodec (an export's compression_state_dict.bin that holds the model itself, not a reference
to a transformers repo), mapped onto the transformers EnCodec layout that codec.py loads.

audiocraft's EnCodec is SEANet (encoder / decoder as one nn.Sequential each) + a residual VQ; transformers ported
it with the same layer indices, so the mapping is by name: `encoder.model.{i}.conv.conv.*` ->
`encoder.layers.{i}.conv.*` (a transposed conv's `convtr.convtr` likewise), the residual blocks' and shortcuts'
inner convs the same way, `encoder.model.{i}.lstm.*` -> `encoder.layers.{i}.lstm.*`, and
`quantizer.vq.layers.{k}._codebook.*` -> `quantizer.layers.{k}.codebook.*`. The architecture comes from the
export's xp.cfg (`seanet`, `rvq`, `encodec`); settings codec.py does not run are refused by name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from .errors import CheckpointError

# xp.cfg settings codec.py runs only one way: (path, the value it runs)
MUST = (("compression_model", "encodec"), ("encodec.autoencoder", "seanet"), ("encodec.quantizer", "rvq"),
        ("encodec.renormalize", False), ("seanet.norm", "weight_norm"), ("seanet.activation", "ELU"),
        ("seanet.activation_params", {"alpha": 1.0}), ("seanet.disable_norm_outer_blocks", 0),
        ("seanet.decoder.final_activation", None), ("channels", 1))
RULES = [  # audiocraft key -> transformers key (applied in order)
    (re.compile(r"^(encoder|decoder)\.model\.(\d+)\."), r"\1.layers.\2."),
    (re.compile(r"\.(conv\.conv|convtr\.convtr)\."), ".conv."),
    (re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.(embed|embed_avg|cluster_size|inited)$"),
     r"quantizer.layers.\1.codebook.\2"),
]


def setting(cfg: Mapping[str, Any], path: str, default: Any = ...) -> Any:
    """The xp.cfg setting at a dotted `path`; `default` when absent (none given: CheckpointError naming it)."""
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is ...:
                raise CheckpointError(f"xp.cfg: missing setting {path}")
            return default
        node = node[part]
    return node


OPTIONAL = {"encodec.renormalize", "seanet.activation", "seanet.activation_params", "seanet.disable_norm_outer_blocks",
            "seanet.decoder.final_activation"}  # absent: audiocraft's default, which is the value we run


def config(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """transformers' EncodecConfig fields (what config.CodecConfig reads) for an audiocraft EnCodec config."""
    for path, want in MUST:
        got = setting(cfg, path, want if path in OPTIONAL else None)
        if got != want:
            raise CheckpointError(f"{where}: the EnCodec's xp.cfg sets {path} = {got!r}; this engine runs {want!r}")
    seanet, rvq = setting(cfg, "seanet"), setting(cfg, "rvq")
    if setting(cfg, "seanet.encoder", None) or set(setting(cfg, "seanet.decoder", {}) or {}) - {"trim_right_ratio",
                                                                                   "final_activation",
                                                                                   "final_activation_params"}:
        raise CheckpointError(f"{where}: the EnCodec's encoder and decoder differ (seanet.encoder / seanet.decoder "
                              "overrides), which this engine does not run")
    ratios = [int(r) for r in seanet["ratios"]]
    frame_rate = math.ceil(int(cfg["sample_rate"]) / math.prod(ratios))
    bits = math.ceil(math.log2(int(rvq["bins"])))
    return {"model_type": "encodec", "sampling_rate": int(cfg["sample_rate"]), "audio_channels": 1,
            "normalize": False, "chunk_length_s": None, "overlap": None, "hidden_size": int(seanet["dimension"]),
            "codebook_dim": int(seanet["dimension"]), "num_filters": int(seanet["n_filters"]),
            "num_residual_layers": int(seanet["n_residual_layers"]), "upsampling_ratios": ratios,
            "norm_type": "weight_norm", "kernel_size": int(seanet["kernel_size"]),
            "last_kernel_size": int(seanet["last_kernel_size"]),
            "residual_kernel_size": int(seanet["residual_kernel_size"]),
            "dilation_growth_rate": int(seanet["dilation_base"]),
            "use_causal_conv": bool(setting(cfg, "encodec.causal", False)),
            "pad_mode": str(seanet["pad_mode"]), "compress": int(seanet["compress"]),
            "num_lstm_layers": int(seanet["lstm"]),
            "trim_right_ratio": float(setting(cfg, "seanet.decoder.trim_right_ratio", 1.0)),
            "codebook_size": int(rvq["bins"]), "use_conv_shortcut": not bool(seanet["true_skip"]),
            # config.CodecConfig derives the number of codebooks from the largest bandwidth
            "target_bandwidths": [int(rvq["n_q"]) * frame_rate * bits / 1000]}


def tensors(state: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The EnCodec's state in transformers' names, under `audio_encoder.`."""
    out = {}
    for key, t in state.items():
        name = key
        for pattern, repl in RULES:
            name = pattern.sub(repl, name)
        if not name.startswith(("encoder.layers.", "decoder.layers.", "quantizer.layers.")):
            raise CheckpointError(f"{where}: EnCodec parameter {key!r} has no place in this engine's codec")
        out[f"audio_encoder.{name}"] = t
    return out
