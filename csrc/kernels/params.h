// Torch-free parameter blocks and launcher declarations shared by the CUDA kernels and the
// torch glue in csrc/torch/. Nothing here includes a torch header, so the kernels compile with
// plain nvcc (CI does that as a check) and the glue compiles with the host compiler.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace resnext_kernels {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// --- Staging through the workspace ---------------------------------------------------------
// The v3 kernels read channels_last 16-byte chunks of 8 channels, or channel planes where the
// rows are contiguous (NCHW). An operand with neither (a view with gaps between pixels,
// channels_last off the 16-byte grid) goes through the caller's workspace as a dense
// channels_last copy: the forward's x (grouped_conv_dispatch.cu), dgrad's grad_y
// (grouped_conv_dgrad_v3.cu), wgrad's x and grad_y (grouped_conv_backward_dispatch.cu). Their
// outputs (the op's own: channels_last or NCHW) v3 writes itself.

// Every part of a workspace starts on a 256-byte boundary: the size a part takes.
constexpr int64_t kWorkspacePartAlign = 256;
inline int64_t workspace_part_bytes(int64_t bytes) {
  return (bytes + kWorkspacePartAlign - 1) / kWorkspacePartAlign * kWorkspacePartAlign;
}

// The element strides, (n, c, h, w) order, of a dense channels_last [N, C, H, W].
inline void dense_channels_last_strides(int64_t C, int64_t H, int64_t W, int64_t* stride) {
  stride[0] = H * W * C;
  stride[1] = 1;
  stride[2] = W * C;
  stride[3] = C;
}

// Points an operand (its data pointer and (n, c, h, w) element strides) at a dense
// channels_last copy of it, `dense` ([N, C, H, W]).
template <typename Pointer>
inline void redirect_to_dense_channels_last(Pointer& data, int64_t* stride, Pointer dense,
                                            int64_t C, int64_t H, int64_t W) {
  data = dense;
  dense_channels_last_strides(C, H, W, stride);
}

// A copy of a 4-D tensor [N, C, H, W] of any strides into a dense channels_last copy of it
// (channels_last_copy.cu): 16-bit elements moved as bits, C a multiple of 8, the dense copy
// 16-byte aligned. Returns cudaErrorInvalidValue where it does not apply.
struct ChannelsLastCopyParams {
  const void* src;     // strided
  void* dst;           // dense channels_last
  int64_t N, C, H, W;
  int64_t strided[4];  // src's element strides, (n, c, h, w) order
  int64_t max_blocks;  // the grid's cap (each block then walks several tiles); 0: 2^20
};
bool channels_last_copy_applies(const ChannelsLastCopyParams& p);
cudaError_t launch_channels_last_copy(const ChannelsLastCopyParams& p, cudaStream_t stream);

// The pack of `strided` (strides `stride`) into the dense channels_last `dense`.
inline ChannelsLastCopyParams channels_last_pack(const void* strided, const int64_t* stride,
                                                 int64_t N, int64_t C, int64_t H, int64_t W,
                                                 void* dense) {
  ChannelsLastCopyParams p{strided, dense, N, C, H, W, {}, 0};
  for (int i = 0; i < 4; ++i) p.strided[i] = stride[i];
  return p;
}

// An input that v3's loader forms as it stages it (v3 only; dgrad on v3 sets it, every other
// caller leaves it value-initialised: off). The conv's input pixel (n, c, h, w), on its H x W
// grid, is x[n, c, h >> spread_shift, w >> spread_shift] where h and w are multiples of
// 1 << spread_shift and the mask's bit for that pixel of x is set, else 0: the backward's
// gradient gated by the forward's ReLU (and at stride 2 spread on the input's grid) without a
// pass that writes it out. x is then channels_last with 16-byte aligned pixels on its own
// src_H x src_W grid (GroupedConvParams::x_stride its strides).
struct GatedInput {
  bool on;
  const uint8_t* mask;   // relu_mask layout over x's pixels and C_in channels, 8-byte aligned;
                         // nullptr: every pixel passes
  int64_t src_H, src_W;  // x's own grid: H = src_H << spread_shift (or one less), likewise W
  int spread_shift;      // 0, or 1: x's pixel (h, w) sits at (2 h, 2 w), zeros between
};

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
  // The ReLU mask for the backward (resnext_kernels/relu_mask.py's layout: uint8
  // [ceil(M / 8), C_out] contiguous, M = N * H_out * W_out pixels in (n, ho, wo) order, bit j of
  // byte [r, c] for pixel 8 r + j, 1 where the rounded output is not <= 0, 0 past M), or nullptr
  // for none (relu off: there is no mask). Written by v3's epilogue, by a pass over y after
  // the other kernels (launch_grouped_conv_bn_relu does both). Needs no zeroing.
  uint8_t* relu_mask;
  // Host-side tuning, read by the v3 planner only (RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS): the
  // most output pixels in one CTA's band, 16..256 (a band is one output row at least, whatever
  // its width); 0 (value-initialised) is v3's default, 256. Smaller bands: more, smaller CTAs
  // (more of them per SM) for more halo rows re-read.
  int64_t v3_band_pixels;
  GatedInput gated_x;  // v3 only: x formed in the loader (off when value-initialised)
};

