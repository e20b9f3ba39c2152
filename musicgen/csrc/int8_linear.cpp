// layout.DynamicInt8Linear's work in one call (x ~150 linears a decode step): every row of x quantized on its own
// (symmetric, scale max|x_r| / half, round half to even), exact int32 sums of those integers times the int8
// weights, each output times its weight scale, then times its row's scale. Integer sums are exact in any order,
// so every kernel here gives the Python path's result bit for bit (tests/test_native.py), alone or batched.
//
// vnni_int8_linear: our own kernel for AVX512-VNNI CPUs. A decode step has a few rows and reads every weight
// once, so speed is how fast the weights stream: the weights are stored in the order the kernel reads them
// (vnni_pack: 64 outputs x 4 inputs per 256 bytes), each 64-byte load feeds one vpdpbusd (u8 x s8 -> int32) per
// row of a tile of up to 6 rows, with nothing in between. Measured on 2 Zen 5 cores, 24 [1024 -> 3072] layers:
// 2 rows 72 GB/s against fbgemm's 51, 16 rows 26 against 23, 256 rows about as fast as fbgemm (compute-bound).
// rowwise_int8_linear: the same through fbgemm's int8 GEMM (input scale 1, zero point `mid`: its quantization is
// then the identity on these integers), for x86 CPUs without AVX512-VNNI.
#include <ATen/ATen.h>
#include <ATen/native/quantized/PackedParams.h>
#include <immintrin.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include "ops.h"
#include "parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
constexpr int64_t NC = 64;  // outputs per packed chunk: 4 zmm registers of 16 int32 sums
constexpr int MT = 6;       // rows per tile: 6 x 4 accumulators + 4 weights + 1 broadcast fit 32 zmm registers

// a row's scale as torch computes it: amax |x| (NaN propagates), clamp_(min=1e-30), div_(half)
float row_scale(const float* a, int64_t K, int64_t half) {
  float m = 0.0f;
  int nan = 0;
  for (int64_t k = 0; k < K; ++k) {  // vectorized by the compiler (maxps, or-reduction)
    const float v = std::fabs(a[k]);
    nan |= v != v;
    m = v > m ? v : m;
  }
  return (nan ? std::numeric_limits<float>::quiet_NaN() : std::max(m, 1e-30f)) / static_cast<float>(half);
}

at::Tensor rows_of(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "int8 linear: float32 CPU input");
  return x.reshape({-1, x.size(-1)}).contiguous();
}

at::Tensor shaped_like(const at::Tensor& x, const at::Tensor& y) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = y.size(1);
  return y.view(shape);
}

at::Tensor rowwise_int8_linear(const at::Tensor& x, const c10::intrusive_ptr<LinearPackedParamsBase>& packed,
                               int64_t half, int64_t mid) {
  const at::Tensor rows = rows_of(x);
  const int64_t M = rows.size(0), K = rows.size(1);
  at::Tensor q = at::empty_like(rows);
  at::Tensor s = at::empty({M, 1}, rows.options());
  for (int64_t r = 0; r < M; ++r) {
    const float* a = rows.const_data_ptr<float>() + r * K;
    float* b = q.data_ptr<float>() + r * K;
    const float scale = row_scale(a, K, half);
    for (int64_t k = 0; k < K; ++k) b[k] = std::nearbyint(a[k] / scale);  // round half to even, as torch.round
    s.data_ptr<float>()[r] = scale;
  }
  at::Tensor y = packed->apply_with_input_q_dq_qweight_dq_output_fp32(q, 1.0, mid);
  return shaped_like(x, y.mul_(s));
}

bool vnni_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

// int8 weights [N, K] -> [ceil(N / 64), ceil(K / 4), 64, 4]: chunk c holds outputs 64c.. (zeros past N and K)
at::Tensor vnni_pack(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar, "vnni_pack: int8 weights [N, K]");
  const at::Tensor src = w.contiguous();
  const int64_t N = w.size(0), K = w.size(1), K4 = (K + 3) / 4;
  at::Tensor out = at::zeros({(N + NC - 1) / NC, K4, NC, 4}, w.options());
  const int8_t* s = src.const_data_ptr<int8_t>();
  int8_t* d = out.data_ptr<int8_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) d[(((n / NC) * K4 + k / 4) * NC + n % NC) * 4 + k % 4] = s[n * K + k];
  return out;
}

