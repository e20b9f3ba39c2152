// The decode step's attention, each in one call instead of a dozen small torch ops (native.py builds this).
//
// decode_attention: one new query per row (a decode step) against that row's KV cache: writes the new key and
// value at slot `pos`, then softmax(q k^T / sqrt(hd)) v over slots 0..pos. cross_attention: the same against the
// text's keys and values. Each (row, head) on its own in a fixed order (batch-invariant), AVX-512 (else AVX2)
// FMAs for head size 64 (every MusicGen), scalar sums for others; equal to torch's scaled_dot_product_attention within
// float32 rounding (tests/test_native.py). Neither calls MKL: torch's SDPA does, two tiny SGEMMs per (row, head)
// and layer, whose cost grows when another thread has set MKL's (process-wide) thread count.
#include <ATen/ATen.h>
#include <immintrin.h>
#include <torch/library.h>

#include "ops.h"
#include "parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace {

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

// cache elements: float32, or bfloat16 (the upper half of a float32: widening is a shift)
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline float widen(float x) { return x; }
inline float widen(at::BFloat16 x) { return static_cast<float>(x); }

// q . k over hd: 8 lanes of FMAs (hd a multiple of 8), else one scalar sum
template <typename C>
inline float dot(const float* q, const C* k, int64_t hd) {
  if (hd % 8 != 0) {
    float s = 0.0f;
    for (int64_t d = 0; d < hd; ++d) s += q[d] * widen(k[d]);
    return s;
  }
  __m256 acc = _mm256_setzero_ps();
  for (int64_t d = 0; d < hd; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), acc);
  return hsum8(acc);
}

// softmax numerators in place over scores [n] (exp of score - max; masked slots hold -inf: 0); returns their sum
float softmax_numerators(float* scores, int64_t n, float m) {
  int64_t j = 0;
  __m256 total = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) {
    __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), _mm256_set1_ps(m)));
    p = _mm256_and_ps(p, _mm256_cmp_ps(_mm256_loadu_ps(scores + j), _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ));
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

float mask_and_max(float* scores, int64_t n, const bool* valid);

// scores [n] = q . k_j * scale (-inf where valid[j] is false), four keys at a time for hd = 64; returns the max
template <typename C>
float scores_of(const float* q, const C* keys, int64_t n, int64_t hd, float scale, const bool* valid, float* scores) {
  int64_t j = 0;
  if (hd == 64) {
    __m256 qv[8];
    for (int a = 0; a < 8; ++a) qv[a] = _mm256_loadu_ps(q + 8 * a);
    for (; j + 4 <= n; j += 4) {
      const C* k = keys + j * 64;
      __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
      for (int a = 0; a < 8; ++a) {
        s0 = _mm256_fmadd_ps(qv[a], load8(k + 8 * a), s0);
        s1 = _mm256_fmadd_ps(qv[a], load8(k + 64 + 8 * a), s1);
        s2 = _mm256_fmadd_ps(qv[a], load8(k + 128 + 8 * a), s2);
        s3 = _mm256_fmadd_ps(qv[a], load8(k + 192 + 8 * a), s3);
      }
      scores[j] = hsum8(s0) * scale;
      scores[j + 1] = hsum8(s1) * scale;
      scores[j + 2] = hsum8(s2) * scale;
      scores[j + 3] = hsum8(s3) * scale;
    }
  }
  for (; j < n; ++j) scores[j] = dot(q, keys + j * hd, hd) * scale;
  return mask_and_max(scores, n, valid);
}

// masked slots -inf; returns the max score (a row with nothing valid: every score 0, max 0)
float mask_and_max(float* scores, int64_t n, const bool* valid) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    if (valid != nullptr && !valid[j]) scores[j] = -std::numeric_limits<float>::infinity();
    m = std::max(m, scores[j]);
  }
  if (m == -std::numeric_limits<float>::infinity()) {  // nothing valid (the null text of guidance): torch's additive
    std::fill(scores, scores + n, 0.0f);               // finfo.min bias makes every score equal, so uniform weights
    m = 0.0f;
  }
  return m;
}

// one (row, head): q [hd] against keys / values [n, hd] (row stride hd) -> out [hd]
template <typename C>
void attend_one(const float* q, const C* keys, const C* values, int64_t n, int64_t hd, float scale,
                const bool* valid, float* scores, float* out) {
  const float m = scores_of(q, keys, n, hd, scale, valid, scores);
  const float l = softmax_numerators(scores, n, m);
  if (hd == 64) {  // every MusicGen: the output in registers, one pass over the values
    __m256 acc[8];
    for (int a = 0; a < 8; ++a) acc[a] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; ++i) {
      const __m256 p = _mm256_set1_ps(scores[i]);
      const C* v = values + i * 64;
      for (int a = 0; a < 8; ++a) acc[a] = _mm256_fmadd_ps(p, load8(v + 8 * a), acc[a]);
    }
    const __m256 sum = _mm256_set1_ps(l);
    for (int a = 0; a < 8; ++a) _mm256_storeu_ps(out + 8 * a, _mm256_div_ps(acc[a], sum));
    return;
  }
  for (int64_t d = 0; d < hd; ++d) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc += scores[i] * widen(values[i * hd + d]);
    out[d] = acc / l;
  }
}

