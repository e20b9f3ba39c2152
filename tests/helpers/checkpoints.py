"""Tiny (and real-size) random MusicGen checkpoints in the exact Hugging Face Hub file layout.

The checkpoints are built with ``transformers`` (the reference implementation) so that parity tests can
compare our from-scratch engine against it on weights that both load from the same folder.

Two on-disk layouts are produced:

* ``"current"``: what ``save_pretrained`` of the installed transformers writes today (weight norm stored as
  ``parametrizations.weight.original0/original1``, one ``model.safetensors``, tied T5 input embedding and the
  sinusoidal position table left out).
* ``"hub"``: what the official ``facebook/musicgen-*`` repositories hold (saved by transformers 4.31):
  weight norm as ``weight_g``/``weight_v``, ``decoder.model.decoder.embed_positions.weights`` present,
  ``text_encoder.encoder.embed_tokens.weight`` present as a copy of ``text_encoder.shared.weight``, optionally
  sharded with a ``model.safetensors.index.json``, plus a decoy ``pytorch_model.bin`` that a correct loader
  must never open.
* ``"bin"``: the pickle-only repos (facebook/musicgen-medium, -large): the same tensors as ``"hub"`` written the
  way transformers 4's ``save_pretrained(safe_serialization=False)`` did, as one ``pytorch_model.bin`` or (with
  ``max_shard_size``) ``pytorch_model-0000N-of-0000M.bin`` shards + ``pytorch_model.bin.index.json``, with the
  tied T5 embedding stored once under both names, and no safetensors; plus audiocraft's ``state_dict.bin`` and
  ``compression_state_dict.bin`` as decoys.

Weights are re-initialised at a scale where the text conditioning visibly changes the decoder logits and
where different audio codes decode to different audio (transformers' default init leaves the EnCodec codebooks
at zero).
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import string
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import Unigram
from torch import nn
from torch.nn.utils import parametrize
from transformers import (
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

__all__ = [
    "CORPUS",
    "LAYOUTS",
    "REAL_SMALL_CONFIG",
    "TEXT_VOCAB_SIZE",
    "T5_EMBEDDING_CHOICES",
    "TOKENIZER_VOCAB_SIZE",
    "build_checkpoint",
    "build_model",
    "build_real_size",
    "build_tokenizer",
    "bin_state_dict",
    "generation_config_dict",
    "hub_state_dict",
    "nmt_nfkc_charsmap",
    "reinit_weights",
    "save_checkpoint",
    "tiny_config",
]

LAYOUTS = ("current", "hub", "bin")

#: Size the Unigram trainer is asked for; the trained tokenizer has exactly this many entries.
TOKENIZER_VOCAB_SIZE = 300
#: The tiny T5 embedding has a few more rows than the tokenizer, like t5-base (32128 rows, 32100 tokens).
TEXT_VOCAB_SIZE = 320

#: Small training corpus of music descriptions for the tiny Unigram tokenizer.
CORPUS: tuple[str, ...] = (
    "lofi hip hop beat with mellow piano and vinyl crackle",
    "80s synthwave with driving bass and retro drum machines",
    "epic orchestral soundtrack with soaring strings and brass",
    "acoustic folk guitar ballad with soft vocals humming",
    "upbeat funk groove with slap bass and tight horns",
    "ambient drone with warm pads and distant bells",
    "jazz trio with upright bass, brushed drums and piano",
    "heavy metal riff with distorted guitars and double kick drums",
    "chill deep house track at 120 bpm with a groovy bassline",
    "reggae rhythm with offbeat guitar skanks and dub delays",
    "classical piano sonata in a minor, slow and melancholic",
    "energetic drum and bass with fast breakbeats and sub bass",
    "cinematic trailer music with huge percussion and choir",
    "smooth bossa nova with nylon guitar and gentle shakers",
    "dark techno loop with pounding kick and acid synth",
    "happy ukulele tune for a summer commercial",
    "blues shuffle with harmonica and electric guitar solo",
    "country song with banjo, fiddle and steel guitar",
    "trap beat with booming 808s and crisp hi-hats",
    "dreamy shoegaze with washed out guitars and reverb",
    "medieval tavern music with lute, flute and hand drums",
    "latin salsa with congas, timbales and a piano montuno",
    "minimal piano piece with lots of space and silence",
    "chiptune video game melody with square waves",
    "indie rock anthem with jangly guitars and big chorus",
    "soulful r&b slow jam with rhodes piano and strings",
    "afrobeat groove with polyrhythmic percussion and saxophone",
    "bollywood dance track with tabla and sitar",
    "celtic folk jig with tin whistle and bodhran",
    "gospel choir singing over a hammond organ",
    "relaxing spa music with harp and ocean waves",
    "punk rock song, fast, loud and raw",
    "disco track with four on the floor kick and string stabs",
    "k-pop inspired dance pop with catchy synth hooks",
    "sad violin melody over a quiet cello drone",
    "uplifting trance with supersaw leads and a big build up",
    "dubstep drop with wobble bass and heavy snares",
    "baroque harpsichord fugue in d major",
    "west african kora melody with soft percussion",
    "japanese koto and shakuhachi duet in a calm garden",
    "marching band with snare drums, tubas and trumpets",
    "psychedelic rock jam with fuzz guitar and organ",
    "motivational corporate background music with claps",
    "spooky halloween theme with theremin and music box",
    "tropical house with steel drums and plucked synths",
    "grunge song with sludgy guitars and angsty vocals",
    "string quartet playing a gentle waltz in 3/4 time",
    "flamenco guitar with hand claps and cajon",
    "smooth jazz saxophone solo over a mellow groove",
    "hard rock song with a screaming guitar solo at 140 bpm",
    "a calm lullaby played on a celesta",
    "futuristic sci-fi soundscape with glitchy textures",
    "new orleans brass band with sousaphone and trombones",
    "folk pop song with whistling and handclaps",
    "garage rock with a lo-fi recording and tambourine",
    "breakbeat with chopped amen breaks and rave stabs",
    "epic fantasy battle music with taiko drums",
    "romantic piano and violin duet for a wedding",
    "experimental noise music with harsh feedback",
    "a 90s hip hop instrumental with boom bap drums and jazzy samples",
)

# ----------------------------------------------------------------------------------------------------
# Real facebook/musicgen-small config.json (transformers 4.31 era), reproduced from memory of the Hub file:
# the architecture fields are exact; the sub-configs on the Hub additionally carry dozens of legacy
# PretrainedConfig defaults (do_sample, num_beams, ...) of which only a representative few are kept here.
# ----------------------------------------------------------------------------------------------------
REAL_SMALL_CONFIG: dict = {
    "_name_or_path": "facebook/musicgen-small",
    "architectures": ["MusicgenForConditionalGeneration"],
    "audio_encoder": {
        "_name_or_path": "facebook/encodec_32khz",
        "architectures": ["EncodecModel"],
        "audio_channels": 1,
        "chunk_length_s": None,
        "codebook_dim": 128,
        "codebook_size": 2048,
        "compress": 2,
        "dilation_growth_rate": 2,
        "hidden_size": 128,
        "kernel_size": 7,
        "last_kernel_size": 7,
        "model_type": "encodec",
        "norm_type": "weight_norm",
        "normalize": False,
        "num_filters": 64,
        "num_lstm_layers": 2,
        "num_residual_layers": 1,
        "overlap": None,
        "pad_mode": "reflect",
        "residual_kernel_size": 3,
        "sampling_rate": 32000,
        "target_bandwidths": [2.2],
        "torch_dtype": "float32",
        "trim_right_ratio": 1.0,
        "upsampling_ratios": [8, 5, 4, 4],
        "use_causal_conv": False,
        "use_conv_shortcut": False,
    },
    "decoder": {
        "activation_dropout": 0.0,
        "activation_function": "gelu",
        "attention_dropout": 0.0,
        "bos_token_id": 2048,
        "classifier_dropout": 0.0,
        "dropout": 0.1,
        "ffn_dim": 4096,
        "hidden_size": 1024,
        "initializer_factor": 0.02,
        "layerdrop": 0.0,
        "max_position_embeddings": 2048,
        "model_type": "musicgen_decoder",
        "num_attention_heads": 16,
        "num_codebooks": 4,
        "num_hidden_layers": 24,
        "pad_token_id": 2048,
        "scale_embedding": False,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": 2048,
    },
    "is_encoder_decoder": True,
    "model_type": "musicgen",
    "text_encoder": {
        "_name_or_path": "t5-base",
        "architectures": ["T5ForConditionalGeneration"],
        "d_ff": 3072,
        "d_kv": 64,
        "d_model": 768,
        "decoder_start_token_id": 0,
        "dense_act_fn": "relu",
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": "relu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "is_gated_act": False,
        "layer_norm_epsilon": 1e-06,
        "model_type": "t5",
        "n_positions": 512,
        "num_decoder_layers": 12,
        "num_heads": 12,
        "num_layers": 12,
        "output_past": True,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": 32128,
    },
    "torch_dtype": "float32",
    "transformers_version": "4.31.0.dev0",
}


def generation_config_dict() -> dict:
    """The contents of facebook/musicgen-small's generation_config.json (also used for the tiny models)."""
    return {
        "_from_model_config": False,
        "bos_token_id": 2048,
        "decoder_start_token_id": 2048,
        "do_sample": True,
        "guidance_scale": 3.0,
        "max_length": 1500,
        "pad_token_id": 2048,
        "transformers_version": "4.31.0.dev0",
    }


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------