// The straightforward direct convolution: one thread per output element, fp32 accumulation.
// Correct for every shape the op contract allows. Returns the launch status.
cudaError_t launch_grouped_conv_bn_relu_direct(const GroupedConvParams& p, DType dtype,
                                               cudaStream_t stream);

// The tensor-core (WMMA) kernel: fp16/bf16, or fp32 as TF32 when allow_tf32, any layout (16-byte vector loads and stores when
// channels_last), 3x3, stride 1 or 2, padding 1, dilation 1, C_in == C_out, compute capability
// 8.0+. Channels per group 16/32/64 run one group per channel slab; 1/2/4/8 pack 16 / cpg groups
// into a 16-channel slab with a block-diagonal weight tile. `block_channels` returns the slab
// width (16, 32 or 64), or 0 when the kernel does not apply. The launch first re-lays the weights
// out into `workspace` (workspace_bytes of it, 16-byte aligned) as [slab][tap][ci][co].
int grouped_conv_wmma_block_channels(const GroupedConvParams& p, DType dtype, int device_major,
                                     bool allow_tf32);
int64_t grouped_conv_wmma_workspace_bytes(const GroupedConvParams& p, DType dtype,
                                          int block_channels);
cudaError_t launch_grouped_conv_bn_relu_wmma(const GroupedConvParams& p, DType dtype,
                                             int block_channels, void* workspace,
                                             cudaStream_t stream);

// v3 (grouped_conv_v3.cu): mma.sync on a swizzled shared-memory band of the input, B in
// registers. fp16/bf16, x and y each channels_last with 16-byte aligned pixels, or with
// contiguous rows (NCHW: read and written by channel planes, a gated x too), 3x3, stride 1 or 2,
// padding 1, dilation 1, C_in == C_out a multiple of 64, 4, 8, 16, 32 or 64 channels per group,
// compute capability 8.0+. The launch first packs the weights into `workspace`
// (grouped_conv_v3_workspace_bytes): in the order the kernel's lanes hold them (cpg <= 16), or
// as padded rows per output channel that each CTA copies to shared memory (cpg 32/64).
bool grouped_conv_v3_applies(const GroupedConvParams& p, DType dtype, int device_major);
int64_t grouped_conv_v3_workspace_bytes(const GroupedConvParams& p);
// Output rows per CTA band as planned for p (p.v3_band_pixels included); 0 where none fits.
int grouped_conv_v3_band_rows(const GroupedConvParams& p);
cudaError_t launch_grouped_conv_bn_relu_v3(const GroupedConvParams& p, DType dtype,
                                           void* workspace, cudaStream_t stream);

// The ReLU mask (GroupedConvParams::relu_mask) read back from y after the conv: one thread per
// mask byte, 8 pixels of one channel. For the paths whose epilogue does not write it.
cudaError_t launch_relu_mask_from_output(const GroupedConvParams& p, DType dtype,
                                         cudaStream_t stream);

