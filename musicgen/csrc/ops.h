// The kernels one translation unit calls in another (decode_layer.cpp runs a whole layer with them).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace musicgen {

// int8_linear.cpp
at::Tensor vnni_int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& colsum,
                            const at::Tensor& wscale, int64_t half, int64_t mid);

// attention.cpp
at::Tensor decode_attention(const at::Tensor& qkv, at::Tensor k_cache, at::Tensor v_cache, int64_t pos,
                            const std::optional<at::Tensor>& valid);
at::Tensor cross_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::optional<at::Tensor>& valid);

}  // namespace musicgen
