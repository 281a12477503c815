// dgrad at stride 1 and 2 on v3's tensor-core forward (grouped_conv_v3.cu).
//
// For a 3x3, stride-1, padding-1, dilation-1 grouped conv, grad_x is itself such a conv:
//   grad_x[n, ci, h, w] = sum_{co in group, kh, kw} gs[n, co, h + 1 - kh, w + 1 - kw] * w[co, ci', kh, kw]
// with gs = grad_y where the ReLU passed it, else 0, i.e. a forward of gs with each group's
// weights scaled by scale[co], transposed (ci <-> co) and flipped (tap (kh, kw) ->
// (2 - kh, 2 - kw)), no shift and no ReLU. At stride 2 the same holds for gs spread on the
// input's grid: gs[2 ho, 2 wo] = the gradient of output pixel (ho, wo), zeros between
// (2 ho - 1 + kh = h is h + 1 - kh = 2 ho), and the conv is at stride 1 on that grid: 4x the
// MMAs of the 9 taps that land on real gradients, but one kernel for both strides, and the
// inserted zeros cost nothing in memory: gs is never written. v3's loader forms it as it stages
// the band (GatedInput: grad_y's 16-byte chunks, or in NCHW 8 two-byte loads from its channel
// planes, and the mask's 8 bytes of those channels, a select, so gs is grad_y's values exactly,
// 0 where the ReLU blocked and at stride 2's inserted pixels). One small launch prepares the
// rest of v3's operands in the workspace:
//   the scaled, transposed, flipped weights [C_in, C_out / groups, 3, 3], w * scale rounded
//   to the dtype after the fp32 product, as the reference backend folds them (so gs cannot
//   overflow where the reference stays finite, and an inf scale makes NaN of a blocked
//   pixel's 0 as aten's sums do); and v3's epilogue constants (scale 1, shift 0: y = 1 *
//   acc + 0 is acc exactly).
// Then v3 runs (its swizzled bands, mma.sync, NaN kept in its group, 16-byte stores). Traffic:
// grad_y and the mask read once (L2 serves the halo rows and the neighbouring channel tiles),
// grad_x written once.
// An NCHW grad_y v3's loader reads itself, by channel planes; a grad_y with neither 16-byte
// channel chunks nor contiguous rows (a view with gaps between pixels, channels_last off the
// 16-byte grid) is packed into the workspace, dense channels_last, first (channels_last_copy.cu:
// grad_y read and written once more), and v3's loader gates the packed copy. An NCHW grad_x v3
// writes itself, by channel planes (grad_x is the op's own: channels_last with 16-byte chunks,
// or NCHW). (A select pass used to write gs for such a grad_y: at stride 2 that is x's size
// written and read again, 4x the packed grad_y; an unpack pass used to write grad_x from a
// channels_last copy; a pack used to precede every NCHW grad_y.)
//
// One difference from aten at stride 2: with a non-finite folded weight (an inf BN scale or
// weight), the inserted zeros multiply it too, so grad_x is NaN at every pixel the weight's
// taps reach from any pixel, where aten's sums reach only those from real gradients. Finite
// weights: NaN exactly where aten puts it (tested).
#include <cstdint>
#include <cstring>

#include "kernels/dtype_traits.cuh"
#include "kernels/launch.cuh"
#include "kernels/params.h"
#include "kernels/swizzled_band.cuh"

