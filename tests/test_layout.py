"""Fast weight layouts: transposed float32, fbgemm's dynamic int8 and weight-only int8 linears."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS
from torch import nn

from musicgen import InvalidInputError, MusicGen, layout, native
from musicgen.layout import DynamicInt8Linear, FloatLinear, Int8Linear
from musicgen.lm import KVCache


@pytest.mark.parametrize("shape", [(1, 1, 64), (2, 1, 64), (4, 64), (3, 2, 64), (5, 2, 64), (2, 9, 64)])
def test_float_linear_is_exact_up_to_rounding(shape: tuple[int, ...]) -> None:
    """Every row count (one W @ x^T, 4-row pieces, F.linear) gives nn.Linear's result."""
    lin = nn.Linear(64, 96, bias=False)
    x = torch.randn(shape)
    y = FloatLinear(lin.weight)(x)
    assert y.shape == (*shape[:-1], 96) and y.is_contiguous()
    torch.testing.assert_close(y, lin(x), rtol=1e-5, atol=1e-5)


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


DYNAMIC = layout.dynamic_int8_available(torch.device("cpu"))
needs_fbgemm = pytest.mark.skipif(not DYNAMIC, reason="fbgemm's dynamic int8 linear needs an x86 CPU")


@needs_fbgemm
@pytest.mark.parametrize("reduce_range", [True, False])
def test_dynamic_int8_linear_matches_its_quantized_weights(reduce_range: bool) -> None:
    lin = nn.Linear(256, 96, bias=False)
    q = DynamicInt8Linear(lin.weight)
    q.reduce_range = reduce_range or not layout.has_vnni()
    # fbgemm: int8 weights and float32 scales; ours: outputs padded to 64, float32 scales and int32 weight sums
    assert q.nbytes == (256 * 96 + 4 * 96 if q.vnni is None else 256 * 128 + 8 * 96)
    x = torch.randn(2, 1, 256)
    y = q(x)
    assert y.dtype == torch.float32 and y.shape == (2, 1, 96)
    ref = lin(x)
    assert (y - ref).norm() / ref.norm() < 2e-2  # int8 weights and activations


@needs_fbgemm
def test_dynamic_int8_full_range_does_not_saturate() -> None:
    """8-bit activations only where int8 products accumulate in int32 (VNNI): the worst case, every
    activation at 255 and every weight at +-127, is then exact."""
    w = torch.ones(64, 1024)
    w[1] = -1.0
    q = DynamicInt8Linear(w)
    assert q.reduce_range == (not layout.has_vnni())
    x = torch.ones(1, 1024)
    x[0, 0] = 0.0
    torch.testing.assert_close(q(x)[0, :2], torch.tensor([1023.0, -1023.0]), rtol=1e-5, atol=1e-3)


@needs_fbgemm
@pytest.mark.parametrize("reduce_range", [True, False])
def test_dynamic_int8_rows_are_exact_and_independent(reduce_range: bool) -> None:
    """Each row is quantized with its own scale and summed exactly in integers: the result equals integer
    arithmetic done here, and a row's result does not depend on which other rows share the batch."""
    q = DynamicInt8Linear(torch.randn(96, 256) * 0.05)
    q.reduce_range = reduce_range or not layout.has_vnni()
    x = torch.randn(9, 256) * torch.logspace(-3, 2, 9)[:, None]  # rows of very different magnitudes
    y = q(x)
    s = x.abs().amax(1, keepdim=True) / q.half
    w = q.packed.unpack()[0]
    acc = torch.round(x / s).long() @ w.int_repr().long().t()  # int64: the exact integer sums
    assert torch.equal(y, (acc.float() * w.q_per_channel_scales().float()) * s)
    for rows in ([0], [4], [8, 1], [3, 7, 5], list(range(9))[::-1]):
        assert torch.equal(q(x[rows]), y[rows])
    assert torch.equal(q(torch.zeros(2, 256)), torch.zeros(2, 96))


@pytest.fixture(scope="module")
def int8(checkpoints) -> MusicGen:
    return MusicGen.from_pretrained(checkpoints["current"][1], device="cpu", quantize="int8")


@pytest.fixture(scope="module")
def int8_weight_only(checkpoints) -> MusicGen:
    """Also the kernel quantize="int8" falls back to where fbgemm is missing (ARM, CUDA)."""
    return MusicGen.from_pretrained(checkpoints["current"][1], device="cpu", quantize="int8-weight-only")


