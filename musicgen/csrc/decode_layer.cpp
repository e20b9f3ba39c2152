// One decoder layer of a decode step in one call (fused.py): what lm.Layer.decode does on an int8 model with our
// kernels, the same ops in the same order (torch's layer norm, GELU and adds, our int8 linears and attention), so
// the result is the same to the bit; only the ~17 Python-level calls a layer makes (~5 us each) become C++ calls.
//
// x [R, 1, D]: the rows of G groups (requests), group g's rows at [spans[g], spans[g + 1]), each at its own cache
// slot pos[g] with its own self-attention cache and mask, and (models with cross-attention) its own text.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "ops.h"

namespace {

constexpr int64_t PARTS = 3;  // a linear's tensors: packed weights, colsum, wscale (layout.DynamicInt8Linear.vnni)

struct Linears {
  const at::TensorList& t;
  int64_t half, mid;
  at::Tensor operator()(int64_t i, const at::Tensor& x) const {
    return musicgen::vnni_int8_linear(x, t[PARTS * i], t[PARTS * i + 1], t[PARTS * i + 2], half, mid);
  }
};

// rows [a, b) of every group, attended by `attend(g, rows)`, back in one [R, 1, D] tensor
template <typename F>
at::Tensor per_group(const at::Tensor& x, at::IntArrayRef spans, const F& attend) {
  const int64_t G = static_cast<int64_t>(spans.size()) - 1;
  if (G == 1) return attend(0, x);
  std::vector<at::Tensor> parts;
  parts.reserve(G);
  for (int64_t g = 0; g < G; ++g) parts.push_back(attend(g, x.narrow(0, spans[g], spans[g + 1] - spans[g])));
  return at::cat(parts);
}

// norms: self-attention, [cross-attention,] feed-forward (weight, bias each); linears: qkv, out, [q, out,] fc1,
// fc2 (PARTS tensors each); the cross-attention's tensors are empty lists for models without it
at::Tensor decode_layer(const at::Tensor& x, at::TensorList norms, at::TensorList linears, int64_t half, int64_t mid,
                        double eps, at::IntArrayRef spans, at::IntArrayRef pos, at::TensorList k_caches,
                        at::TensorList v_caches, const c10::List<std::optional<at::Tensor>>& valids,
                        at::TensorList text_k, at::TensorList text_v,
                        const c10::List<std::optional<at::Tensor>>& text_valids) {
  const int64_t G = static_cast<int64_t>(spans.size()) - 1, D = x.size(-1);
  const bool cross = !text_k.empty();
  TORCH_CHECK(x.dim() == 3 && x.size(1) == 1 && G >= 1 && spans[0] == 0 && spans[G] == x.size(0) &&
                  static_cast<int64_t>(pos.size()) == G && static_cast<int64_t>(k_caches.size()) == G &&
                  static_cast<int64_t>(v_caches.size()) == G && static_cast<int64_t>(valids.size()) == G,
              "decode_layer: x [R, 1, D] and one span, position, cache and mask per group");
  TORCH_CHECK(norms.size() == (cross ? 6u : 4u) && linears.size() == PARTS * (cross ? 6u : 4u) &&
                  (!cross || (static_cast<int64_t>(text_v.size()) == G && static_cast<int64_t>(text_k.size()) == G &&
                              static_cast<int64_t>(text_valids.size()) == G)),
              "decode_layer: 2 or 3 norms (weight, bias), 4 or 6 linears, one text per group with cross-attention");
  const Linears linear{linears, half, mid};
  auto norm = [&](int64_t i, const at::Tensor& h) { return at::layer_norm(h, {D}, norms[2 * i], norms[2 * i + 1], eps); };

  const at::Tensor qkv = linear(0, norm(0, x));
  at::Tensor y = per_group(qkv, spans, [&](int64_t g, const at::Tensor& rows) {
    return musicgen::decode_attention(rows, k_caches[g], v_caches[g], pos[g], valids.get(g));
  });
  at::Tensor h = x + linear(1, y);
  int64_t next = 2;
  if (cross) {
    const at::Tensor q = linear(2, norm(1, h));
    y = per_group(q, spans, [&](int64_t g, const at::Tensor& rows) {
      return musicgen::cross_attention(rows, text_k[g], text_v[g], text_valids.get(g));
    });
    h = h + linear(3, y);
    next = 4;
  }
  const at::Tensor f = at::gelu(linear(next, norm(cross ? 2 : 1, h)));
  return h + linear(next + 1, f);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(musicgen_native, m) {
  m.def("decode_layer(Tensor x, Tensor[] norms, Tensor[] linears, int half, int mid, float eps, int[] spans, "
        "int[] pos, Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, Tensor?[] valids, Tensor[] text_k, Tensor[] text_v, "
        "Tensor?[] text_valids) -> Tensor",
        decode_layer);
}
