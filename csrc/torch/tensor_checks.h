// Small helpers shared by the torch glue files: argument checks and dtype mapping.
#pragma once

#include <ATen/ATen.h>

#include "kernels/params.h"

namespace resnext_kernels {

inline DType to_kernel_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, name, ": expected float32, float16 or bfloat16, got ",
                       t.scalar_type());
  }
}

inline void check_cuda(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == like.device(), name, ": expected it on ", like.device(),
              " (where x is), got ", t.device());
}

// Copies a tensor's 4 element strides into a kernel parameter array.
inline void copy_strides4(const at::Tensor& t, int64_t* out) {
  for (int i = 0; i < 4; ++i) out[i] = t.stride(i);
}

}  // namespace resnext_kernels