// one tile of R <= MT rows against one chunk: sums [R, 64] of u8 rows xq [R, 4 * K4] (row stride ld) times the chunk
#define VNNI_DECLARE(m) __m512i a##m##0 = _mm512_setzero_si512(), a##m##1 = a##m##0, a##m##2 = a##m##0, a##m##3 = a##m##0;
#define VNNI_STEP(m)                                                                                  \
  if constexpr (R > m) {                                                                              \
    int32_t four;                                                                                     \
    std::memcpy(&four, xq + m * ld + 4 * k4, 4);                                                      \
    const __m512i b = _mm512_set1_epi32(four);                                                        \
    a##m##0 = _mm512_dpbusd_epi32(a##m##0, b, w0);                                                    \
    a##m##1 = _mm512_dpbusd_epi32(a##m##1, b, w1);                                                    \
    a##m##2 = _mm512_dpbusd_epi32(a##m##2, b, w2);                                                    \
    a##m##3 = _mm512_dpbusd_epi32(a##m##3, b, w3);                                                    \
  }
#define VNNI_STORE(m)                                                                                 \
  if constexpr (R > m) {                                                                              \
    _mm512_storeu_si512(sums + m * NC, a##m##0);                                                      \
    _mm512_storeu_si512(sums + m * NC + 16, a##m##1);                                                 \
    _mm512_storeu_si512(sums + m * NC + 32, a##m##2);                                                 \
    _mm512_storeu_si512(sums + m * NC + 48, a##m##3);                                                 \
  }

template <int R>
VNNI_TARGET void vnni_tile(const uint8_t* xq, int64_t ld, const int8_t* chunk, int64_t K4, int32_t* sums) {
  // separate variables, not an array: gcc spilled an array of __m512i to the stack on every step
  VNNI_DECLARE(0) VNNI_DECLARE(1) VNNI_DECLARE(2) VNNI_DECLARE(3) VNNI_DECLARE(4) VNNI_DECLARE(5)
  for (int64_t k4 = 0; k4 < K4; ++k4) {
    const int8_t* w = chunk + k4 * NC * 4;
    for (int i = 0; i < 4; ++i) _mm_prefetch(reinterpret_cast<const char*>(w) + 2048 + 64 * i, _MM_HINT_T0);
    const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
    const __m512i w2 = _mm512_loadu_si512(w + 128), w3 = _mm512_loadu_si512(w + 192);
    VNNI_STEP(0) VNNI_STEP(1) VNNI_STEP(2) VNNI_STEP(3) VNNI_STEP(4) VNNI_STEP(5)
  }
  VNNI_STORE(0) VNNI_STORE(1) VNNI_STORE(2) VNNI_STORE(3) VNNI_STORE(4) VNNI_STORE(5)
}

VNNI_TARGET void vnni_rows(int64_t R, const uint8_t* xq, int64_t ld, const int8_t* chunk, int64_t K4, int32_t* sums) {
  switch (R) {
    case 1: return vnni_tile<1>(xq, ld, chunk, K4, sums);
    case 2: return vnni_tile<2>(xq, ld, chunk, K4, sums);
    case 3: return vnni_tile<3>(xq, ld, chunk, K4, sums);
    case 4: return vnni_tile<4>(xq, ld, chunk, K4, sums);
    case 5: return vnni_tile<5>(xq, ld, chunk, K4, sums);
    default: return vnni_tile<6>(xq, ld, chunk, K4, sums);
  }
}

// y[n] = float(sum[n] - mid * colsum[n]) * wscale[n] * s for the outputs n0.. of one chunk (n < N): the
// Python path's rounding exactly (int32 -> float rounds to nearest, then two products, no FMA)
VNNI_TARGET void vnni_rescale(const int32_t* sums, const int32_t* colsum, const float* wscale, int64_t mid, float s,
                              int64_t n0, int64_t N, float* y) {
  for (int64_t j = 0; j < NC && n0 + j < N; j += 16) {
    const __mmask16 live = N - n0 - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (N - n0 - j)) - 1);
    const __m512i offset = _mm512_mullo_epi32(_mm512_set1_epi32(static_cast<int32_t>(mid)),
                                              _mm512_maskz_loadu_epi32(live, colsum + n0 + j));
    const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(sums + j), offset));
    const __m512 r = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(live, wscale + n0 + j)), _mm512_set1_ps(s));
    _mm512_mask_storeu_ps(y + n0 + j, live, r);
  }
}

}  // namespace

