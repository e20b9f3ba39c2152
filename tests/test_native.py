"""The C++ decode kernels (musicgen/native.py) against the torch code they replace.

The int8 linear must equal layout.DynamicInt8Linear's Python path bit for bit (the same quantization, the
same exact integer sums); the attention must match torch's scaled_dot_product_attention within float32
rounding and write the new keys and values where the eager path writes them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from musicgen import layout, native
from musicgen.layout import DynamicInt8Linear

needs_native = pytest.mark.skipif(not native.load(), reason=f"the C++ kernels are not built here: {native.why_not()}")


@needs_native
@pytest.mark.parametrize("reduce_range", [True, False])
@pytest.mark.parametrize("shape", [(2, 1, 256), (9, 256), (3, 2, 1, 256), (1, 256)])
def test_int8_linear_equals_the_python_path(reduce_range: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    q = DynamicInt8Linear(torch.randn(96, 256) * 0.05)
    q.reduce_range = reduce_range or not layout.has_vnni()
    x = torch.randn(shape) * torch.logspace(-3, 2, shape[0]).view(-1, *[1] * (len(shape) - 1))
    assert q.native
    y = q(x)
    q.native = False
    ref = q(x)
    assert y.shape == ref.shape == (*shape[:-1], 96)
    assert torch.equal(y, ref)
    assert torch.equal(native.rowwise_int8_linear(torch.zeros(2, 256), q.packed, q.half, q.mid), torch.zeros(2, 96))


@needs_native
def test_int8_linear_rows_are_independent() -> None:
    torch.manual_seed(1)
    q = DynamicInt8Linear(torch.randn(64, 128))
    x = torch.randn(7, 128)
    y = q(x)
    for rows in ([0], [6], [5, 2], list(range(7))[::-1]):
        assert torch.equal(q(x[rows]), y[rows])


needs_vnni = pytest.mark.skipif(not native.vnni(), reason="our int8 kernel needs AVX512-VNNI")


@needs_vnni
@pytest.mark.parametrize("reduce_range", [True, False])
@pytest.mark.parametrize(("N", "K"), [(100, 250), (64, 4), (130, 1030)])
def test_vnni_int8_linear_equals_fbgemm_and_the_python_path(reduce_range: bool, N: int, K: int) -> None:
    """Outputs past a 64-chunk, inputs past a multiple of 4, 1 to 20 rows (whole 6-row tiles and their remainders):
    our kernel, fbgemm's GEMM and the torch ops give the same bits."""
    torch.manual_seed(N + K)
    q = DynamicInt8Linear(torch.randn(N, K) * 0.05)
    q.reduce_range = reduce_range
    assert q.vnni is not None and q._packed is None  # one copy of the weights until the Python path asks for one
    packed, colsum, wscale = q.vnni
    assert torch.equal(native.vnni_unpack(packed, N, K), q.packed.unpack()[0].int_repr())
    for M in (1, 2, 5, 6, 7, 13, 20):
        x = torch.randn(M, K) * torch.logspace(-3, 2, M)[:, None]
        y = native.vnni_int8_linear(x, packed, colsum, wscale, q.half, q.mid)
        assert torch.equal(y, native.rowwise_int8_linear(x, q.packed, q.half, q.mid))
        q.native = False
        assert torch.equal(y, q(x))
        q.native = True
        assert torch.equal(y[M // 2 :], native.vnni_int8_linear(x[M // 2 :], packed, colsum, wscale, q.half, q.mid))


@needs_vnni
def test_vnni_int8_linear_full_range_and_nan_rows() -> None:
    """Every activation at the top of its range times +-127 over 4096 inputs is summed exactly; a NaN row gives
    NaN outputs and leaves the other rows alone; a wrong packing is refused."""
    w = torch.full((64, 4096), 127.0)
    w[1] = -127.0
    q = DynamicInt8Linear(w)
    x = torch.ones(3, 4096)
    x[1, 7] = float("nan")
    y = q(x)
    assert torch.equal(y[[0, 2], :2], torch.tensor([[4096 * 127.0, -4096 * 127.0]] * 2))
    assert y[1].isnan().all()
    packed, colsum, wscale = q.vnni
    with pytest.raises(RuntimeError, match="vnni_pack"):
        native.vnni_int8_linear(x[:, :4092], packed, colsum, wscale, q.half, q.mid)


@needs_native
def test_kernels_keep_the_calling_threads_count() -> None:
    """The decode loop keeps 2 threads while the default for other threads is 1 (serve.own_intra_op_threads):
    the kernels' first call in that thread must not apply the default to it (at::parallel_for's lazy set-up did,
    and put the decode loop on one thread)."""
    from musicgen.serve import own_intra_op_threads

    counts: list[int] = []

    def loop() -> None:
        own_intra_op_threads(2)
        q = DynamicInt8Linear(torch.randn(128, 64))
        q(torch.randn(2, 64))
        qkv, k = torch.randn(2, 1, 3 * 128), torch.zeros(2, 2, 8, 64)
        native.decode_attention(qkv, k, k.clone(), 0)
        native.cross_attention(qkv[..., :128].contiguous(), k, k.clone(), None)
        counts.append(torch.get_num_threads())

    before = torch.get_num_threads()
    thread = threading.Thread(target=loop)
    thread.start()
    thread.join()
    torch.set_num_threads(before)  # own_intra_op_threads changed the process default
    assert counts == [2]


def reference_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: int,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """The eager path of lm.SelfAttention.attend (a bfloat16 cache is widened to float32 for SDPA)."""
    B, _, H, _, hd = (*qkv.shape[:2], *k_cache.shape[1:3], k_cache.shape[3])
    q, k, v = qkv.view(B, 1, 3, H, hd).permute(2, 0, 3, 1, 4)
    k_cache[:, :, pos : pos + 1] = k
    v_cache[:, :, pos : pos + 1] = v
    mask = None if valid is None else valid[:, None, None, : pos + 1]
    keys, values = k_cache[:, :, : pos + 1].float(), v_cache[:, :, : pos + 1].float()
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    return y.transpose(1, 2).reshape(B, 1, H * hd)


@needs_native
@pytest.mark.parametrize(("B", "H", "hd", "T", "pos"), [(2, 16, 64, 64, 0), (2, 16, 64, 300, 1), (2, 4, 64, 300, 250),
                                                       (3, 4, 12, 40, 17), (1, 2, 16, 9, 8), (4, 24, 64, 100, 99),
                                                       (1, 2, 64, 40, 31)])
def test_decode_attention_matches_sdpa(B: int, H: int, hd: int, T: int, pos: int) -> None:
    torch.manual_seed(2)
    k_cache, v_cache = torch.randn(B, H, T, hd), torch.randn(B, H, T, hd)
    qkv = torch.randn(B, 1, 3 * H * hd) * 3
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    ref = reference_attention(qkv, k_ref, v_ref, pos)
    assert native.attention_usable(qkv, k_cache)
    y = native.decode_attention(qkv, k_cache, v_cache, pos)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-6)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)  # the same slots written, nothing else


