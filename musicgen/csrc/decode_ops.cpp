// The decode step's two hot spots, each in one call instead of a dozen small torch ops (native.py builds this).
//
// rowwise_int8_linear: layout.DynamicInt8Linear's work (x ~150 linears a step): every row of x quantized on
// its own (symmetric, scale max|x_r| / half, round half to even), fbgemm's int8 GEMM with exact int32 sums
// (input scale 1, zero point `mid`: the quantization is the identity on these integers), then each output row
// times its scale. Bit-identical to the Python path in layout.py (tests/test_native.py).
//
// decode_attention: one new query per row (a decode step) against that row's KV cache: writes the new key and
// value at slot `pos`, then softmax(q k^T / sqrt(hd)) v over slots 0..pos, each (row, head) on its own in a
// fixed order (batch-invariant), AVX2 FMAs for head size 64 (every MusicGen), scalar sums for others. Equal to torch's scaled_dot_product_attention within float32
// rounding (tests/test_native.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/quantized/PackedParams.h>
#include <immintrin.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

at::Tensor rowwise_int8_linear(const at::Tensor& x, const c10::intrusive_ptr<LinearPackedParamsBase>& packed,
                               int64_t half, int64_t mid) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "rowwise_int8_linear: float32 CPU input");
  const int64_t K = x.size(-1);
  const at::Tensor rows = x.reshape({-1, K}).contiguous();
  const int64_t M = rows.size(0);
  at::Tensor q = at::empty_like(rows);
  at::Tensor s = at::empty({M, 1}, rows.options());
  const float* xp = rows.const_data_ptr<float>();
  float* qp = q.data_ptr<float>();
  float* sp = s.data_ptr<float>();
  for (int64_t r = 0; r < M; ++r) {
    const float* a = xp + r * K;
    float* b = qp + r * K;
    float m = 0.0f;
    int nan = 0;
    for (int64_t k = 0; k < K; ++k) {  // vectorized by the compiler (maxps, or-reduction)
      const float v = std::fabs(a[k]);
      nan |= v != v;
      m = v > m ? v : m;
    }
    // torch: amax (NaN propagates), clamp_(min=1e-30), div_(half)
    const float scale = (nan ? std::numeric_limits<float>::quiet_NaN() : std::max(m, 1e-30f)) / static_cast<float>(half);
    for (int64_t k = 0; k < K; ++k) {
      b[k] = std::nearbyint(a[k] / scale);  // round half to even, as torch.round
    }
    sp[r] = scale;
  }
  at::Tensor y = packed->apply_with_input_q_dq_qweight_dq_output_fp32(q, 1.0, mid);
  y.mul_(s);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = y.size(1);
  return y.view(shape);
}

// exp of 8 floats (Cephes' expf polynomial, ~1e-7 relative error), for x <= 0 as softmax needs
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// q . k over hd floats: 8 lanes of FMAs (hd a multiple of 8), else one scalar sum
inline float dot(const float* q, const float* k, int64_t hd) {
  if (hd % 8 != 0) {
    float s = 0.0f;
    for (int64_t d = 0; d < hd; ++d) s += q[d] * k[d];
    return s;
  }
  __m256 acc = _mm256_setzero_ps();
  for (int64_t d = 0; d < hd; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), acc);
  return hsum8(acc);
}

// softmax in place over scores [n] (exp of score - max); returns the sum of the exps
float softmax_numerators(float* scores, int64_t n, float m) {
  int64_t j = 0;
  __m256 total = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) {
    __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), _mm256_set1_ps(m)));
    _mm256_storeu_ps(scores + j, p);
    total = _mm256_add_ps(total, p);
  }
  float l = hsum8(total);
  for (; j < n; ++j) {
    scores[j] = std::exp(scores[j] - m);
    l += scores[j];
  }
  return l;
}