// ---- AVX-512 for head size 64 (every MusicGen), where the CPU has it: 16 lanes, a query in 4 registers
#define AVX512_TARGET __attribute__((target("avx512f")))

bool avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

AVX512_TARGET inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
AVX512_TARGET inline __m512 load16(const at::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// the sums of 16 registers' lanes, one per lane of the result (a transpose-and-add tree: ~3 ops a key)
AVX512_TARGET inline __m512 sum_lanes16(const __m512* v) {
  __m512 x[4];
  for (int g = 0; g < 4; ++g) {  // keys 4g..4g+3 -> per 128-bit lane, their 4 partial sums
    __m512 w[2];
    for (int p = 0; p < 2; ++p) {
      const __m512 a = v[4 * g + 2 * p], b = v[4 * g + 2 * p + 1];
      w[p] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(w[0]), _mm512_castps_pd(w[1]));
    const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(w[0]), _mm512_castps_pd(w[1]));
    x[g] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  const __m512 z01 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], 0x88), _mm512_shuffle_f32x4(x[0], x[1], 0xDD));
  const __m512 z23 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], 0x88), _mm512_shuffle_f32x4(x[2], x[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(z01, z23, 0x88), _mm512_shuffle_f32x4(z01, z23, 0xDD));
}

template <typename C>
AVX512_TARGET void attend_one_512(const float* q, const C* keys, const C* values, int64_t n, float scale,
                                  const bool* valid, float* scores, float* out) {
  const __m512 q0 = _mm512_loadu_ps(q), q1 = _mm512_loadu_ps(q + 16);
  const __m512 q2 = _mm512_loadu_ps(q + 32), q3 = _mm512_loadu_ps(q + 48);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 dots[16];
    for (int i = 0; i < 16; ++i) {
      const C* k = keys + (j + i) * 64;
      __m512 a = _mm512_mul_ps(q0, load16(k));
      a = _mm512_fmadd_ps(q1, load16(k + 16), a);
      a = _mm512_fmadd_ps(q2, load16(k + 32), a);
      dots[i] = _mm512_fmadd_ps(q3, load16(k + 48), a);
    }
    _mm512_storeu_ps(scores + j, _mm512_mul_ps(sum_lanes16(dots), _mm512_set1_ps(scale)));
  }
  for (; j < n; ++j) scores[j] = dot(q, keys + j * 64, 64) * scale;
  const float l = softmax_numerators(scores, n, mask_and_max(scores, n, valid));
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < n; ++i) {
    const __m512 p = _mm512_set1_ps(scores[i]);
    const C* v = values + i * 64;
    a0 = _mm512_fmadd_ps(p, load16(v), a0);
    a1 = _mm512_fmadd_ps(p, load16(v + 16), a1);
    a2 = _mm512_fmadd_ps(p, load16(v + 32), a2);
    a3 = _mm512_fmadd_ps(p, load16(v + 48), a3);
  }
  const __m512 sum = _mm512_set1_ps(l);
  _mm512_storeu_ps(out, _mm512_div_ps(a0, sum));
  _mm512_storeu_ps(out + 16, _mm512_div_ps(a1, sum));
  _mm512_storeu_ps(out + 32, _mm512_div_ps(a2, sum));
  _mm512_storeu_ps(out + 48, _mm512_div_ps(a3, sum));
}

// a per-row mask [B, >= n] bool (stride 1 along a row), or none
struct Mask {
  const bool* data = nullptr;
  int64_t stride = 0;
  const bool* row(int64_t b) const { return data == nullptr ? nullptr : data + b * stride; }
};

Mask mask_of(const std::optional<at::Tensor>& valid, int64_t B, int64_t n, const char* what) {
  if (!valid.has_value()) return {};
  TORCH_CHECK(valid->scalar_type() == at::kBool && valid->dim() == 2 && valid->size(0) == B && valid->size(1) >= n &&
                  valid->stride(1) == 1,
              what, ": valid [B, >= ", n, "] bool");
  return {valid->const_data_ptr<bool>(), valid->stride(0)};
}

// keys / values [B, H, T, hd] float32 or bfloat16 (same type), contiguous [T, hd] per (row, head)
void check_kv(const at::Tensor& k, const at::Tensor& v, const char* what) {
  const auto type = k.scalar_type();
  for (const at::Tensor* c : {&k, &v}) {
    TORCH_CHECK(c->dim() == 4 && c->scalar_type() == type && (type == at::kFloat || type == at::kBFloat16) &&
                    c->stride(3) == 1 && c->stride(2) == c->size(3) && c->sizes() == k.sizes(),
                what, ": keys, values [B, H, T, hd] float32 or bfloat16, contiguous per head");
  }
}

