// Chooses the backward's kernels for a call and launches them: dgrad as v3's forward of the
// prepared gradient where the forward's geometry allows it (grouped_conv_dgrad_v3.cu), wgrad's
// partial sums on v3's tensor-core machinery (grouped_conv_wgrad_v3.cu) where it applies; the
// direct kernels (grouped_conv_backward.cu) otherwise. wgrad's finalize is shared.
#include "kernels/params.h"

namespace resnext_kernels {

GroupedConvDgradPlan plan_grouped_conv_dgrad(const GroupedConvBackwardParams& p, DType dtype,
                                             int device_major, bool allow_v3) {
  GroupedConvDgradPlan plan;
  if (allow_v3 && grouped_conv_dgrad_v3_applies(p, dtype, device_major)) {
    plan.path = grouped_conv_dgrad_v3_selects(p) ? GroupedConvDgradPath::kV3Select
                                                 : GroupedConvDgradPath::kV3;
    plan.workspace_bytes = grouped_conv_dgrad_v3_workspace_bytes(p, dtype);
  }
  return plan;
}

cudaError_t launch_grouped_conv_dgrad(const GroupedConvBackwardParams& p, DType dtype,
                                      const GroupedConvDgradPlan& plan, void* workspace,
                                      cudaStream_t stream) {
  switch (plan.path) {
    case GroupedConvDgradPath::kV3:
    case GroupedConvDgradPath::kV3Select:
      return launch_grouped_conv_dgrad_v3(p, dtype, workspace, stream);
    case GroupedConvDgradPath::kDirect: return launch_grouped_conv_dgrad_direct(p, dtype, stream);
  }
  return cudaErrorInvalidValue;
}

const char* grouped_conv_dgrad_path_name(GroupedConvDgradPath path) {
  switch (path) {
    case GroupedConvDgradPath::kDirect: return "direct";
    case GroupedConvDgradPath::kV3: return "v3";
    case GroupedConvDgradPath::kV3Select: return "v3_select";
  }
  return "unknown";
}

GroupedConvWgradPlan plan_grouped_conv_wgrad(const GroupedConvBackwardParams& p, DType dtype,
                                             int device_major, bool allow_v3) {
  if (allow_v3 && grouped_conv_wgrad_v3_applies(p, dtype, device_major)) {
    GroupedConvWgradPlan plan;
    plan.path = GroupedConvWgradPath::kV3;
    plan.splits = grouped_conv_wgrad_v3_splits(p);
    plan.workspace_bytes = grouped_conv_wgrad_partials_bytes(p, plan.splits);
    return plan;
  }
  return plan_grouped_conv_wgrad_direct(p);
}

cudaError_t launch_grouped_conv_wgrad(const GroupedConvBackwardParams& p, DType dtype,
                                      const GroupedConvWgradPlan& plan, void* workspace,
                                      cudaStream_t stream) {
  if (p.C_out == 0) return cudaSuccess;
  float* partials = static_cast<float*>(workspace);
  cudaError_t err = cudaErrorInvalidValue;
  switch (plan.path) {
    case GroupedConvWgradPath::kV3:
      err = launch_grouped_conv_wgrad_v3_partials(p, dtype, plan.splits, partials, stream);
      break;
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
