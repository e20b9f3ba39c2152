"""Fast weight layouts: transposed float32 and weight-only int8 linears."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS
from torch import nn

from musicgen import InvalidInputError, MusicGen
from musicgen.layout import Int8Linear, TransposedLinear
from musicgen.lm import KVCache


def test_transposed_linear_is_exact_up_to_rounding() -> None:
    lin = nn.Linear(64, 96, bias=False)
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(TransposedLinear(lin.weight)(x), lin(x), rtol=1e-5, atol=1e-5)


def test_int8_linear_matches_its_dequantized_weights() -> None:
    lin = nn.Linear(256, 96, bias=False)
    q = Int8Linear(lin.weight)
    deq = q.q.float() * q.scales.float()[:, None]
    assert ((deq - lin.weight).abs() <= 0.51 * q.scales.float()[:, None]).all()  # half a quantization step
    x = torch.randn(2, 1, 256)
    y = q(x)
    assert y.dtype == torch.float32 and y.shape == (2, 1, 96)
    ref = x @ deq.t()
    assert (y - ref).norm() / ref.norm() < 1e-2  # bf16 activations


@pytest.fixture(scope="module")
def int8(checkpoints) -> MusicGen:
    return MusicGen.from_pretrained(checkpoints["current"][1], device="cpu", quantize="int8")


def test_int8_model_layout(int8: MusicGen, small: MusicGen) -> None:
    assert int8.quantize == "int8"
    assert isinstance(int8.lm.layers[0].fc1, Int8Linear) and isinstance(int8.lm.heads, Int8Linear)
    assert isinstance(small.lm.layers[0].fc1, TransposedLinear)  # float32 on the CPU: transposed
    assert int8.lm.layers[0].fc1.q.dtype == torch.int8


def test_int8_logits_stay_close(int8: MusicGen, small: MusicGen) -> None:
    seq = torch.randint(0, 2048, (2, 4, 6), generator=torch.Generator().manual_seed(0))

    def logits(mg: MusicGen) -> torch.Tensor:
        text, mask = mg.encode_text(PROMPTS)
        cond = mg.lm.condition(text, mask, guided=False)
        with torch.inference_mode():
            return mg.lm(seq, 0, KVCache.empty(mg.cfg.lm, 2, 6, mg.device, torch.float32), cond)

    a, b = logits(small), logits(int8)
    assert (a - b).norm() / a.norm() < 0.05
    kl = (a.log_softmax(-1).exp() * (a.log_softmax(-1) - b.log_softmax(-1))).sum(-1)
    assert kl.mean() < 0.05
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8


def test_int8_generates(int8: MusicGen) -> None:
    out = int8.generate(PROMPTS, 0.2, seed=1)
    assert out.tokens.shape == (2, 4, 10) and out.audio.abs().max() <= 1
    assert torch.equal(int8.generate(PROMPTS, 0.2, seed=1).tokens, out.tokens)


def test_bad_quantize(checkpoints) -> None:
    with pytest.raises(InvalidInputError, match="quantize"):
        MusicGen.from_pretrained(checkpoints["current"][1], device="cpu", quantize="int4")