// Which kernel runs a call, and the scratch memory it needs: the one place that decides
// (grouped_conv_dispatch.cu). v3 reads and writes NCHW x and y itself (channel planes); an x
// with neither 16-byte channel chunks nor contiguous rows (a view with gaps, or channels_last
// off the 16-byte grid) is packed dense channels_last into the workspace first
// (launch_channels_last_copy). (Not a gated x: dgrad stages its own.) A y with neither goes to
// WMMA: the op's y never is one. v3's epilogue's mask does not depend on y's layout.
enum class GroupedConvPath : int { kDirect = 0, kWmma = 1, kV3 = 2 };
struct GroupedConvPlan {
  GroupedConvPath path = GroupedConvPath::kDirect;
  int block_channels = 0;       // WMMA channel slab width
  bool pack_x = false;          // v3: x packed channels_last into the workspace first
  int64_t workspace_bytes = 0;  // the re-laid-out weights; v3: then the packed x (a plan is
                                // for its call's tensors: sizes, layouts, pointers)
};
const char* grouped_conv_path_name(GroupedConvPath path);
// allow_tf32: fp32 may multiply in TF32 (torch.backends.cudnn.allow_tf32); otherwise fp32 runs
// the direct kernel in full fp32. allow_v3 = false keeps calls v3 would take on v2 (WMMA), for
// comparisons (RESNEXT_KERNELS_CUDA_V3=0 in the torch glue).
GroupedConvPlan plan_grouped_conv_bn_relu(const GroupedConvParams& p, DType dtype,
                                          int device_major, bool allow_tf32,
                                          bool allow_v3 = true);
// Runs the planned kernel(s) on `stream`; `workspace` holds plan.workspace_bytes. With
// p.relu_mask set (and p.relu), the mask too: v3 in its epilogue, the others by a pass over y.
cudaError_t launch_grouped_conv_bn_relu(const GroupedConvParams& p, DType dtype,
                                        const GroupedConvPlan& plan, void* workspace,
                                        cudaStream_t stream);

// The backward of y = relu(scale * conv(x, w) + shift) (the forward above, relu or not).
// With gp = grad_y where the forward's ReLU passed it (relu_mask; every gp when there is none):
//   grad_x = conv_transpose(gp * scale, w)                                    (dgrad)
//   G[co, ci, kh, kw] = sum over output pixels of gp[co] * x[ci] under that tap,
//   grad_w = G * scale[co], grad_scale[co] = sum(G[co] * w[co]), grad_shift[co] = sum gp[co]
//                                                                                (wgrad)
// The mask is resnext_kernels/relu_mask.py's: uint8 [ceil(M / 8), C_out], contiguous, M =
// N * H_out * W_out pixels in (n, ho, wo) order; bit j of byte [r, c] is pixel 8 r + j. The
// gradient is selected by it, not multiplied (a NaN grad_y where the ReLU blocked stays out).
// grad_y, w, x, grad_x and grad_w share `dtype`; every other buffer is fp32.
struct GroupedConvBackwardParams {
  const void* grad_y;         // [N, C_out, H_out, W_out]
  const uint8_t* relu_mask;   // [ceil(M / 8), C_out] contiguous; nullptr: the forward had no ReLU
  const void* w;              // [C_out, C_in / groups, KH, KW]
  const float* scale;         // [C_out] contiguous
  const void* x;              // [N, C_in, H, W]                        (wgrad only)
  void* grad_x;               // [N, C_in, H, W]                        (dgrad's output)
  void* grad_w;               // [C_out, C_in / groups, KH, KW]         (wgrad's outputs)
  float* grad_scale;          // [C_out] contiguous
  float* grad_shift;          // [C_out] contiguous
  int64_t N, C_in, H, W;
  int64_t C_out, H_out, W_out;
  int64_t groups, KH, KW;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t grad_y_stride[4];   // element strides, (n, c, h, w) order
  int64_t w_stride[4];        // (co, ci, kh, kw)
  int64_t x_stride[4];        // (n, c, h, w)
  int64_t grad_x_stride[4];   // (n, c, h, w)
  int64_t grad_w_stride[4];   // (co, ci, kh, kw)
  bool grad_x_channels_last;  // walk grad_x in memory order (c fastest) so stores coalesce
};


// dgrad, direct (grouped_conv_backward.cu): one thread per grad_x element, summing the output
// channels of its group over the taps that reached it. Any stride, padding, dilation, kernel
// size, channels per group, layout; fp32 arithmetic. Returns the launch status.
cudaError_t launch_grouped_conv_dgrad_direct(const GroupedConvBackwardParams& p, DType dtype,
                                             cudaStream_t stream);