def _protobuf_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Decode one level of a protobuf message into ``(field_number, value)`` pairs (no schema needed)."""

    def varint(i: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            byte = buf[i]
            i += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result, i

    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = varint(i)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == 0:
            value, i = varint(i)
        elif wire_type == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire_type == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire_type == 2:
            length, i = varint(i)
            value, i = buf[i : i + length], i + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        out.append((number, value))
    return out


@functools.lru_cache(maxsize=1)
def nmt_nfkc_charsmap() -> bytes:
    """SentencePiece's built-in ``nmt_nfkc`` precompiled charsmap: the normaliser inside t5's tokenizer.json.

    SentencePiece only exposes it inside a trained model, so a throw-away model is trained on :data:`CORPUS`
    and the bytes are read from ``ModelProto.normalizer_spec (3) .precompiled_charsmap (2)``.
    """
    import sentencepiece

    writer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=writer,
        vocab_size=60,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    normalizer_spec = next(v for n, v in _protobuf_fields(writer.getvalue()) if n == 3)
    assert isinstance(normalizer_spec, bytes)
    charsmap = next(v for n, v in _protobuf_fields(normalizer_spec) if n == 2)
    assert isinstance(charsmap, bytes) and charsmap
    return charsmap


SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def _set_pipeline(tokenizer: Tokenizer) -> None:
    """t5-base's tokenizer.json pipeline: Precompiled(nmt_nfkc) + collapse runs of spaces, Metaspace."""
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(nmt_nfkc_charsmap()), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)