// every (row, head) on torch's threads: the query of row b, head h at q + b * q_stride + h * hd; its keys / values
// at k + b * k.stride(0) + h * k.stride(1) (the same for v), n slots. With `fresh`, the new key and value (at
// q + D and q + 2D of the row, qkv's layout) are first written at slot n - 1 (bfloat16: rounded to nearest even,
// as torch rounds).
template <typename C>
void attend_heads(const float* q, int64_t q_stride, const at::Tensor& k, const at::Tensor& v, int64_t n, Mask mask,
                  bool fresh, float* out) {
  const int64_t B = k.size(0), H = k.size(1), hd = k.size(3), D = H * hd;
  const int64_t kb = k.stride(0), kh = k.stride(1), vb = v.stride(0), vh = v.stride(1);
  C* kc = k.data_ptr<C>();
  C* vc = v.data_ptr<C>();
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  static const bool has_avx512 = avx512();
  const bool wide = has_avx512 && hd == 64;
  musicgen::parallel_for(B * H, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(n);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H;
      const float* row = q + b * q_stride;
      C* keys = kc + b * kb + h * kh;
      C* values = vc + b * vb + h * vh;
      if (fresh) {
        for (int64_t d = 0; d < hd; ++d) {
          keys[(n - 1) * hd + d] = static_cast<C>(row[D + h * hd + d]);
          values[(n - 1) * hd + d] = static_cast<C>(row[2 * D + h * hd + d]);
        }
      }
      if (wide) {
        attend_one_512(row + h * hd, keys, values, n, scale, mask.row(b), scores.data(), out + b * D + h * hd);
      } else {
        attend_one(row + h * hd, keys, values, n, hd, scale, mask.row(b), scores.data(), out + b * D + h * hd);
      }
    }
  });
}

template <typename... Args>
void attend_heads_of(at::ScalarType type, Args&&... args) {
  if (type == at::kFloat) {
    attend_heads<float>(std::forward<Args>(args)...);
  } else {
    attend_heads<at::BFloat16>(std::forward<Args>(args)...);
  }
}

}  // namespace

namespace musicgen {

// qkv [B, 1, 3 * H * hd] (q, k, v of head h at h * hd within each third); caches [B, H, T_max, hd] (see check_kv);
// valid [B, >= pos + 1] bool or none -> [B, 1, H * hd]
at::Tensor decode_attention(const at::Tensor& qkv, at::Tensor k_cache, at::Tensor v_cache, int64_t pos,
                            const std::optional<at::Tensor>& valid) {
  check_kv(k_cache, v_cache, "decode_attention");
  const int64_t B = k_cache.size(0), H = k_cache.size(1), T = k_cache.size(2), hd = k_cache.size(3);
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(1) == 1 && qkv.is_contiguous() && qkv.scalar_type() == at::kFloat,
              "decode_attention: qkv [B, 1, 3D] float32, contiguous");
  TORCH_CHECK(qkv.size(0) == B && qkv.size(2) == 3 * H * hd && pos >= 0 && pos < T, "decode_attention: shapes");
  const Mask mask = mask_of(valid, B, pos + 1, "decode_attention");
  at::Tensor out = at::empty({B, 1, H * hd}, qkv.options());
  attend_heads_of(k_cache.scalar_type(), qkv.const_data_ptr<float>(), 3 * H * hd, k_cache, v_cache, pos + 1, mask,
                  true, out.data_ptr<float>());
  return out;
}

// cross-attention of one decode step: q [B, 1, H * hd] against the text's k, v [B, H, L, hd] (see check_kv);
// valid [B, L] bool (text padding: false) or none -> [B, 1, H * hd]
at::Tensor cross_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::optional<at::Tensor>& valid) {
  check_kv(k, v, "cross_attention");
  const int64_t B = k.size(0), H = k.size(1), L = k.size(2), hd = k.size(3);
  TORCH_CHECK(q.dim() == 3 && q.size(0) == B && q.size(1) == 1 && q.size(2) == H * hd && q.is_contiguous() &&
                  q.scalar_type() == at::kFloat,
              "cross_attention: q [B, 1, H * hd] float32, contiguous");
  TORCH_CHECK(!valid.has_value() || valid->size(1) == L, "cross_attention: valid [B, L] bool");
  const Mask mask = mask_of(valid, B, L, "cross_attention");
  at::Tensor out = at::empty({B, 1, H * hd}, q.options());
  attend_heads_of(k.scalar_type(), q.const_data_ptr<float>(), H * hd, k, v, L, mask, false, out.data_ptr<float>());
  return out;
}

}  // namespace musicgen

TORCH_LIBRARY_FRAGMENT(musicgen_native, m) {
  m.def("decode_attention(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, int pos, Tensor? valid) -> Tensor",
        musicgen::decode_attention);
  m.def("cross_attention(Tensor q, Tensor k, Tensor v, Tensor? valid) -> Tensor", musicgen::cross_attention);
}
