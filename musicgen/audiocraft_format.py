"""audiocraft's own export (what its training writes and `MusicGen.get_pretrained(folder)` loads), converted once
into the transformers layout the engine loads.

An export is two torch pickles: `state_dict.bin` = {'best_state': the LM's state dict, 'xp.cfg': the training
config as YAML, 'version', 'exported'} and `compression_state_dict.bin` = {'pretrained': 'facebook/encodec_32khz'}
(a reference to a transformers EnCodec repo) or the same structure as the LM's for a full audiocraft EnCodec.
Community fine-tunes (nateraw/musicgen-songstarter-v0.2, ...) are published this way.

Conversion (`transformers_folder`): the pickles are read tensors-only (convert.safe_torch_load: any global
outside torch's allow-list is refused by name before anything is unpickled), memory-mapped; the config is
checked: every setting that changes the numbers and that we do not run exactly as audiocraft does is refused
by name before a weight is read (see `ExportConfig.from_xp`). The text encoder, which audiocraft does not store
unless it was fine-tuned, comes from the Hub repo the config names (t5-base, ...), into the HF cache. The output
is a complete transformers-layout folder (config.json, tokenizer, model.safetensors: the LM renamed and its
packed q/k/v split, T5's encoder and the EnCodec copied: the referenced transformers repo's, or a full audiocraft
EnCodec mapped by audiocraft_codec.py), written atomically next to the export like convert.py's
copies, and every later load reads only it (offline too).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open

from . import audiocraft_codec, convert, hub
from .errors import CheckpointError

LM_FILE, COMPRESSION_FILE = hub.AUDIOCRAFT_PATTERNS
PATTERNS = hub.AUDIOCRAFT_PATTERNS
FORMAT, FORMAT_VERSION = "musicgen-audiocraft-export", 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
LM_PREFIX = "decoder.model.decoder."  # transformers' MusicgenForConditionalGeneration keys of the LM body
TEXT_PROJ = "condition_provider.conditioners.description.output_proj."
CHROMA_PROJ = "condition_provider.conditioners.self_wav.output_proj."
TEXT_T5 = "condition_provider.conditioners.description.t5."  # a fine-tuned T5 (finetune: true) is stored here
# buffers the chroma extractor computes (its filter bank and STFT window): not weights
IGNORED = re.compile(r"condition_provider\.conditioners\.self_wav\.chroma\.(fbanks|spec\.window)$")


def is_export(folder: Path) -> bool:
    """An audiocraft export (and not a transformers-layout folder, which the official repos also are)."""
    return (folder / LM_FILE).is_file() and not (folder / "config.json").is_file()


# ------------------------------------------------------------------------------------------------ config
def _resolve(cfg: Any, root: dict[str, Any]) -> Any:
    """OmegaConf's plain interpolations `${a.b}` (to_yaml keeps them) resolved against the config's root."""
    if isinstance(cfg, dict):
        return {k: _resolve(v, root) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [_resolve(v, root) for v in cfg]
    if isinstance(cfg, str) and (m := re.fullmatch(r"\$\{([\w.]+)\}", cfg)):
        node: Any = root
        for part in m.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise CheckpointError(f"xp.cfg: {cfg} refers to a setting that is not there")
            node = node[part]
        return _resolve(node, root)
    return cfg


def _yaml_config(xp: str, where: str) -> dict[str, Any]:
    """An export's xp.cfg (OmegaConf's YAML) as plain dicts, interpolations resolved."""
    try:
        raw = yaml.safe_load(xp)
    except yaml.YAMLError as e:
        raise CheckpointError(f"{where}: xp.cfg is not a YAML config ({e})") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: xp.cfg is not a config mapping")
    return _resolve(raw, raw)


_at = audiocraft_codec.setting


# Settings that change the numbers: the value we run (audiocraft's default for MusicGen). Anything else is refused.
MUST = {
    "lm_model": "transformer_lm",
    "transformer_lm.activation": "gelu",
    "transformer_lm.norm_first": True,
    "transformer_lm.norm": "layer_norm",
    "transformer_lm.bias_ff": False,
    "transformer_lm.bias_attn": False,
    "transformer_lm.bias_proj": False,
    "transformer_lm.causal": True,
    "transformer_lm.past_context": None,
    "transformer_lm.layer_scale": None,
    "transformer_lm.positional_embedding": "sin",
    "transformer_lm.max_period": 10000,
    "transformer_lm.positional_scale": 1.0,
    "transformer_lm.xpos": False,
    "transformer_lm.qk_layer_norm": False,
    "transformer_lm.qk_layer_norm_cross": False,
    "transformer_lm.kv_repeat": 1,
    "transformer_lm.two_step_cfg": False,
    "codebooks_pattern.modeling": "delay",
    "codebooks_pattern.delay.flatten_first": 0,
    "codebooks_pattern.delay.empty_initial": 0,
    "fuser.cross_attention_pos_emb": False,
    "fuser.sum": [],
    "fuser.input_interpolate": [],
    "conditioners.description.model": "t5",
    "conditioners.description.t5.normalize_text": False,
}
DEFAULTS = {"transformer_lm.max_period": 10000, "transformer_lm.positional_scale": 1.0, "transformer_lm.xpos": False,
            "transformer_lm.kv_repeat": 1, "transformer_lm.two_step_cfg": False, "transformer_lm.past_context": None,
            "transformer_lm.layer_scale": None, "transformer_lm.qk_layer_norm": False,
            "transformer_lm.qk_layer_norm_cross": False, "codebooks_pattern.delay.flatten_first": 0,
            "codebooks_pattern.delay.empty_initial": 0, "fuser.cross_attention_pos_emb": False, "fuser.sum": [],
            "fuser.input_interpolate": [], "conditioners.description.t5.normalize_text": False,
            "transformer_lm.positional_embedding": "sin", "transformer_lm.norm": "layer_norm"}
MELODY_MUST = {"conditioners.self_wav.model": "chroma_stem", "conditioners.self_wav.chroma_stem.n_chroma": 12,
               "conditioners.self_wav.chroma_stem.argmax": True, "conditioners.self_wav.chroma_stem.radix2_exp": 14,
               "conditioners.self_wav.chroma_stem.match_len_on_eval": False}


@dataclass(frozen=True)
class ExportConfig:
    """The architecture an export's xp.cfg describes, as far as the engine runs it."""

    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    n_q: int  # codebooks (8 for stereo: L0 R0 L1 R1 ...)
    card: int
    channels: int
    text_encoder: str  # the Hub repo of the T5 the prompts go through (t5-base, ...)
    melody: bool
    sample_rate: int
    segment_seconds: float
    cfg_coef: float

    @classmethod
    def from_xp(cls, xp: str, where: str) -> ExportConfig:
        cfg = _yaml_config(xp, where)
        melody = _at(cfg, "conditioners.self_wav", None) is not None
        for path, want in (MUST | (MELODY_MUST if melody else {})).items():
            got = _at(cfg, path, DEFAULTS.get(path, ...))
            if got != want and not (isinstance(want, float) and isinstance(got, (int, float)) and got == want):
                raise CheckpointError(f"{where}: xp.cfg sets {path} = {got!r}; this engine runs only {want!r} (the "
                                      "released MusicGen models' setting), so this model cannot be run exactly")
        fuser = (_at(cfg, "fuser.cross"), _at(cfg, "fuser.prepend"))
        want_fuser = ([], ["self_wav", "description"]) if melody else (["description"], [])
        if fuser != want_fuser:
            raise CheckpointError(f"{where}: xp.cfg fuses conditions as cross={fuser[0]} prepend={fuser[1]}; this "
                                  f"engine runs cross={want_fuser[0]} prepend={want_fuser[1]}")
        extra = set(_at(cfg, "conditioners")) - {"description", "self_wav", "args"}
        if extra:
            raise CheckpointError(f"{where}: xp.cfg has conditioners {sorted(extra)}, which this engine cannot run")
        lm = _at(cfg, "transformer_lm")
        n_q, channels = int(lm["n_q"]), int(_at(cfg, "channels", 1))
        delays = [int(d) for d in _at(cfg, "codebooks_pattern.delay.delays")]
        if channels not in (1, 2) or delays != [k // channels for k in range(n_q)]:
            raise CheckpointError(f"{where}: xp.cfg has {channels} channel(s), {n_q} codebooks and delays {delays}; "
                                  "this engine runs the delay pattern 0, 1, 2, 3 (stereo: 0, 0, 1, 1, ...)")
        if channels == 2 and _at(cfg, "interleave_stereo_codebooks.per_timestep", False):
            raise CheckpointError(f"{where}: xp.cfg sets interleave_stereo_codebooks.per_timestep, which this engine "
                                  "does not run")
        dim, hidden = int(lm["dim"]), float(lm.get("hidden_scale", 4))
        return cls(dim=dim, num_heads=int(lm["num_heads"]), num_layers=int(lm["num_layers"]),
                   ffn_dim=int(hidden * dim), n_q=n_q, card=int(lm["card"]), channels=channels,
                   text_encoder=str(_at(cfg, "conditioners.description.t5.name")), melody=melody,
                   sample_rate=int(_at(cfg, "sample_rate")),
                   segment_seconds=float(_at(cfg, "dataset.segment_duration", 30.0)),
                   cfg_coef=float(_at(cfg, "classifier_free_guidance.inference_coef", 3.0)))

    def decoder_config(self) -> dict[str, Any]:
        """transformers' MusicgenDecoderConfig fields (what config.LMConfig reads)."""
        return {"model_type": "musicgen_decoder", "vocab_size": self.card, "hidden_size": self.dim,
                "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads, "ffn_dim": self.ffn_dim,
                "num_codebooks": self.n_q, "audio_channels": self.channels, "max_position_embeddings": 2048,
                "activation_function": "gelu", "scale_embedding": False, "pad_token_id": self.card,
                "bos_token_id": self.card}

    @property
    def chroma_length(self) -> int:
        """Chroma frames of one training segment: audiocraft's STFT hop is n_fft / 4 = 4096 samples, centred."""
        return int(self.segment_seconds * self.sample_rate) // 4096 + 1


# ------------------------------------------------------------------------------------------------ weights
def _lm_key(key: str) -> str | list[str] | None:
    """audiocraft LM key -> transformers key(s) (a packed in_proj_weight -> q, k, v), None: not a weight we load."""
    if IGNORED.match(key):
        return None
    rules: list[tuple[str, Callable[[re.Match], str | list[str]]]] = [
        (r"emb\.(\d+)\.weight", lambda m: f"{LM_PREFIX}embed_tokens.{m[1]}.weight"),
        (r"linears\.(\d+)\.weight", lambda m: f"decoder.lm_heads.{m[1]}.weight"),
        (r"out_norm\.(weight|bias)", lambda m: f"{LM_PREFIX}layer_norm.{m[1]}"),
        (r"transformer\.layers\.(\d+)\.(self_attn|cross_attention)\.(?:mha\.)?in_proj_weight",
         lambda m: [f"{LM_PREFIX}layers.{m[1]}.{_attn(m[2])}.{p}_proj.weight" for p in "qkv"]),
        (r"transformer\.layers\.(\d+)\.(self_attn|cross_attention)\.(?:mha\.)?out_proj\.weight",
         lambda m: f"{LM_PREFIX}layers.{m[1]}.{_attn(m[2])}.out_proj.weight"),
        (r"transformer\.layers\.(\d+)\.linear([12])\.weight", lambda m: f"{LM_PREFIX}layers.{m[1]}.fc{m[2]}.weight"),
        (r"transformer\.layers\.(\d+)\.(norm1|norm_cross|norm2)\.(weight|bias)",
         lambda m: f"{LM_PREFIX}layers.{m[1]}.{_NORMS[m[2]]}.{m[3]}"),
        (re.escape(TEXT_PROJ) + r"(weight|bias)", lambda m: f"enc_to_dec_proj.{m[1]}"),
        (re.escape(CHROMA_PROJ) + r"(weight|bias)", lambda m: f"audio_enc_to_dec_proj.{m[1]}"),
        (re.escape(TEXT_T5) + r"(.+)", lambda m: f"text_encoder.{m[1]}"),
    ]
    for pattern, name in rules:
        if m := re.fullmatch(pattern, key):
            return name(m)
    raise CheckpointError(f"{LM_FILE}: parameter {key!r} has no place in this engine's MusicGen (another "
                          "architecture, or a setting xp.cfg does not show)")


_NORMS = {"norm1": "self_attn_layer_norm", "norm_cross": "encoder_attn_layer_norm", "norm2": "final_layer_norm"}


def _attn(name: str) -> str:
    return "self_attn" if name == "self_attn" else "encoder_attn"


def lm_tensors(state: Mapping[str, torch.Tensor], cfg: ExportConfig) -> dict[str, torch.Tensor]:
    """The LM's state in transformers' names; views of the (memory-mapped) input, nothing copied."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        names = _lm_key(key)
        if names is None:
            continue
        if isinstance(names, list):  # packed [3 D, D] -> q, k, v
            if tuple(t.shape) != (3 * cfg.dim, cfg.dim):
                raise CheckpointError(f"{LM_FILE}: {key} has shape {tuple(t.shape)}, xp.cfg implies "
                                      f"({3 * cfg.dim}, {cfg.dim})")
            out.update(zip(names, t.split(cfg.dim, dim=0)))
        else:
            out[names] = t
    return out


def _safetensors(folder: Path, prefix: str, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The tensors of a transformers repo's weights (single file or shards) that `keep`, under `prefix`."""
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for name in files:
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} has no {name} (safetensors weights are needed)")
        with safe_open(folder / name, framework="pt") as f:
            out.update({prefix + k: f.get_tensor(k) for k in f.keys() if keep(k)})  # noqa: SIM118
    return out


