// Torch-free parameter blocks and launcher declarations shared by the CUDA kernels and the
// torch glue in csrc/torch/. Nothing here includes a torch header, so the kernels compile with
// plain nvcc (CI does that as a check) and the glue compiles with the host compiler.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace resnext_kernels {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// y[n, co, ho, wo] = act(scale[co] * sum_{ci in group(co), kh, kw} x[n, ci, hi, wi] * w[co, ci', kh, kw]
//                        + shift[co]),  hi = ho * stride_h - pad_h + kh * dil_h (likewise wi).
// Every tensor is addressed through its element strides (64-bit), so NCHW, channels_last and
// non-contiguous views all work; x, w and y share `dtype`, scale/shift are fp32.
struct GroupedConvParams {
  const void* x;       // [N, C_in, H, W]
  const void* w;       // [C_out, C_in / groups, KH, KW]
  const float* scale;  // [C_out] contiguous
  const float* shift;  // [C_out] contiguous
  void* y;             // [N, C_out, H_out, W_out]
  int64_t N, C_in, H, W;
  int64_t C_out, H_out, W_out;
  int64_t groups, KH, KW;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t x_stride[4];  // element strides of x in (n, c, h, w) order
  int64_t w_stride[4];  // element strides of w in (co, ci, kh, kw) order
  int64_t y_stride[4];  // element strides of y in (n, c, h, w) order
  bool relu;
  bool y_channels_last;  // walk outputs in memory order (c fastest) so stores coalesce
};

// The straightforward direct convolution: one thread per output element, fp32 accumulation.
// Correct for every shape the op contract allows. Returns the launch status.
cudaError_t launch_grouped_conv_bn_relu_direct(const GroupedConvParams& p, DType dtype,
                                               cudaStream_t stream);

// The tensor-core (WMMA) kernel: channels_last fp16/bf16, 16/32/64 channels per group (C_in ==
// C_out), 3x3, stride 1 or 2, padding 1, dilation 1, compute capability 8.0+. `supports` says
// whether it applies; `w_t` is the weight re-laid out as [groups][kh][kw][ci][co], contiguous.
bool grouped_conv_wmma_supports(const GroupedConvParams& p, DType dtype, int device_major);
cudaError_t launch_grouped_conv_bn_relu_wmma(const GroupedConvParams& p, DType dtype,
                                             const void* w_t, cudaStream_t stream);

// Squeeze-and-excitation: gate[n, c] = sigmoid(W2 relu(W1 mean_hw(u[n]) + b1) + b2)[c],
// out = act(u * gate + residual). u, residual and out share `dtype`; the FC weights are fp32
// row-major ([R, C] and [C, R]); pooled and gate are fp32 [N, C] workspaces.
struct SqueezeExciteParams {
  const void* u;         // [N, C, H, W]
  const void* residual;  // [N, C, H, W] or nullptr
  void* out;             // [N, C, H, W]
  const float* w1;       // [R, C] contiguous
  const float* b1;       // [R] or nullptr
  const float* w2;       // [C, R] contiguous
  const float* b2;       // [C] or nullptr
  float* pooled;         // [N, C] workspace
  float* gate;           // [N, C] workspace
  int64_t N, C, H, W, R;
  int64_t u_stride[4], residual_stride[4], out_stride[4];  // (n, c, h, w) element strides
  bool relu;
  bool channels_last;  // u and out are channel-fastest: map threads to channels
};

// Shared memory the excite kernel needs: (C + R) floats per block.
inline int64_t squeeze_excite_smem_bytes(int64_t C, int64_t R) {
  return (C + R) * static_cast<int64_t>(sizeof(float));
}
constexpr int64_t kSqueezeExciteMaxSmemBytes = 48 * 1024;

// Three launches: squeeze (mean over H*W), excite (two FCs, sigmoid), scale (+ residual, ReLU).
// Deterministic: every reduction has a fixed order, no atomics.
cudaError_t launch_squeeze_excite(const SqueezeExciteParams& p, DType dtype, cudaStream_t stream);

}  // namespace resnext_kernels