// dgrad on v3 (grouped_conv_dgrad_v3.cu): where the forward was 3x3, stride 1 or 2, padding 1,
// dilation 1, grad_x is v3's stride-1 forward of gs = grad_y selected by the mask (at stride 2
// spread on the input's grid, zeros between) with each group's weights scaled, transposed and
// flipped; v3's loader forms gs from grad_y and the mask (GatedInput). Applies where that
// forward is one v3 takes (fp16/bf16, C_in == C_out a multiple of 64, cpg 4..64, compute
// capability 8.0+), the mask is 8-byte aligned and grad_x is channels_last with 16-byte chunks
// or has contiguous rows (NCHW: v3 writes it by channel planes). v3's gated loader reads
// channels_last 16-byte chunks or channel planes of contiguous rows: a grad_y with neither (a
// view with gaps between pixels, or channels_last off the 16-byte grid) is packed into the
// workspace first (`packs_grad_y`, launch_channels_last_copy). `workspace`
// (16-byte aligned) holds the packed grad_y, the weights, v3's epilogue constants and v3's
// packed weights.
bool grouped_conv_dgrad_v3_applies(const GroupedConvBackwardParams& p, DType dtype,
                                   int device_major);
bool grouped_conv_dgrad_v3_packs_grad_y(const GroupedConvBackwardParams& p);
int64_t grouped_conv_dgrad_v3_workspace_bytes(const GroupedConvBackwardParams& p, DType dtype);
cudaError_t launch_grouped_conv_dgrad_v3(const GroupedConvBackwardParams& p, DType dtype,
                                         void* workspace, cudaStream_t stream);

// Which dgrad kernel runs a call (grouped_conv_backward_dispatch.cu: the one place that
// decides), and its scratch memory. p.grad_x must be set (v3 checks its layout).
enum class GroupedConvDgradPath : int { kDirect = 0, kV3 = 1 };
struct GroupedConvDgradPlan {
  GroupedConvDgradPath path = GroupedConvDgradPath::kDirect;
  bool pack_grad_y = false;    // v3: grad_y packed channels_last into the workspace first
  int64_t workspace_bytes = 0;
};
const char* grouped_conv_dgrad_path_name(GroupedConvDgradPath path);
// allow_v3 = false keeps every call on the direct kernel (RESNEXT_KERNELS_CUDA_V3=0, as the
// forward's).
GroupedConvDgradPlan plan_grouped_conv_dgrad(const GroupedConvBackwardParams& p, DType dtype,
                                             int device_major, bool allow_v3 = true);
cudaError_t launch_grouped_conv_dgrad(const GroupedConvBackwardParams& p, DType dtype,
                                      const GroupedConvDgradPlan& plan, void* workspace,
                                      cudaStream_t stream);

// wgrad: the output pixels are cut into `splits` fixed ranges; one launch writes each range's
// fp32 partial sums into a workspace ([splits][C_out][C_in / groups * KH * KW + 1]: per output
// channel its weight elements (ci, kh, kw), then its sum of gp), a second (the finalize, a block
// per output channel) adds the ranges in order and forms grad_w, grad_scale and grad_shift. No
// atomics: bitwise the same from run to run. Two kernels write the partial sums:
//  - direct (grouped_conv_backward.cu): a thread per (co, weight element) sums its range's
//    pixels in order; any geometry, as dgrad; CUDA cores.
//  - v3 (grouped_conv_wgrad_v3.cu): per work unit (image, band of rows, 64-channel tile), gp and
//    x's band in swizzled shared memory, mma.sync with the pixels as K; where the forward was
//    one v3 takes (fp16/bf16, 3x3, stride 1 or 2, padding 1, C_in == C_out a multiple of 64,
//    cpg 4..64, compute capability 8.0+) and the mask is 8-byte aligned. Its ranges are whole
//    work units. It reads x and grad_y in channels_last 16-byte chunks, or by channel planes
//    where their rows are contiguous (NCHW); one with neither (a view with gaps between pixels,
//    channels_last off the 16-byte grid) is packed into the workspace first
//    (launch_channels_last_copy), after the partial sums.
enum class GroupedConvWgradPath : int { kDirect = 0, kV3 = 1 };
struct GroupedConvWgradPlan {
  GroupedConvWgradPath path = GroupedConvWgradPath::kDirect;
  int64_t splits = 1;           // pixel ranges
  int threads = 32;             // direct: per block, a power of two, 32..256, an element each
  int64_t element_chunks = 1;   // direct: blocks per output channel (grid.x = C_out * chunks)
  bool pack_x = false;          // v3: x packed channels_last into the workspace first
  bool pack_grad_y = false;     // v3: grad_y likewise
  int64_t workspace_bytes = 0;  // grouped_conv_wgrad_workspace_bytes(p, plan, dtype)
};
inline int64_t grouped_conv_wgrad_partials_bytes(const GroupedConvBackwardParams& p,
                                                 int64_t splits) {
  return splits * p.C_out * ((p.C_in / p.groups) * p.KH * p.KW + 1) *
         static_cast<int64_t>(sizeof(float));
}
// The partial sums of plan.splits ranges, then the packed copies plan asks for (each on a
// 256-byte boundary).
int64_t grouped_conv_wgrad_workspace_bytes(const GroupedConvBackwardParams& p,
                                           const GroupedConvWgradPlan& plan, DType dtype);