namespace resnext_kernels {
namespace {

constexpr int kThreads = 256;

int64_t element_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Where the parts of the workspace start (byte offsets), and its size. packed_grad_y only
// where grad_y has no 16-byte channel chunks.
struct DgradV3Workspace {
  int64_t packed_grad_y = 0, weights = 0, ones = 0, zeros = 0, v3 = 0;
  int64_t bytes = 0;
};

// v3's gated loader reads 16-byte chunks of 8 channels (channels innermost, every pixel's
// channels on the 16-byte grid), or channel planes of contiguous rows (NCHW): a grad_y with
// neither (a view with gaps between pixels, channels_last off the grid) goes through the
// workspace.
bool packs_grad_y(const GroupedConvBackwardParams& p) {
  return !v3::channels_last_aligned16(p.grad_y, p.grad_y_stride) &&
         !v3::rows_contiguous(p.grad_y_stride);
}

// gs's grid: the output's at stride 1, the input's at stride 2 (the gradients spread out).
int64_t gs_rows(const GroupedConvBackwardParams& p) { return p.stride_h == 2 ? p.H : p.H_out; }
int64_t gs_cols(const GroupedConvBackwardParams& p) { return p.stride_w == 2 ? p.W : p.W_out; }

// The forward v3 runs: gs (C_out channels, gs_rows x gs_cols) to grad_x (C_in channels, H x W),
// at stride 1, gs being grad_y (`grad_y`: p.grad_y, or its packed copy, dense channels_last)
// gated by the mask in v3's loader (GatedInput: on the output's grid, spread at stride 2), to
// p.grad_x in its layout. Pointers into the workspace are filled in by the caller (stand-ins:
// planning only).
GroupedConvParams forward_of_dgrad(const GroupedConvBackwardParams& p, const void* grad_y,
                                   const void* weights, const float* ones, const float* zeros) {
  GroupedConvParams q{};
  q.x = grad_y;
  q.w = weights;
  q.scale = ones;
  q.shift = zeros;
  q.y = p.grad_x;
  q.N = p.N; q.C_in = p.C_out; q.H = gs_rows(p); q.W = gs_cols(p);
  q.C_out = p.C_in; q.H_out = p.H; q.W_out = p.W;
  q.groups = p.groups; q.KH = p.KH; q.KW = p.KW;
  q.stride_h = 1; q.stride_w = 1; q.pad_h = 1; q.pad_w = 1; q.dil_h = 1; q.dil_w = 1;
  std::memcpy(q.x_stride, p.grad_y_stride, sizeof q.x_stride);
  if (packs_grad_y(p)) {
    redirect_to_dense_channels_last(q.x, q.x_stride, grad_y, p.C_out, p.H_out, p.W_out);
  }
  q.gated_x.on = true;
  q.gated_x.mask = p.relu_mask;
  q.gated_x.src_H = p.H_out;
  q.gated_x.src_W = p.W_out;
  q.gated_x.spread_shift = p.stride_h == 2 ? 1 : 0;
  // the weights: dense [C_in, C_out / groups, 3, 3]
  const int64_t cpg_out = p.C_out / p.groups;
  q.w_stride[0] = cpg_out * p.KH * p.KW;
  q.w_stride[1] = p.KH * p.KW;
  q.w_stride[2] = p.KW;
  q.w_stride[3] = 1;
  std::memcpy(q.y_stride, p.grad_x_stride, sizeof q.y_stride);
  q.relu = false;
  q.y_channels_last = p.grad_x_channels_last;
  q.relu_mask = nullptr;
  q.v3_band_pixels = 0;
  return q;
}

DgradV3Workspace workspace_layout(const GroupedConvBackwardParams& p, DType dtype) {
  DgradV3Workspace ws;
  const int64_t elem = element_bytes(dtype);
  ws.packed_grad_y = 0;
  ws.weights =
      packs_grad_y(p) ? workspace_part_bytes(p.N * p.H_out * p.W_out * p.C_out * elem) : 0;
  ws.ones = ws.weights + workspace_part_bytes(p.C_in * (p.C_out / p.groups) * p.KH * p.KW * elem);
  ws.zeros = ws.ones + workspace_part_bytes(p.C_in * static_cast<int64_t>(sizeof(float)));
  ws.v3 = ws.zeros + workspace_part_bytes(p.C_in * static_cast<int64_t>(sizeof(float)));
  alignas(16) static unsigned char aligned_stand_in[16] = {};
  const GroupedConvParams q = forward_of_dgrad(p, aligned_stand_in, nullptr, nullptr, nullptr);
  ws.bytes = ws.v3 + workspace_part_bytes(grouped_conv_v3_workspace_bytes(q));
  return ws;
}

// weights[c, k, kh, kw] = round(w[co, c - g * cpg_in, KH - 1 - kh, KW - 1 - kw] * scale[co]),
// co = g * cpg_out + k, for c in group g, a thread per element; the first C_in threads also
// write v3's scale (1) and shift (0).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    dgrad_fold_flip_weights_kernel(GroupedConvBackwardParams p, scalar_t* __restrict__ weights,
                              float* __restrict__ ones, float* __restrict__ zeros) {
  using Cvt = Convert<scalar_t>;
  const scalar_t* __restrict__ w = static_cast<const scalar_t*>(p.w);
  const int64_t cpg_in = p.C_in / p.groups, cpg_out = p.C_out / p.groups;
  const int64_t taps = p.KH * p.KW;
  const int64_t total = p.C_in * cpg_out * taps;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx / (cpg_out * taps);
    const int64_t k = (idx / taps) % cpg_out;
    const int64_t kh = (idx % taps) / p.KW, kw = idx % p.KW;
    const int64_t g = c / cpg_in, co = g * cpg_out + k;
    const scalar_t v = w[co * p.w_stride[0] + (c - g * cpg_in) * p.w_stride[1] +
                         (p.KH - 1 - kh) * p.w_stride[2] + (p.KW - 1 - kw) * p.w_stride[3]];
    weights[idx] = Cvt::from_float(Cvt::to_float(v) * p.scale[co]);
    if (idx < p.C_in) {
      ones[idx] = 1.f;
      zeros[idx] = 0.f;
    }
  }
}

