// Chooses the kernel for a grouped conv + BN + ReLU call and launches it: v3 where it applies
// (grouped_conv_v3.cu), else the WMMA kernel (grouped_conv_wmma.cu), else the direct kernel.
// v3 reads and writes channels_last 16-byte chunks, or, where x or y has none but its rows are
// contiguous (NCHW), channel planes a lane per pixel. An x with neither (a view with gaps
// between pixels, or channels_last off the 16-byte grid) is packed into the workspace first by
// a layout copy (channels_last_copy.cu). y is the op's own (dense, in x's memory format), so it
// always has one of the two. RESNEXT_KERNELS_CUDA_V3=0 keeps v3's calls on WMMA.
#include <cstdint>

#include "kernels/params.h"
#include "kernels/swizzled_band.cuh"

namespace resnext_kernels {
namespace {

int64_t element_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Where v3's workspace parts start (bytes): its packed weights, then x's packed copy where the
// plan has one.
struct V3Workspace {
  int64_t weights = 0, packed_x = 0, bytes = 0;
};

V3Workspace v3_workspace(const GroupedConvParams& p, const GroupedConvPlan& plan, DType dtype) {
  V3Workspace ws;
  ws.packed_x = workspace_part_bytes(grouped_conv_v3_workspace_bytes(p));
  ws.bytes = ws.packed_x + (plan.pack_x ? workspace_part_bytes(p.N * p.C_in * p.H * p.W *
                                                               element_bytes(dtype))
                                        : 0);
  return ws;
}

// p with x replaced by its packed copy (dense channels_last at `packed_x`) where `plan` packs it.
GroupedConvParams with_packed_x(const GroupedConvParams& p, const GroupedConvPlan& plan,
                                const void* packed_x) {
  GroupedConvParams q = p;
  if (plan.pack_x) redirect_to_dense_channels_last(q.x, q.x_stride, packed_x, p.C_in, p.H, p.W);
  return q;
}

// x's layout copy (where the plan has it), then v3, which checks what it is given.
cudaError_t launch_v3(const GroupedConvParams& p, DType dtype, const GroupedConvPlan& plan,
                      void* workspace, cudaStream_t stream) {
  // a gated x is on its own grid (GatedInput): a pack at p.H x p.W would read past it
  if (plan.pack_x && p.gated_x.on) return cudaErrorInvalidValue;
  unsigned char* base = static_cast<unsigned char*>(workspace);
  const V3Workspace ws = v3_workspace(p, plan, dtype);
  const GroupedConvParams q = with_packed_x(p, plan, base + ws.packed_x);
  if (q.N * q.C_out * q.H_out * q.W_out == 0) return cudaSuccess;
  if (plan.pack_x) {
    const cudaError_t err = launch_channels_last_copy(
        channels_last_pack(p.x, p.x_stride, p.N, p.C_in, p.H, p.W, base + ws.packed_x), stream);
    if (err != cudaSuccess) return err;
  }
  // (refuses operands a plan made for other tensors would hand it without chunks or planes)
  return launch_grouped_conv_bn_relu_v3(q, dtype, base + ws.weights, stream);
}

}  // namespace

GroupedConvPlan plan_grouped_conv_bn_relu(const GroupedConvParams& p, DType dtype,
                                          int device_major, bool allow_tf32, bool allow_v3) {
  if (allow_v3) {
    GroupedConvPlan plan;
    plan.path = GroupedConvPath::kV3;
    // an x with neither chunks nor contiguous rows is packed (a gated x never is: it is on its
    // own grid, GatedInput, and dgrad stages it)
    plan.pack_x = !p.gated_x.on && !v3::channels_last_aligned16(p.x, p.x_stride) &&
                  !v3::rows_contiguous(p.x_stride);
    // the packed copy's layout, with an aligned stand-in for the workspace (checked at launch)
    alignas(16) static const unsigned char aligned_stand_in[16] = {};
    const GroupedConvParams q = with_packed_x(p, plan, aligned_stand_in);
    if (grouped_conv_v3_applies(q, dtype, device_major)) {
      plan.workspace_bytes = v3_workspace(p, plan, dtype).bytes;
      return plan;
    }
  }
  GroupedConvPlan plan;
  const int block_channels = grouped_conv_wmma_block_channels(p, dtype, device_major, allow_tf32);
  if (block_channels > 0) {
    plan.path = GroupedConvPath::kWmma;
    plan.block_channels = block_channels;
    plan.workspace_bytes = grouped_conv_wmma_workspace_bytes(p, dtype, block_channels);
  }
  return plan;
}

namespace {

cudaError_t launch_planned(const GroupedConvParams& p, DType dtype, const GroupedConvPlan& plan,
                           void* workspace, cudaStream_t stream) {
  // only v3's loader forms a gated input: the other kernels would read x as it is
  if (p.gated_x.on && plan.path != GroupedConvPath::kV3) return cudaErrorInvalidValue;
  switch (plan.path) {
    case GroupedConvPath::kV3: return launch_v3(p, dtype, plan, workspace, stream);
    case GroupedConvPath::kWmma:
      return launch_grouped_conv_bn_relu_wmma(p, dtype, plan.block_channels, workspace, stream);
    case GroupedConvPath::kDirect: return launch_grouped_conv_bn_relu_direct(p, dtype, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_grouped_conv_bn_relu(const GroupedConvParams& p, DType dtype,
                                        const GroupedConvPlan& plan, void* workspace,
                                        cudaStream_t stream) {
  GroupedConvParams q = p;
  if (!q.relu) q.relu_mask = nullptr;  // no ReLU, no mask
  const bool mask_after = q.relu_mask != nullptr && plan.path != GroupedConvPath::kV3;
  if (mask_after) q.relu_mask = nullptr;  // (the kernels other than v3 never write it)
  const cudaError_t err = launch_planned(q, dtype, plan, workspace, stream);
  if (err != cudaSuccess || !mask_after) return err;
  return launch_relu_mask_from_output(p, dtype, stream);
}

const char* grouped_conv_path_name(GroupedConvPath path) {
  switch (path) {
    case GroupedConvPath::kDirect: return "direct";
    case GroupedConvPath::kWmma: return "wmma";
    case GroupedConvPath::kV3: return "v3";
  }
  return "unknown";
}

}  // namespace resnext_kernels