def _train_tokenizer() -> Tokenizer:
    """Train a T5-like Unigram tokenizer on :data:`CORPUS`, deterministically.

    ``UnigramTrainer`` picks the same 300 pieces on every run, but its scores (and so the piece order, i.e.
    the ids) vary from process to process (parallel EM, hash-map order). So only the trained piece set is
    kept; scores are re-estimated deterministically as log relative frequencies of each piece in the
    pre-tokenized corpus, and pieces are ordered by (-score, piece) after ``<pad>``=0, ``</s>``=1,
    ``<unk>``=2.
    """
    trained = Tokenizer(Unigram())
    _set_pipeline(trained)
    trainer = trainers.UnigramTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        unk_token="<unk>",
        show_progress=False,
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
    )
    trained.train_from_iterator(list(CORPUS), trainer=trainer)
    pieces = sorted(set(trained.get_vocab()) - set(SPECIAL_TOKENS))

    words: list[str] = []
    for sentence in CORPUS:
        normalized = trained.normalizer.normalize_str(sentence)
        words += [word for word, _ in trained.pre_tokenizer.pre_tokenize_str(normalized)]
    counts = {piece: sum(word.count(piece) for word in words) + 0.1 for piece in pieces}
    total = sum(counts.values())
    scores = {piece: round(math.log(count / total), 6) for piece, count in counts.items()}
    ordered = sorted(pieces, key=lambda piece: (-scores[piece], piece))
    vocab = [(token, 0.0) for token in SPECIAL_TOKENS] + [(piece, scores[piece]) for piece in ordered]

    tokenizer = Tokenizer(Unigram(vocab, unk_id=SPECIAL_TOKENS.index("<unk>"), byte_fallback=False))
    _set_pipeline(tokenizer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != [0, 1, 2]:
        raise AssertionError(f"special token ids are {ids}, expected [0, 1, 2]")
    if tokenizer.get_vocab_size() > TEXT_VOCAB_SIZE:
        raise AssertionError(f"tokenizer vocab {tokenizer.get_vocab_size()} exceeds {TEXT_VOCAB_SIZE}")
    return tokenizer


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """The trained tokenizer serialised as tokenizer.json text (trained once per process)."""
    return _train_tokenizer().to_str(pretty=True)


def build_tokenizer(folder: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (T5-like) into ``folder``.

    tokenizer.json is a real Unigram tokenizer trained with the ``tokenizers`` library: ``<pad>`` = 0,
    ``</s>`` = 1, ``<unk>`` = 2, SentencePiece nmt_nfkc (Precompiled) + whitespace-run normaliser, Metaspace
    pre-tokenizer and decoder, and a post-processor that appends ``</s>``. No ``spiece.model`` is written (the
    Hub repos have one; our loader never reads it).

    Note: transformers 5.23's ``T5Tokenizer`` keeps only the vocab and the Precompiled charsmap of
    tokenizer.json and rebuilds the rest (WhitespaceSplit + Metaspace, no ``Replace``), so it drops
    leading/trailing whitespace that ``tokenizers.Tokenizer.from_file`` turns into a lone ``▁`` token.
    Both agree on ``" ".join(text.split())``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
    tokenizer_config = {
        "additional_special_tokens": [],
        "clean_up_tokenization_spaces": True,
        "eos_token": "</s>",
        "extra_ids": 0,
        "model_max_length": 512,
        "pad_token": "<pad>",
        "processor_class": "MusicgenProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    }
    special_tokens_map = {
        "additional_special_tokens": [],
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    _write_json(folder / "tokenizer_config.json", tokenizer_config)
    _write_json(folder / "special_tokens_map.json", special_tokens_map)


# ----------------------------------------------------------------------------------------------------
# Config and model
# ----------------------------------------------------------------------------------------------------


def tiny_config(audio_channels: int = 1) -> MusicgenConfig:
    """A tiny MusicGen config: T5 32 wide, EnCodec 32 kHz with 16-dim latents, decoder 48 wide.

    ``audio_channels=2`` gives the stereo variant (8 interleaved codebooks, same mono EnCodec).
    """
    if audio_channels not in (1, 2):
        raise ValueError(f"audio_channels must be 1 or 2, got {audio_channels}")
    text_encoder = T5Config(
        vocab_size=TEXT_VOCAB_SIZE,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj="relu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    audio_encoder = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=2048,
        target_bandwidths=[2.2],
        hidden_size=16,
        codebook_dim=16,
        num_filters=4,
        num_lstm_layers=2,
        num_residual_layers=1,
        use_conv_shortcut=False,
        use_causal_conv=False,
        pad_mode="reflect",
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        norm_type="weight_norm",
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=2048,
        max_position_embeddings=2048,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=96,
        num_codebooks=4 * audio_channels,
        audio_channels=audio_channels,
        activation_function="gelu",
        dropout=0.1,
        pad_token_id=2048,
        bos_token_id=2048,
    )
    return MusicgenConfig(text_encoder=text_encoder, audio_encoder=audio_encoder, decoder=decoder)


def _normal(shape: torch.Size | tuple[int, ...], std: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32) * std


def _conv_fan_in(module: nn.Conv1d | nn.ConvTranspose1d) -> int:
    """Fan-in of a 1-d (transposed) convolution: input taps summed into one output sample."""
    kernel = module.kernel_size[0]
    if isinstance(module, nn.ConvTranspose1d):
        # weight is [in, out, k]; each output sample sees in_channels * k / stride taps.
        return max(1, module.in_channels * kernel // module.stride[0])
    return module.in_channels // module.groups * kernel


def _set_conv_weight(module: nn.Conv1d | nn.ConvTranspose1d, gen: torch.Generator) -> None:
    """Give a (possibly weight-normed) conv an effective weight ~ N(0, 1/fan_in).

    For weight norm, ``original1`` (v) is the target weight scaled by a random positive factor per dim-0
    slice and ``original0`` (g) is the target's norm, so g != ||v|| and a loader that swaps or ignores g is
    caught: effective weight = g * v / ||v|| (norm over every dim except 0) = target.
    """
    fan_in = _conv_fan_in(module)
    if parametrize.is_parametrized(module, "weight"):
        v_param = module.parametrizations.weight.original1
        g_param = module.parametrizations.weight.original0
        target = _normal(v_param.shape, 1.0 / math.sqrt(fan_in), gen)
        dims = tuple(range(1, target.dim()))
        g = target.norm(dim=dims, keepdim=True)
        scale = 0.5 + 1.5 * torch.rand(g.shape, generator=gen)
        v_param.copy_(target * scale)
        g_param.copy_(g)
    else:
        module.weight.copy_(_normal(module.weight.shape, 1.0 / math.sqrt(fan_in), gen))
    if module.bias is not None:
        module.bias.copy_(_normal(module.bias.shape, 0.02, gen))


@torch.no_grad()
def reinit_weights(model: nn.Module, seed: int = 0) -> None:
    """Deterministically re-initialise every weight of a MusicGen model at a 'conditioning matters' scale.

    Linear: N(0, 1/in_features), bias N(0, 0.02). Conv / ConvTranspose (weight-normed or not): effective
    weight N(0, 1/fan_in). LSTM: N(0, 1/hidden), biases N(0, 0.02). Embedding (incl. T5 relative attention
    bias): N(0, 1) (one-hot input, fan-in 1). LayerNorm: weight 1 + N(0, 0.1), bias N(0, 0.1). T5 RMS norm:
    1 + N(0, 0.1). EnCodec codebooks: embed N(0, 1) (embed_avg = embed, cluster_size 1, inited 1).
    Raises if a parameter was left untouched.
    """
    gen = torch.Generator().manual_seed(seed)
    touched: set[int] = set()

    def mark(*tensors: torch.Tensor | None) -> None:
        for t in tensors:
            if t is not None:
                touched.add(id(t))

    for _, module in model.named_modules():
        if isinstance(module, nn.Linear):
            module.weight.copy_(_normal(module.weight.shape, 1.0 / math.sqrt(module.in_features), gen))
            if module.bias is not None:
                module.bias.copy_(_normal(module.bias.shape, 0.02, gen))
            mark(module.weight, module.bias)
        elif isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
            _set_conv_weight(module, gen)
            if parametrize.is_parametrized(module, "weight"):
                mark(module.parametrizations.weight.original0, module.parametrizations.weight.original1)
            else:
                mark(module.weight)
            mark(module.bias)
        elif isinstance(module, nn.LSTM):
            for name, param in module.named_parameters():
                std = 1.0 / math.sqrt(module.hidden_size) if name.startswith("weight") else 0.02
                param.copy_(_normal(param.shape, std, gen))
                mark(param)
        elif isinstance(module, nn.Embedding):
            module.weight.copy_(_normal(module.weight.shape, 1.0, gen))
            mark(module.weight)
        elif isinstance(module, nn.LayerNorm):
            module.weight.copy_(1.0 + _normal(module.weight.shape, 0.1, gen))
            module.bias.copy_(_normal(module.bias.shape, 0.1, gen))
            mark(module.weight, module.bias)
        elif type(module).__name__ == "T5LayerNorm":
            module.weight.copy_(1.0 + _normal(module.weight.shape, 0.1, gen))
            mark(module.weight)
        elif type(module).__name__ == "EncodecEuclideanCodebook":
            _fill_codebook(module, gen)

    untouched = [name for name, p in model.named_parameters() if id(p) not in touched]
    if untouched:
        raise AssertionError(f"parameters not re-initialised: {untouched}")


def _fill_codebook(codebook: nn.Module, gen: torch.Generator) -> None:
    """Fill an EnCodec codebook (buffers that transformers initialises to zero) with N(0, 1)."""
    embed = torch.randn(codebook.embed.shape, generator=gen, dtype=torch.float32)
    codebook.embed.copy_(embed)
    codebook.embed_avg.copy_(embed)
    codebook.cluster_size.fill_(1.0)
    codebook.inited.fill_(1.0)


def build_model(seed: int = 0, audio_channels: int = 1) -> MusicgenForConditionalGeneration:
    """Tiny MusicGen (eval, float32) with deterministic weights at a scale where conditioning matters."""
    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(tiny_config(audio_channels))
    model = model.to(torch.float32).eval()
    reinit_weights(model, seed)
    model.generation_config = GenerationConfig(**_generation_kwargs())
    return model


def _generation_kwargs() -> dict:
    skip = ("_from_model_config", "transformers_version")
    return {k: v for k, v in generation_config_dict().items() if k not in skip}


# ----------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The table transformers' MusicgenSinusoidalPositionalEmbedding holds (cos first, then sin)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    return table


T5_EMBEDDING_CHOICES = ("both", "shared", "embed_tokens")


def hub_state_dict(
    model: MusicgenForConditionalGeneration, t5_embedding: str = "both"
) -> dict[str, torch.Tensor]:
    """The model's tensors under the names the official Hub files use (transformers 4.31 layout).

    ``*.parametrizations.weight.original0/1`` -> ``*.weight_g/weight_v``; adds
    ``decoder.model.decoder.embed_positions.weights``. ``t5_embedding`` says which names hold the (tied) T5
    input embedding: ``"both"`` (``text_encoder.shared.weight`` plus a copy as
    ``text_encoder.encoder.embed_tokens.weight``), ``"shared"`` only, or ``"embed_tokens"`` only (what a
    duplicate-dropping converter that keeps the alphabetically first name would write). Every tensor is
    contiguous and owns its storage.
    """
    if t5_embedding not in T5_EMBEDDING_CHOICES:
        raise ValueError(f"t5_embedding must be one of {T5_EMBEDDING_CHOICES}, got {t5_embedding!r}")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        new_key = key.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        )
        out[new_key] = tensor.detach().to(torch.float32).contiguous().clone()
    out["text_encoder.encoder.embed_tokens.weight"] = out["text_encoder.shared.weight"].clone()
    if t5_embedding == "shared":
        del out["text_encoder.encoder.embed_tokens.weight"]
    elif t5_embedding == "embed_tokens":
        del out["text_encoder.shared.weight"]
    positions = model.decoder.model.decoder.embed_positions
    out["decoder.model.decoder.embed_positions.weights"] = _sinusoid_table(
        positions.num_positions, positions.embedding_dim
    )
    return dict(sorted(out.items()))


def _split_shards(tensors: dict[str, torch.Tensor], shards: int) -> list[dict[str, torch.Tensor]]:
    """Split ``tensors`` (in key order) into ``shards`` non-empty groups of roughly equal byte size."""
    keys = list(tensors)
    if not 1 <= shards <= len(keys):
        raise ValueError(f"cannot split {len(keys)} tensors into {shards} shards")
    sizes = [tensors[k].numel() * tensors[k].element_size() for k in keys]
    total = sum(sizes)
    groups: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    running = 0
    index = 0
    for i, (key, size) in enumerate(zip(keys, sizes, strict=True)):
        remaining_keys = len(keys) - i
        remaining_groups = shards - index - 1
        must_advance = remaining_keys <= remaining_groups and groups[index]
        boundary = total * (index + 1) / shards
        if groups[index] and index < shards - 1 and (running >= boundary or must_advance):
            index += 1
        groups[index][key] = tensors[key]
        running += size
    if any(not g for g in groups):
        raise AssertionError("empty shard")
    return groups


def _save_hub_weights(tensors: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    metadata = {"format": "pt"}
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)
        return
    weight_map: dict[str, str] = {}
    total_size = 0
    for n, group in enumerate(_split_shards(tensors, shards), start=1):
        name = f"model-{n:05d}-of-{shards:05d}.safetensors"
        save_file(group, str(folder / name), metadata=metadata)
        for key, tensor in group.items():
            weight_map[key] = name
            total_size += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(folder / "model.safetensors.index.json", index)


def bin_state_dict(model: MusicgenForConditionalGeneration) -> dict[str, torch.Tensor]:
    """What transformers 4.31 passed to ``torch.save``: the hub-layout tensors, with the tied T5 input embedding
    under both names as one tensor (its storage is pickled once and both names load as views of it)."""
    tensors = hub_state_dict(model, "shared")
    tensors["text_encoder.encoder.embed_tokens.weight"] = tensors["text_encoder.shared.weight"]
    return dict(sorted(tensors.items()))


def _save_bin_weights(tensors: dict[str, torch.Tensor], folder: Path, max_shard_size: int | None) -> None:
    """transformers 4's ``save_pretrained(safe_serialization=False)``, re-done here by hand because no installed
    writer produces it: transformers 5 only writes safetensors (its save_pretrained lost ``safe_serialization``).
    Same steps as transformers 4.38+: the shard plan of huggingface_hub's ``split_torch_state_dict_into_shards``
    with ``filename_pattern="pytorch_model{suffix}.bin"`` (tensors sharing storage stay in one shard), one
    ``torch.save`` per shard, and when sharded ``pytorch_model.bin.index.json`` =
    ``{"metadata": {"total_size": ...}, "weight_map": {...}}`` dumped with ``indent=2, sort_keys=True``. (4.31,
    which saved the Hub files, had its own ``shard_checkpoint`` with the same names, index and 10GB default.)"""
    split = split_torch_state_dict_into_shards(
        tensors, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=max_shard_size or "10GB"
    )
    for name, keys in split.filename_to_tensors.items():
        torch.save({key: tensors[key] for key in keys}, folder / name)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _save_audiocraft_decoys(folder: Path) -> None:
    """audiocraft's own exports, which every facebook/musicgen-* repo also carries (``{'best_state', 'xp.cfg',
    'version', 'exported'}``, cfg as YAML text): a correct loader never downloads nor opens them."""
    for name, key in (("state_dict.bin", "emb.0.weight"), ("compression_state_dict.bin", "quantizer.vq.embed")):
        pkg = {"best_state": {key: torch.zeros(4, 4)}, "xp.cfg": "solver: musicgen\n", "version": "1.0.0",
               "exported": True}
        torch.save(pkg, folder / name)


def _hub_config_dict(model: MusicgenForConditionalGeneration) -> dict:
    """config.json as 4.31 wrote it: ``torch_dtype`` instead of ``dtype``, old transformers_version."""
    config = copy.deepcopy(model.config.to_diff_dict())
    for section in (config, *(config.get(k, {}) for k in ("text_encoder", "audio_encoder", "decoder"))):
        if "dtype" in section:
            section["torch_dtype"] = section.pop("dtype")
    config["architectures"] = ["MusicgenForConditionalGeneration"]
    config["torch_dtype"] = "float32"
    config["transformers_version"] = "4.31.0.dev0"
    return config


def save_checkpoint(
    model: MusicgenForConditionalGeneration,
    folder: Path,
    layout: str,
    shards: int = 3,
    tokenizer: bool = True,
    t5_embedding: str = "both",
    max_shard_size: int | None = None,
) -> Path:
    """Save ``model`` into ``folder`` in the ``"current"``, ``"hub"`` or ``"bin"`` layout (see module docstring).

    Hub-layout options: ``shards`` (1 = a single model.safetensors, no index) and ``t5_embedding`` (see
    :func:`hub_state_dict`). Bin layout: ``max_shard_size`` in bytes (None: a single pytorch_model.bin). The
    tokenizer files are written by :func:`build_tokenizer` unless ``tokenizer`` is False.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "current":
        model.save_pretrained(folder)  # safetensors (transformers 5 writes nothing else); + generation_config.json
    elif layout == "hub":
        _save_hub_weights(hub_state_dict(model, t5_embedding), folder, shards)
        _write_json(folder / "config.json", _hub_config_dict(model))
        _write_json(folder / "generation_config.json", generation_config_dict())
        # Decoy: the Hub repos also ship pickles; a correct loader must never open them.
        torch.save({}, folder / "pytorch_model.bin")
    if layout == "bin":
        _save_bin_weights(bin_state_dict(model), folder, max_shard_size)
        _write_json(folder / "config.json", _hub_config_dict(model))
        _write_json(folder / "generation_config.json", generation_config_dict())
        _save_audiocraft_decoys(folder)
    if tokenizer:
        build_tokenizer(folder)
    return folder


def build_checkpoint(
    folder: Path, layout: str = "current", seed: int = 0, audio_channels: int = 1
) -> tuple[MusicgenForConditionalGeneration, Path]:
    """Build the tiny model and save it in ``layout``; returns ``(model, folder)``."""
    model = build_model(seed=seed, audio_channels=audio_channels)
    return model, save_checkpoint(model, Path(folder), layout)


#: facebook/musicgen-medium's decoder (its config.json): everything else is as in small (T5-base, EnCodec 32 kHz)
MEDIUM_DECODER = {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24, "ffn_dim": 6144}


@torch.no_grad()
def build_real_size(folder: Path, layout: str = "hub", seed: int = 0, t5_embedding: str = "shared",
                    size: str = "small") -> Path:
    """Random-weight model with facebook/musicgen-small's exact config (``size="medium"``: medium's decoder),
    saved in ``layout`` (``"bin"``: one 2.364 GB pytorch_model.bin, the layout of facebook/musicgen-medium at
    small's size).

    Weights keep transformers' default init except the EnCodec codebooks (N(0, 1)). The hub layout is a
    single model.safetensors, as on the Hub; with the default ``t5_embedding="shared"`` it is 2.364 GB, in
    line with the 2.36 GB of the real file (a second copy of the 32128 x 768 T5 embedding would make it
    2.46 GB). Takes ~20 s and ~5.5 GB of RAM.
    """
    torch.manual_seed(seed)
    raw = copy.deepcopy(REAL_SMALL_CONFIG)
    if size == "medium":
        raw["decoder"].update(MEDIUM_DECODER)
        raw["_name_or_path"] = "facebook/musicgen-medium"
    elif size != "small":
        raise ValueError(f"size must be 'small' or 'medium', got {size!r}")
    config = MusicgenConfig(**raw)
    model = MusicgenForConditionalGeneration(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if type(module).__name__ == "EncodecEuclideanCodebook":
            _fill_codebook(module, gen)
    model.generation_config = GenerationConfig(**_generation_kwargs())
    folder = save_checkpoint(model, Path(folder), layout, shards=1, t5_embedding=t5_embedding)
    del model
    return folder