// one (row, head) with hd = 64 (every MusicGen): q in registers, four keys at a time, one pass over the values
void attend64(const float* q, const float* keys, const float* values, int64_t n, float scale, float* scores,
              float* out) {
  __m256 qv[8];
  for (int a = 0; a < 8; ++a) qv[a] = _mm256_loadu_ps(q + 8 * a);
  float m = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* k = keys + j * 64;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    for (int a = 0; a < 8; ++a) {
      s0 = _mm256_fmadd_ps(qv[a], _mm256_loadu_ps(k + 8 * a), s0);
      s1 = _mm256_fmadd_ps(qv[a], _mm256_loadu_ps(k + 64 + 8 * a), s1);
      s2 = _mm256_fmadd_ps(qv[a], _mm256_loadu_ps(k + 128 + 8 * a), s2);
      s3 = _mm256_fmadd_ps(qv[a], _mm256_loadu_ps(k + 192 + 8 * a), s3);
    }
    const float r[4] = {hsum8(s0) * scale, hsum8(s1) * scale, hsum8(s2) * scale, hsum8(s3) * scale};
    for (int t = 0; t < 4; ++t) {
      scores[j + t] = r[t];
      m = std::max(m, r[t]);
    }
  }
  for (; j < n; ++j) {
    scores[j] = dot(q, keys + j * 64, 64) * scale;
    m = std::max(m, scores[j]);
  }
  const float l = softmax_numerators(scores, n, m);
  __m256 acc[8];
  for (int a = 0; a < 8; ++a) acc[a] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; ++i) {
    const __m256 p = _mm256_set1_ps(scores[i]);
    const float* v = values + i * 64;
    for (int a = 0; a < 8; ++a) acc[a] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * a), acc[a]);
  }
  const __m256 inv = _mm256_set1_ps(l);
  for (int a = 0; a < 8; ++a) _mm256_storeu_ps(out + 8 * a, _mm256_div_ps(acc[a], inv));
}

// one (row, head), any hd: scalar over the head dimension
void attend_any(const float* q, const float* keys, const float* values, int64_t n, int64_t hd, float scale,
                float* scores, float* out) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = dot(q, keys + j * hd, hd) * scale;
    m = std::max(m, scores[j]);
  }
  const float l = softmax_numerators(scores, n, m);
  for (int64_t d = 0; d < hd; ++d) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc += scores[i] * values[i * hd + d];
    out[d] = acc / l;
  }
}

// qkv [B, 1, 3 * H * hd] (q, k, v of head h at h * hd within each third); caches [B, H, T_max, hd] with
// contiguous [T_max, hd] per (row, head) -> [B, 1, H * hd]
at::Tensor decode_attention(const at::Tensor& qkv, at::Tensor k_cache, at::Tensor v_cache, int64_t pos) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(1) == 1 && qkv.is_contiguous() && qkv.scalar_type() == at::kFloat,
              "decode_attention: qkv [B, 1, 3D] float32, contiguous");
  const int64_t B = k_cache.size(0), H = k_cache.size(1), T = k_cache.size(2), hd = k_cache.size(3);
  TORCH_CHECK(qkv.size(0) == B && qkv.size(2) == 3 * H * hd && pos >= 0 && pos < T,
              "decode_attention: shapes");
  for (const at::Tensor* c : {&k_cache, &v_cache}) {
    TORCH_CHECK(c->scalar_type() == at::kFloat && c->stride(3) == 1 && c->stride(2) == hd && c->sizes() == k_cache.sizes(),
                "decode_attention: caches [B, H, T, hd] float32, contiguous per head");
  }
  at::Tensor out = at::empty({B, 1, H * hd}, qkv.options());
  const float* x = qkv.const_data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t D = H * hd, kb = k_cache.stride(0), kh = k_cache.stride(1), vb = v_cache.stride(0), vh = v_cache.stride(1);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(pos + 1);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H;
      const float* row = x + b * 3 * D;
      float* keys = kc + b * kb + h * kh;
      float* values = vc + b * vb + h * vh;
      std::copy(row + D + h * hd, row + D + (h + 1) * hd, keys + pos * hd);
      std::copy(row + 2 * D + h * hd, row + 2 * D + (h + 1) * hd, values + pos * hd);
      if (hd == 64) {
        attend64(row + h * hd, keys, values, pos + 1, scale, scores.data(), o + b * D + h * hd);
      } else {
        attend_any(row + h * hd, keys, values, pos + 1, hd, scale, scores.data(), o + b * D + h * hd);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(musicgen_native, m) {
  m.def("decode_attention(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, int pos) -> Tensor", decode_attention);
  m.def("rowwise_int8_linear(Tensor x, __torch__.torch.classes.quantized.LinearPackedParamsBase packed, int half, "
        "int mid) -> Tensor",
        rowwise_int8_linear);
}