# ------------------------------------------------------------------------------------------------ conversion
def _read(path: Path) -> dict[str, Any]:
    pkg = convert.safe_torch_load(path, "an audiocraft export")
    if not isinstance(pkg, dict):
        raise CheckpointError(f"{path} does not hold an audiocraft export (a dict), but a {type(pkg).__name__}")
    return pkg


def _compression(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """EnCodec's transformers config and weights (under audio_encoder.) for the export's compression model."""
    path = folder / COMPRESSION_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has {LM_FILE} but no {COMPRESSION_FILE} (the audio codec of the export)")
    pkg = _read(path)
    name = pkg.get("pretrained")
    if not isinstance(name, str):  # a full audiocraft EnCodec (what the official exports hold)
        if not isinstance(pkg.get("xp.cfg"), str) or not isinstance(pkg.get("best_state"), dict):
            raise CheckpointError(f"{path} is neither a reference to an EnCodec repo ('pretrained') nor an "
                                  "audiocraft EnCodec ('best_state' and 'xp.cfg')")
        cfg = _yaml_config(pkg["xp.cfg"], str(path))
        return audiocraft_codec.config(cfg, str(path)), audiocraft_codec.tensors(pkg["best_state"], str(path))
    codec = hub.download_repo(name.removeprefix("//pretrained/"), what="the export's audio codec")
    config = json.loads((codec / "config.json").read_text())
    return config, _safetensors(codec, "audio_encoder.", lambda k: True)


def _text_encoder(name: str) -> tuple[Path, dict[str, Any]]:
    folder = hub.download_repo(name, what="the export's text encoder")
    for f in ("config.json", "tokenizer.json"):
        if not (folder / f).is_file():
            raise CheckpointError(f"the text encoder {name} has no {f}")
    return folder, json.loads((folder / "config.json").read_text())


def _identity(folder: Path) -> str:
    """A short hash of the export's files: blob names in the HF cache, else sizes and mtimes."""
    parts = [f"{FORMAT}-{FORMAT_VERSION}"]
    for name in PATTERNS:
        path = folder / name
        blob = path.resolve()
        st = blob.stat()
        parts.append(f"{name}:{blob.name if blob.parent.name == 'blobs' else f'{st.st_size}-{st.st_mtime_ns}'}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def transformers_folder(folder: Path) -> Path:
    """The converted transformers-layout copy of the export in `folder` (converted now the first time)."""
    weights = convert.BinWeights(folder, (LM_FILE,), None)  # only for where its copy goes (convert.py's rules)
    target = weights.target().with_name(f"audiocraft-{_identity(folder)}")
    if convert.is_converted(target):
        return target
    with convert.atomic_folder(target, f"the converted copy of {folder / LM_FILE}") as tmp:
        manifest = _convert_into(folder, tmp)
        convert.finish(tmp, manifest)
    return target


def _convert_into(folder: Path, out: Path) -> dict[str, Any]:
    pkg = _read(folder / LM_FILE)
    if not isinstance(pkg.get("xp.cfg"), str) or not isinstance(pkg.get("best_state"), dict):
        raise CheckpointError(f"{folder / LM_FILE} is not an audiocraft export: it lacks 'xp.cfg' or 'best_state'")
    cfg = ExportConfig.from_xp(pkg["xp.cfg"], str(folder / LM_FILE))
    lm = lm_tensors(pkg["best_state"], cfg)
    codec_config, codec = _compression(folder)
    lm |= codec
    t5_folder, t5_config = _text_encoder(cfg.text_encoder)
    if not any(k.startswith("text_encoder.") for k in lm):  # not fine-tuned: the encoder of the named T5
        lm |= _safetensors(t5_folder, "text_encoder.", lambda k: k == "shared.weight" or k.startswith("encoder."))
    config = {"model_type": "musicgen_melody" if cfg.melody else "musicgen", "text_encoder": t5_config,
              "audio_encoder": codec_config, "decoder": cfg.decoder_config()}
    if cfg.melody:
        config |= {"num_chroma": 12, "chroma_length": cfg.chroma_length}
        (out / "preprocessor_config.json").write_text(json.dumps(
            {"sampling_rate": cfg.sample_rate, "n_fft": 2**14, "hop_length": 2**12, "chunk_length": 30}))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"guidance_scale": cfg.cfg_coef}))
    for name in TOKENIZER_FILES:
        if (t5_folder / name).is_file():
            shutil.copyfile(t5_folder / name, out / name)
    convert.write_safetensors(out / "model.safetensors", lm)
    outputs = {p.name: p.stat().st_size for p in out.iterdir()}
    return {"format": convert.FORMAT, "format_version": convert.FORMAT_VERSION, "source": str(folder),
            "inputs": PATTERNS, "outputs": outputs, "export": {"dim": cfg.dim, "layers": cfg.num_layers,
                                                             "melody": cfg.melody, "channels": cfg.channels,
                                                             "text_encoder": cfg.text_encoder}}
