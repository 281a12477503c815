// Chooses the dgrad kernel for a call and launches it: v3's forward of the prepared gradient
// where the forward's geometry allows it (grouped_conv_dgrad_v3.cu), else the direct kernel
// (grouped_conv_backward.cu). wgrad has one kernel pair (plan_grouped_conv_wgrad).
#include "kernels/params.h"

namespace resnext_kernels {

GroupedConvDgradPlan plan_grouped_conv_dgrad(const GroupedConvBackwardParams& p, DType dtype,
                                             int device_major, bool allow_v3) {
  GroupedConvDgradPlan plan;
  if (allow_v3 && grouped_conv_dgrad_v3_applies(p, dtype, device_major)) {
    plan.path = GroupedConvDgradPath::kV3;
    plan.workspace_bytes = grouped_conv_dgrad_v3_workspace_bytes(p, dtype);
  }
  return plan;
}

cudaError_t launch_grouped_conv_dgrad(const GroupedConvBackwardParams& p, DType dtype,
                                      const GroupedConvDgradPlan& plan, void* workspace,
                                      cudaStream_t stream) {
  switch (plan.path) {
    case GroupedConvDgradPath::kV3: return launch_grouped_conv_dgrad_v3(p, dtype, workspace, stream);
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

}  // namespace resnext_kernels