template <typename scalar_t>
cudaError_t launch_typed(const GroupedConvBackwardParams& p, DType dtype,
                         unsigned char* workspace, cudaStream_t stream) {
  const DgradV3Workspace ws = workspace_layout(p, dtype);
  scalar_t* weights = reinterpret_cast<scalar_t*>(workspace + ws.weights);
  float* ones = reinterpret_cast<float*>(workspace + ws.ones);
  float* zeros = reinterpret_cast<float*>(workspace + ws.zeros);

  cudaError_t err = cudaSuccess;
  const void* grad_y = p.grad_y;
  if (packs_grad_y(p)) {
    grad_y = workspace + ws.packed_grad_y;
    err = launch_channels_last_copy(
        channels_last_pack(p.grad_y, p.grad_y_stride, p.N, p.C_out, p.H_out, p.W_out,
                           workspace + ws.packed_grad_y),
        stream);
    if (err != cudaSuccess) return err;
  }
  const int64_t elements = p.C_in * (p.C_out / p.groups) * p.KH * p.KW;
  err = launch_kernel(dgrad_fold_flip_weights_kernel<scalar_t>,
                      grid_stride_grid(elements, kThreads), dim3(kThreads), 0, stream, p,
                      weights, ones, zeros);
  if (err != cudaSuccess) return err;
  const GroupedConvParams q = forward_of_dgrad(p, grad_y, weights, ones, zeros);
  return launch_grouped_conv_bn_relu_v3(q, dtype, workspace + ws.v3, stream);
}

}  // namespace

bool grouped_conv_dgrad_v3_applies(const GroupedConvBackwardParams& p, DType dtype,
                                   int device_major) {
  // the forward's geometry: then the dgrad conv is 3x3, stride 1, padding 1 (on gs's grid)
  const bool stride_ok =
      (p.stride_h == 1 && p.stride_w == 1) || (p.stride_h == 2 && p.stride_w == 2);
  if (!(p.KH == 3 && p.KW == 3 && stride_ok && p.pad_h == 1 && p.pad_w == 1 && p.dil_h == 1 &&
        p.dil_w == 1)) {
    return false;
  }
  if (p.groups <= 0 || p.C_out % 8 != 0) return false;  // (v3 asks more: 64-channel tiles)
  // the mask's chunk of 8 bytes is one 8-byte load
  if (reinterpret_cast<uintptr_t>(p.relu_mask) % 8 != 0) return false;
  // v3 checks its operands: grad_y where it reads it, else its packed copy, which the plan
  // stands in for with an aligned pointer (the workspace is checked at launch); grad_x, which
  // it writes in 16-byte chunks or by channel planes
  alignas(16) static const unsigned char aligned_stand_in[16] = {};
  const void* grad_y = packs_grad_y(p) ? aligned_stand_in : p.grad_y;
  const GroupedConvParams q = forward_of_dgrad(p, grad_y, nullptr, nullptr, nullptr);
  return grouped_conv_v3_applies(q, dtype, device_major);
}

bool grouped_conv_dgrad_v3_packs_grad_y(const GroupedConvBackwardParams& p) {
  return packs_grad_y(p);
}

int64_t grouped_conv_dgrad_v3_workspace_bytes(const GroupedConvBackwardParams& p, DType dtype) {
  return workspace_layout(p, dtype).bytes;
}

cudaError_t launch_grouped_conv_dgrad_v3(const GroupedConvBackwardParams& p, DType dtype,
                                         void* workspace, cudaStream_t stream) {
  if (p.N * p.C_in * p.H * p.W == 0) return cudaSuccess;
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0) return cudaErrorInvalidValue;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  switch (dtype) {
    case DType::kFloat16: return launch_typed<__half>(p, dtype, ws, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(p, dtype, ws, stream);
    case DType::kFloat32: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace resnext_kernels
