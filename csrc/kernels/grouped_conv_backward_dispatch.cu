// Chooses the backward's kernels for a call and launches them: dgrad as v3's forward of the
// prepared gradient where the forward's geometry allows it (grouped_conv_dgrad_v3.cu), wgrad's
// partial sums on v3's tensor-core machinery (grouped_conv_wgrad_v3.cu) where it applies; the
// direct kernels (grouped_conv_backward.cu) otherwise. wgrad's finalize is shared.
#include <cstdint>

#include "kernels/params.h"
#include "kernels/swizzled_band.cuh"

namespace resnext_kernels {

GroupedConvDgradPlan plan_grouped_conv_dgrad(const GroupedConvBackwardParams& p, DType dtype,
                                             int device_major, bool allow_v3) {
  GroupedConvDgradPlan plan;
  if (allow_v3 && grouped_conv_dgrad_v3_applies(p, dtype, device_major)) {
    plan.path = GroupedConvDgradPath::kV3;
    plan.pack_grad_y = grouped_conv_dgrad_v3_packs_grad_y(p);
    plan.workspace_bytes = grouped_conv_dgrad_v3_workspace_bytes(p, dtype);
  }
  return plan;
}

cudaError_t launch_grouped_conv_dgrad(const GroupedConvBackwardParams& p, DType dtype,
                                      const GroupedConvDgradPlan& plan, void* workspace,
                                      cudaStream_t stream) {
  switch (plan.path) {
    case GroupedConvDgradPath::kV3:
      // the workspace was sized for the plan's packing: a plan made for other tensors must not
      // pack into it
      if (plan.pack_grad_y != grouped_conv_dgrad_v3_packs_grad_y(p)) return cudaErrorInvalidValue;
      return launch_grouped_conv_dgrad_v3(p, dtype, workspace, stream);
    case GroupedConvDgradPath::kDirect: return launch_grouped_conv_dgrad_direct(p, dtype, stream);
  }
  return cudaErrorInvalidValue;
}

const char* grouped_conv_dgrad_path_name(GroupedConvDgradPath path) {
  switch (path) {
    case GroupedConvDgradPath::kDirect: return "direct";
    case GroupedConvDgradPath::kV3: return "v3";
  }
  return "unknown";
}

namespace {

// Where wgrad's workspace parts start (bytes): the partial sums, then x's and grad_y's packed
// copies where the plan packs them.
struct WgradWorkspace {
  int64_t packed_x = 0, packed_grad_y = 0, bytes = 0;
};

WgradWorkspace wgrad_workspace(const GroupedConvBackwardParams& p,
                               const GroupedConvWgradPlan& plan, DType dtype) {
  const int64_t elem = dtype == DType::kFloat32 ? 4 : 2;
  WgradWorkspace ws;
  ws.packed_x = workspace_part_bytes(grouped_conv_wgrad_partials_bytes(p, plan.splits));
  const int64_t x_bytes = p.N * p.C_in * p.H * p.W * elem;
  const int64_t grad_y_bytes = p.N * p.C_out * p.H_out * p.W_out * elem;
  ws.packed_grad_y = ws.packed_x + (plan.pack_x ? workspace_part_bytes(x_bytes) : 0);
  ws.bytes = ws.packed_grad_y + (plan.pack_grad_y ? workspace_part_bytes(grad_y_bytes) : 0);
  return ws;
}

// p with x and grad_y replaced by their packed copies where `plan` packs them (dense
// channels_last at `packed_x`, `packed_grad_y`).
GroupedConvBackwardParams with_packed_operands(const GroupedConvBackwardParams& p,
                                               const GroupedConvWgradPlan& plan,
                                               const void* packed_x, const void* packed_grad_y) {
  GroupedConvBackwardParams q = p;
  if (plan.pack_x) redirect_to_dense_channels_last(q.x, q.x_stride, packed_x, p.C_in, p.H, p.W);
  if (plan.pack_grad_y) {
    redirect_to_dense_channels_last(q.grad_y, q.grad_y_stride, packed_grad_y, p.C_out, p.H_out,
                                    p.W_out);
  }
  return q;
}

}  // namespace

GroupedConvWgradPlan plan_grouped_conv_wgrad(const GroupedConvBackwardParams& p, DType dtype,
                                             int device_major, bool allow_v3) {
  if (allow_v3) {
    GroupedConvWgradPlan plan;
    plan.path = GroupedConvWgradPath::kV3;
    // wgrad v3 reads 16-byte chunks of 8 channels, or channel planes of contiguous rows: an
    // operand with neither (a view with gaps between pixels, channels_last off the 16-byte
    // grid) is packed
    plan.pack_x = !v3::channels_last_aligned16(p.x, p.x_stride) && !v3::rows_contiguous(p.x_stride);
    plan.pack_grad_y = !v3::channels_last_aligned16(p.grad_y, p.grad_y_stride) &&
                       !v3::rows_contiguous(p.grad_y_stride);
    // the packed copies' layout, with an aligned stand-in for the workspace (checked at launch)
    alignas(16) static const unsigned char aligned_stand_in[16] = {};
    const GroupedConvBackwardParams q =
        with_packed_operands(p, plan, aligned_stand_in, aligned_stand_in);
    if (grouped_conv_wgrad_v3_applies(q, dtype, device_major)) {
      plan.splits = grouped_conv_wgrad_v3_splits(q);
      plan.workspace_bytes = grouped_conv_wgrad_workspace_bytes(p, plan, dtype);
      return plan;
    }
  }
  GroupedConvWgradPlan plan = plan_grouped_conv_wgrad_direct(p);
  plan.workspace_bytes = grouped_conv_wgrad_workspace_bytes(p, plan, dtype);
  return plan;
}

int64_t grouped_conv_wgrad_workspace_bytes(const GroupedConvBackwardParams& p,
                                           const GroupedConvWgradPlan& plan, DType dtype) {
  return wgrad_workspace(p, plan, dtype).bytes;
}

cudaError_t launch_grouped_conv_wgrad(const GroupedConvBackwardParams& p, DType dtype,
                                      const GroupedConvWgradPlan& plan, void* workspace,
                                      cudaStream_t stream) {
  if (p.C_out == 0) return cudaSuccess;
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0) return cudaErrorInvalidValue;
  unsigned char* base = static_cast<unsigned char*>(workspace);
  float* partials = reinterpret_cast<float*>(base);
  cudaError_t err = cudaErrorInvalidValue;
  switch (plan.path) {
    case GroupedConvWgradPath::kV3: {
      const WgradWorkspace ws = wgrad_workspace(p, plan, dtype);
      const GroupedConvBackwardParams q =
          with_packed_operands(p, plan, base + ws.packed_x, base + ws.packed_grad_y);
      // a plan made for other tensors must not send operands v3 cannot read to it
      if (!grouped_conv_wgrad_v3_applies(q, dtype, 8)) return cudaErrorInvalidValue;
      if (plan.pack_x) {
        err = launch_channels_last_copy(
            channels_last_pack(p.x, p.x_stride, p.N, p.C_in, p.H, p.W, base + ws.packed_x),
            stream);
        if (err != cudaSuccess) return err;
      }
      if (plan.pack_grad_y) {
        err = launch_channels_last_copy(
            channels_last_pack(p.grad_y, p.grad_y_stride, p.N, p.C_out, p.H_out, p.W_out,
                               base + ws.packed_grad_y),
            stream);
        if (err != cudaSuccess) return err;
      }
      err = launch_grouped_conv_wgrad_v3_partials(q, dtype, plan.splits, partials, stream);
      break;
    }
    case GroupedConvWgradPath::kDirect:
      err = launch_grouped_conv_wgrad_direct_partials(p, dtype, plan, partials, stream);
      break;
  }
  if (err != cudaSuccess) return err;
  return launch_grouped_conv_wgrad_finalize(p, dtype, plan.splits, partials, stream);
}

const char* grouped_conv_wgrad_path_name(GroupedConvWgradPath path) {
  switch (path) {
    case GroupedConvWgradPath::kDirect: return "direct";
    case GroupedConvWgradPath::kV3: return "v3";
  }
  return "unknown";
}

}  // namespace resnext_kernels