@needs_native
@pytest.mark.parametrize("hd", [64, 12])
def test_decode_attention_with_a_bfloat16_cache_and_a_mask(hd: int) -> None:
    """int8 / int4 models keep their KV cache in bfloat16 (lm.LM.cache_dtype); melody models mask their text
    padding (a row's `valid` slots)."""
    torch.manual_seed(4)
    B, H, T, pos = 3, 4, 80, 70
    k_cache = torch.randn(B, H, T, hd).to(torch.bfloat16)
    v_cache = torch.randn(B, H, T, hd).to(torch.bfloat16)
    qkv = torch.randn(B, 1, 3 * H * hd)
    valid = torch.rand(B, T) > 0.3
    valid[:, pos] = True  # (the new slot always is)
    for mask in (None, valid):
        k_ref, v_ref = k_cache.clone(), v_cache.clone()
        ref = reference_attention(qkv, k_ref, v_ref, pos, mask)
        k, v = k_cache.clone(), v_cache.clone()
        y = native.decode_attention(qkv, k, v, pos, mask)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-6)
        assert torch.equal(k, k_ref) and torch.equal(v, v_ref)  # rounded to bfloat16 as torch rounds
    unmasked = native.decode_attention(qkv, k_cache.clone(), v_cache.clone(), pos)
    assert not torch.allclose(unmasked, y)


