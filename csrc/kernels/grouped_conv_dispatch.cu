// Chooses the kernel for a grouped conv + BN + ReLU call and launches it: the tensor-core path
// where it applies (grouped_conv_wmma.cu), the direct kernel everywhere else.
#include "kernels/params.h"

namespace resnext_kernels {

GroupedConvPlan plan_grouped_conv_bn_relu(const GroupedConvParams& p, DType dtype,
                                          int device_major, bool allow_tf32) {
  GroupedConvPlan plan;
  const int block_channels = grouped_conv_wmma_block_channels(p, dtype, device_major, allow_tf32);
  if (block_channels > 0) {
    plan.path = GroupedConvPath::kWmma;
    plan.block_channels = block_channels;
    plan.workspace_bytes = grouped_conv_wmma_workspace_bytes(p, dtype, block_channels);
  }
  return plan;
}

cudaError_t launch_grouped_conv_bn_relu(const GroupedConvParams& p, DType dtype,
                                        const GroupedConvPlan& plan, void* workspace,
                                        cudaStream_t stream) {
  switch (plan.path) {
    case GroupedConvPath::kWmma:
      return launch_grouped_conv_bn_relu_wmma(p, dtype, plan.block_channels, workspace, stream);
    case GroupedConvPath::kDirect: return launch_grouped_conv_bn_relu_direct(p, dtype, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace resnext_kernels