const char* grouped_conv_wgrad_path_name(GroupedConvWgradPath path);
// The one place that decides (grouped_conv_backward_dispatch.cu); allow_v3 = false keeps every
// call on the direct kernel (RESNEXT_KERNELS_CUDA_V3=0).
GroupedConvWgradPlan plan_grouped_conv_wgrad(const GroupedConvBackwardParams& p, DType dtype,
                                             int device_major, bool allow_v3 = true);
// The partial sums of plan.splits ranges (any splits >= 1: a caller may override the plan's),
// then the finalize.
cudaError_t launch_grouped_conv_wgrad(const GroupedConvBackwardParams& p, DType dtype,
                                      const GroupedConvWgradPlan& plan, void* workspace,
                                      cudaStream_t stream);

GroupedConvWgradPlan plan_grouped_conv_wgrad_direct(const GroupedConvBackwardParams& p);
cudaError_t launch_grouped_conv_wgrad_direct_partials(const GroupedConvBackwardParams& p,
                                                      DType dtype,
                                                      const GroupedConvWgradPlan& plan,
                                                      float* partials, cudaStream_t stream);
bool grouped_conv_wgrad_v3_applies(const GroupedConvBackwardParams& p, DType dtype,
                                   int device_major);
int64_t grouped_conv_wgrad_v3_splits(const GroupedConvBackwardParams& p);
cudaError_t launch_grouped_conv_wgrad_v3_partials(const GroupedConvBackwardParams& p,
                                                  DType dtype, int64_t splits, float* partials,
                                                  cudaStream_t stream);
cudaError_t launch_grouped_conv_wgrad_finalize(const GroupedConvBackwardParams& p, DType dtype,
                                               int64_t splits, const float* partials,
                                               cudaStream_t stream);

// Squeeze-and-excitation: gate[n, c] = sigmoid(W2 relu(W1 mean_hw(u[n]) + b1) + b2)[c],
// out = act(u * gate + residual). u, residual and out share `dtype`; the FC weights are fp32
// row-major ([R, C] and [C, R]); pooled and gate are fp32 [N, C] workspaces, hidden
// [squeeze_excite_hidden_splits(C), N, R] (the hidden layer's partial sums over C).
struct SqueezeExciteParams {
  const void* u;         // [N, C, H, W]
  const void* residual;  // [N, C, H, W] or nullptr
  void* out;             // [N, C, H, W]
  const float* w1;       // [R, C] contiguous
  const float* b1;       // [R] or nullptr
  const float* w2;       // [C, R] contiguous
  const float* b2;       // [C] or nullptr
  float* pooled;         // [N, C] workspace
  float* hidden;         // [hidden splits, N, R] workspace
  float* gate;           // [N, C] workspace
  int64_t N, C, H, W, R;
  int64_t u_stride[4], residual_stride[4], out_stride[4];  // (n, c, h, w) element strides
  bool relu;
  bool channels_last;  // u and out are channel-fastest: map threads to channels
};

// The most channels (C, and hidden units R) the launches' grids can cover: 65535 blocks of 32.
constexpr int64_t kSqueezeExciteMaxChannels = 65535LL * 32;

// The excite sums W1 pooled over C in parts of kSqueezeExciteSplitK channels (one launch's
// grid.z, for parallelism at large C), then adds the parts in a fixed order.
constexpr int64_t kSqueezeExciteSplitK = 512;
__host__ __device__ inline int64_t squeeze_excite_hidden_splits(int64_t C) {
  return (C + kSqueezeExciteSplitK - 1) / kSqueezeExciteSplitK;
}