@needs_native
def test_decode_attention_on_a_cache_view_and_its_rows_are_independent() -> None:
    """The scheduler hands each request a slice of one big cache: rows strided apart in the batch dim."""
    torch.manual_seed(3)
    big_k, big_v = torch.randn(2, 6, 4, 50, 64), torch.randn(2, 6, 4, 50, 64)  # [layers, rows, H, T, hd]
    k, v = big_k[1, 2:5], big_v[1, 2:5]
    qkv = torch.randn(3, 1, 3 * 4 * 64)
    k_ref, v_ref = k.clone(), v.clone()
    ref = reference_attention(qkv, k_ref, v_ref, 30)
    y = native.decode_attention(qkv, k, v, 30)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-6)
    assert torch.equal(big_k[1, 2:5], k_ref) and torch.equal(big_k[0], big_k[0].clone())
    alone = native.decode_attention(qkv[1:2].contiguous(), big_k[1, 3:4], big_v[1, 3:4], 30)
    assert torch.equal(alone, y[1:2])


@needs_native
def test_decode_attention_refuses_what_it_cannot_do() -> None:
    qkv = torch.randn(2, 1, 3 * 64)
    k = torch.zeros(2, 1, 10, 64)
    with pytest.raises(RuntimeError, match="shapes"):
        native.decode_attention(qkv, k, k.clone(), 10)  # beyond the cache
    assert not native.attention_usable(qkv.double(), k.double())
    assert not native.attention_usable(qkv, k.transpose(2, 3))


def test_the_kernels_can_be_switched_off() -> None:
    """MUSICGEN_NATIVE=0: nothing is built, int8 runs its Python path (a fresh interpreter: load() is cached)."""
    code = ("import torch; from musicgen import native, layout; print(native.load(), native.why_not(), "
            "layout.DynamicInt8Linear(torch.randn(8, 16)).native if layout.dynamic_int8_available("
            "torch.device('cpu')) else False)")
    env = {**os.environ, native.ENV: "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", f"{native.ENV}=0", "False"]
    assert "not used (MUSICGEN_NATIVE=0)" in out.stderr


@needs_native
@pytest.mark.parametrize("hd", [64, 12])
def test_cross_attention_matches_sdpa_with_the_padding_bias(hd: int) -> None:
    """Rows with text padding, and the null text of guidance (nothing valid: torch's finfo.min bias gives
    every key the same weight)."""
    torch.manual_seed(5)
    B, H, L = 4, 3, 11
    q = torch.randn(B, 1, H * hd)
    k, v = torch.randn(B, H, L, hd), torch.randn(B, H, L, hd)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, 7:] = False
    valid[2:] = False
    bias = torch.where(valid, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
    ref = F.scaled_dot_product_attention(q.view(B, 1, H, hd).transpose(1, 2), k, v, attn_mask=bias)
    ref = ref.transpose(1, 2).reshape(B, 1, H * hd)
    y = native.cross_attention(q, k, v, valid)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(y[2:], v[2:].mean(2).reshape(2, 1, H * hd), rtol=1e-5, atol=2e-6)
    assert torch.equal(native.cross_attention(q[1:2].contiguous(), k[1:2], v[1:2], valid[1:2]), y[1:2])