namespace musicgen {

// x [..., K] float32; packed from vnni_pack; colsum [N] int32 (each output's sum of int8 weights); wscale [N]
// float32 -> [..., N]
at::Tensor vnni_int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& colsum,
                            const at::Tensor& wscale, int64_t half, int64_t mid) {
  const at::Tensor rows = rows_of(x);
  const int64_t M = rows.size(0), K = rows.size(1), N = wscale.size(0), K4 = packed.size(1), ld = 4 * K4;
  TORCH_CHECK(vnni_supported(), "vnni_int8_linear: this CPU has no AVX512-VNNI");
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == at::kChar && packed.is_contiguous() &&
                  packed.device().is_cpu() && packed.size(2) == NC && packed.size(3) == 4 &&
                  packed.size(0) * NC >= N && packed.size(0) * NC < N + NC && K4 == (K + 3) / 4,
              "vnni_int8_linear: packed [ceil(N / 64), ceil(K / 4), 64, 4] int8 from vnni_pack");
  TORCH_CHECK(colsum.scalar_type() == at::kInt && colsum.numel() == N && colsum.is_contiguous() &&
                  colsum.device().is_cpu() && wscale.device().is_cpu() && wscale.scalar_type() == at::kFloat &&
                  wscale.is_contiguous() && wscale.dim() == 1,
              "vnni_int8_linear: colsum [N] int32, wscale [N] float32");
  std::vector<uint8_t> xq(M * ld, static_cast<uint8_t>(mid));  // u8 = integer + mid; K's padding holds zeros
  std::vector<float> s(M);
  for (int64_t r = 0; r < M; ++r) {
    const float* a = rows.const_data_ptr<float>() + r * K;
    s[r] = row_scale(a, K, half);
    if (!std::isfinite(s[r])) continue;  // a NaN / inf row gives NaN outputs (0 times s), as in the Python path
    for (int64_t k = 0; k < K; ++k) xq[r * ld + k] = static_cast<uint8_t>(std::nearbyint(a[k] / s[r]) + mid);
  }
  at::Tensor y = at::empty({M, N}, rows.options());
  float* yp = y.data_ptr<float>();
  const int8_t* w = packed.const_data_ptr<int8_t>();
  musicgen::parallel_for(packed.size(0), [&](int64_t c0, int64_t c1) {
    alignas(64) int32_t sums[MT * NC];
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t m0 = 0; m0 < M; m0 += MT) {  // the chunk (64 x K bytes) stays in L2 for the next tiles
        const int64_t R = std::min<int64_t>(MT, M - m0);
        vnni_rows(R, xq.data() + m0 * ld, ld, w + c * K4 * NC * 4, K4, sums);
        for (int64_t m = 0; m < R; ++m)
          vnni_rescale(sums + m * NC, colsum.const_data_ptr<int32_t>(), wscale.const_data_ptr<float>(), mid,
                       s[m0 + m], c * NC, N, yp + (m0 + m) * N);
      }
    }
  });
  return shaped_like(x, y);
}

}  // namespace musicgen

TORCH_LIBRARY_FRAGMENT(musicgen_native, m) {
  m.def("rowwise_int8_linear(Tensor x, __torch__.torch.classes.quantized.LinearPackedParamsBase packed, int half, "
        "int mid) -> Tensor",
        rowwise_int8_linear);
  m.def("vnni_supported() -> bool", vnni_supported);
  m.def("vnni_pack(Tensor w) -> Tensor", vnni_pack);
  m.def("vnni_int8_linear(Tensor x, Tensor packed, Tensor colsum, Tensor wscale, int half, int mid) -> Tensor",
        musicgen::vnni_int8_linear);
}
