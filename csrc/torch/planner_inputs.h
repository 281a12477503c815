// What the kernel planners (plan_grouped_conv_bn_relu, plan_grouped_conv_dgrad) need to know
// beyond the call's tensors, read the same way by every glue file.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <cstdlib>
#include <cstring>

namespace resnext_kernels {

// The compute capability's major version of the device t lives on (sm_80+ paths).
inline int device_compute_major(const at::Tensor& t) {
  int major = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, t.get_device()));
  return major;
}

// RESNEXT_KERNELS_CUDA_V3=0 keeps the calls v3 would take off it, for comparisons: the forward
// on v2, dgrad on the direct kernel. Read on every call.
inline bool cuda_v3_allowed() {
  const char* text = std::getenv("RESNEXT_KERNELS_CUDA_V3");
  return text == nullptr || std::strcmp(text, "0") != 0;
}

}  // namespace resnext_kernels