def test_int8_model_layout(int8: MusicGen, int8_weight_only: MusicGen, small: MusicGen) -> None:
    assert int8.quantize == "int8"
    kind = DynamicInt8Linear if DYNAMIC else Int8Linear
    assert isinstance(int8.lm.layers[0].fc1, kind) and isinstance(int8.lm.heads, kind)
    # the C++ attention reads a bfloat16 KV cache for quantized models (native.py); float32 models keep float32
    assert int8.lm.cache_dtype == (torch.bfloat16 if native.load() else torch.float32)
    assert small.lm.cache_dtype == torch.float32
    assert isinstance(small.lm.layers[0].fc1, FloatLinear)  # float32 on the CPU
    assert isinstance(int8_weight_only.lm.layers[0].fc1, Int8Linear) and int8_weight_only.quantize == "int8-weight-only"
    with pytest.MonkeyPatch.context() as m:  # no fbgemm: "int8" is weight-only too
        m.setattr(layout, "dynamic_int8_available", lambda device: False)
        lin = nn.Module()
        lin.fc = nn.Linear(8, 4, bias=False)
        layout.relayout_linears(lin, torch.device("cpu"), "int8")
        assert isinstance(lin.fc, Int8Linear)
    assert int8_weight_only.lm.layers[0].fc1.q.dtype == torch.int8


@pytest.mark.parametrize("engine", ["int8", "int8_weight_only"])
def test_int8_logits_stay_close(engine: str, small: MusicGen, request: pytest.FixtureRequest) -> None:
    int8 = request.getfixturevalue(engine)
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


@pytest.mark.parametrize("engine", ["int8", "int8_weight_only"])
def test_int8_generates(engine: str, request: pytest.FixtureRequest) -> None:
    int8 = request.getfixturevalue(engine)
    out = int8.generate(PROMPTS, 0.2, seed=1)
    assert out.tokens.shape == (2, 4, 10) and out.audio.abs().max() <= 1
    assert torch.equal(int8.generate(PROMPTS, 0.2, seed=1).tokens, out.tokens)


def test_bad_quantize(checkpoints) -> None:
    with pytest.raises(InvalidInputError, match="quantize"):
        MusicGen.from_pretrained(checkpoints["current"][1], device="cpu", quantize="int3")


INT4 = layout.int4_available(torch.device("cpu"))
needs_int4 = pytest.mark.skipif(not INT4, reason="torch._weight_int4pack_mm_for_cpu is missing")


@needs_int4
def test_int4_linear_matches_its_dequantized_weights() -> None:
    """The kernel's convention, checked against the quantization written out: per group of 64 inputs,
    w = low + q * scale with q in 0..15; activations in bf16."""
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(256, 192, generator=gen) * 0.05, torch.randn(3, 192, generator=gen)
    groups = w.view(256, 3, 64)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-12)
    q = ((groups - low) / scale).round().clamp(0, 15)
    zero = (low + 8 * scale).bfloat16().float()  # the kernel keeps scales and zeros in bf16
    deq = ((q - 8) * scale.bfloat16().float() + zero).view(256, 192)
    y = layout.Int4Linear(w)(x)
    ref = x.bfloat16().float() @ deq.t()
    assert (y - ref).abs().max() < 2e-2 * ref.abs().max()  # bf16 products and output
    assert (y - x @ w.t()).norm() / (x @ w.t()).norm() < 0.15  # int4: ~9 % error on Gaussian weights


@needs_int4
def test_int4_rows_are_independent() -> None:
    """Batch invariance: a row's result does not depend on the other rows of the call."""
    gen = torch.Generator().manual_seed(1)
    lin = layout.Int4Linear(torch.randn(128, 256, generator=gen))
    x = torch.randn(8, 256, generator=gen)
    whole = lin(x)
    assert torch.equal(whole, torch.cat([lin(x[i : i + 1]) for i in range(8)]))
    assert torch.equal(whole[2:5], lin(x[2:5]))


@needs_int4
def test_int4_model(checkpoints, small: MusicGen) -> None:
    """The tiny model's linears of 96 inputs take int4 in groups of 32 (48 inputs: float), it generates
    deterministically, and a scheduled request gets exactly its tokens alone."""
    from musicgen.serve import Scheduler

    int4 = MusicGen.from_pretrained(checkpoints["current"][1], device="cpu", quantize="int4")
    assert isinstance(int4.lm.layers[0].fc2, layout.Int4Linear) and int4.quantize == "int4"
    assert isinstance(int4.lm.layers[0].fc1, layout.FloatLinear)  # 48 inputs
    out = int4.generate(PROMPTS, 0.2, seed=1)
    assert torch.equal(int4.generate(PROMPTS, 0.2, seed=1).tokens, out.tokens)
    assert not torch.equal(out.tokens, small.generate(PROMPTS, 0.2, seed=1).tokens)  # int4 weights are in use
    sched = Scheduler(int4, max_rows=8)
    try:
        alone = int4.generate(PROMPTS[1], 0.2, seed=3).tokens
        assert torch.equal(sched.generate(PROMPTS[1], 0.2, seed=3).tokens, alone)
    finally:
        sched.close()
    with pytest.raises(InvalidInputError, match="CPU only"):
        MusicGen.from_pretrained(checkpoints["current"][1], device="meta", quantize="int4")