// Four launches: squeeze (mean over H*W), excite (two batched FCs: the hidden layer's partial
// sums, then ReLU, W2 and sigmoid), scale (+ residual, ReLU).
// Deterministic: every reduction has a fixed order, no atomics.
cudaError_t launch_squeeze_excite(const SqueezeExciteParams& p, DType dtype, cudaStream_t stream);

// Whether the squeeze and scale take their 16-byte-chunk paths (channels_last u, residual and
// out with evenly spaced pixels, C a multiple of 8 (fp16/bf16) or 4 (fp32), 16-byte-aligned
// chunks); otherwise they read and write an element per thread and access, at any strides.
bool squeeze_excite_chunked(const SqueezeExciteParams& p, DType dtype);

// Train-mode BatchNorm around the conv (batchnorm_train.cu; issue 16, CUDA v1). z is the conv's
// output [N, C, H, W] (run with a unit scale and no shift); M = N * H * W pixels in flat
// (n, h, w) order, whatever the memory format. Every [N, C, H, W] tensor is addressed through its
// own element strides; z, grad_y and out share `dtype`; every per-channel vector is fp32 [C].
//   statistics       mean and the biased variance of z per channel (partials per
//                    kBatchNormTrainTilePixels pixels merged by Chan's formulas, fixed order)
//   normalize        out = y = relu?(z * scale + shift), scale = gamma / sqrt(var + eps),
//                    shift = beta - mean * scale (fp32, rounded once); the ReLU mask of y
//   backward sums    grad_gamma = sum gp * (z - mean) / sqrt(var + eps), grad_beta = sum gp,
//                    gp = grad_y where the mask passes it; then grad_z's coefficients [4, C] =
//                    (mean, k_gp, k_x, k_0) (resnext_kernels/backends/batchnorm_train.py)
//   grad_z           out = k_gp * gp + k_x * (z - mean) + k_0
// Deterministic: every sum has a fixed order, no atomics.
struct BatchNormTrainParams {
  int64_t N, C, H, W;
  const void* z;
  int64_t z_stride[4];       // (n, c, h, w) element strides
  const void* grad_y;        // the backward's: grad of y
  int64_t grad_y_stride[4];
  void* out;                 // y (normalize) or grad_z (grad_z)
  int64_t out_stride[4];
  uint8_t* relu_mask;        // uint8 [ceil(M / 8), C] (relu_mask.py): written by normalize
                             // when relu, read by the backward; nullptr: no ReLU
  const float* mean;         // the batch statistics (statistics' outputs, the others' inputs)
  const float* var;          // (biased)
  const float* gamma;
  const float* beta;
  const float* coef;         // grad_z's coefficients [4, C] (grad_z's input)
  float* mean_out;           // statistics: mean and var
  float* var_out;
  float* grad_gamma;         // backward sums: grad_gamma, grad_beta, coefficients [4, C]
  float* grad_beta;
  float* coef_out;
  float* workspace;          // batchnorm_train_workspace_floats(p) floats: the partials
  float eps;
  bool relu;
  int64_t reduce_rows_in_one;  // the partials' reduction: rows one block merges (0: default;
                               // tests set fewer to run its several levels on small shapes)
};

// Pixels per partial (one CTA's tile) of the statistics and the backward sums.
constexpr int64_t kBatchNormTrainTilePixels = 256;
int64_t batchnorm_train_workspace_floats(const BatchNormTrainParams& p);
// M > 0 (a batch of 0 has no statistics: the glue leaves them to the caller)
cudaError_t launch_batchnorm_train_statistics(const BatchNormTrainParams& p, DType dtype,
                                              cudaStream_t stream);
cudaError_t launch_batchnorm_train_normalize(const BatchNormTrainParams& p, DType dtype,
                                             cudaStream_t stream);
// M = 0 too (the sums are then 0)
cudaError_t launch_batchnorm_train_backward_sums(const BatchNormTrainParams& p, DType dtype,
                                                 cudaStream_t stream);
cudaError_t launch_batchnorm_train_grad_z(const BatchNormTrainParams& p, DType dtype,
                                          cudaStream_t stream);
// How each [N, C, H, W] operand is read and written, 8 pixels x 8 channels per thread
// (batchnorm_train.cu): "channels" (16-byte vectors along channels: channels_last),
// "pixels" (along an image's contiguous pixels: NCHW) or "scalar" (any other strides).
const char* batchnorm_train_access_name(const void* data, const int64_t* stride, int64_t N,
                                        int64_t C, int64_t H, int64_t W);

}  // namespace resnext_kernels
