// Chooses the kernel for a grouped conv + BN + ReLU call and launches it: v3 where it applies
// (grouped_conv_v3.cu), else the WMMA kernel (grouped_conv_wmma.cu), else the direct kernel.
#include "kernels/params.h"

namespace resnext_kernels {

GroupedConvPlan plan_grouped_conv_bn_relu(const GroupedConvParams& p, DType dtype,
                                          int device_major, bool allow_tf32, bool allow_v3) {
  GroupedConvPlan plan;
  if (allow_v3 && grouped_conv_v3_applies(p, dtype, device_major)) {
    plan.path = GroupedConvPath::kV3;
    plan.workspace_bytes = grouped_conv_v3_workspace_bytes(p);
    return plan;
  }
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
    case GroupedConvPath::kV3: return launch_grouped_conv_bn_relu_v3(p, dtype, workspace, stream);
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
