"""The C++/CUDA backend: thin calls into the ops that resnext_kernels._C registers."""

import torch

from . import batchnorm_train, reference
from .backward_choice import backward_choice, runs_kernel


def grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups, relu):
    return torch.ops.resnext_kernels.grouped_conv_bn_relu_cuda(
        x, weight, scale, shift, stride, padding, dilation, groups, relu
    )


def grouped_conv_bn_relu_masked(x, weight, scale, shift, stride, padding, dilation, groups,
                                relu):
    """(y, the ReLU mask of y): v3's epilogue stores the mask with y; the direct and WMMA
    kernels' calls read it back from y in one more pass (csrc/kernels/relu_mask.cu). The mask is
    always y's own, as torch's ReLU backward decides from its result: where the WMMA kernel packs
    groups (cpg < 16) and its 0 * NaN carries one group's non-finite input into the others' y
    (docs/KERNELS.md), the gradient passes at those NaN outputs, as torch's ReLU backward
    passes it at any NaN output. (The mask used to come from the reference's forward there: a
    second conv whose rounding put some near-0 pre-activations on the other side of 0 from y's,
    so the gradient was not y's; and on a GPU the reference is cuDNN, which need not keep a NaN
    in its group either: docs/KERNELS.md, the H100 session of 344631f.)"""
    return torch.ops.resnext_kernels.grouped_conv_bn_relu_masked_cuda(
        x, weight, scale, shift, stride, padding, dilation, groups, relu)


# The backward's kernels: dgrad on v3's forward where the forward was 3x3 stride 1 or 2
# fp16/bf16 (csrc/kernels/grouped_conv_dgrad_v3.cu), else a direct kernel; wgrad on tensor cores
# where the forward was one v3 takes (csrc/kernels/grouped_conv_wgrad_v3.cu), else a direct
# kernel (grouped_conv_backward.cu: CUDA cores, scalar loads); in NCHW the v3 kernels read
# their operands and write grad_x by channel planes, with no layout copy (only views with gaps
# between pixels are packed channels_last first: csrc/kernels/channels_last_copy.cu). Checked
# against
# float64; the H100 measured the direct wgrad at 0.07x cuDNN eager's training step and has not
# yet run wgrad v3 (docs/KERNELS.md), so they run only when asked for:
#   RESNEXT_KERNELS_CUDA_BACKWARD=aten     (default) aten's backward (cuDNN), selected by the mask
#   RESNEXT_KERNELS_CUDA_BACKWARD=kernels  the CUDA kernels above (read on every call)
#   RESNEXT_KERNELS_CUDA_BACKWARD=dgrad    the dgrad kernels, aten's wgrad
CUDA_BACKWARD_ENV = "RESNEXT_KERNELS_CUDA_BACKWARD"


def cuda_backward_kernels() -> str:
    """Which backward the cuda backend runs: "aten", "kernels" or "dgrad"
    (CUDA_BACKWARD_ENV)."""
    return backward_choice(CUDA_BACKWARD_ENV)


def grouped_conv_dgrad(grad_y, mask, weight, scale, input_size, stride, padding, dilation,
                       groups, channels_last):
    """grad_x: aten's, or the CUDA kernels' (cuda_backward_kernels()): v3's forward of the
    masked gradient with scaled, flipped weights where it applies, else the direct kernel."""
    if not runs_kernel(CUDA_BACKWARD_ENV, "dgrad"):
        return reference.grouped_conv_dgrad(grad_y, mask, weight, scale, input_size, stride,
                                            padding, dilation, groups, channels_last)
    return torch.ops.resnext_kernels.grouped_conv_dgrad_cuda(
        grad_y, mask, weight, scale, list(input_size), stride, padding, dilation, groups,
        channels_last)


def grouped_conv_wgrad(grad_y, mask, x, weight, scale, stride, padding, dilation, groups):
    """(grad_w, grad_scale, grad_shift): aten's, or the CUDA wgrad kernels' (fp32 partial sums
    per fixed range of pixels, on tensor cores where v3's bands apply, else direct; the ranges
    added in order: deterministic; then G * scale, sum(G * w), sum gp)."""
    if not runs_kernel(CUDA_BACKWARD_ENV, "wgrad"):
        return reference.grouped_conv_wgrad(grad_y, mask, x, weight, scale, stride, padding,
                                            dilation, groups)
    return torch.ops.resnext_kernels.grouped_conv_wgrad_cuda(
        grad_y, mask, x, weight, scale, stride, padding, dilation, groups)


def grouped_conv_bn_relu_train(x, weight, gamma, beta, eps, stride, padding, dilation, groups,
                               relu):
    """Train-mode BN around the CUDA conv (issue 16, CUDA v1): z from the conv kernel with a
    unit scale, then the batch statistics (fp32 partials per 256 pixels, merged in a fixed
    order), the normalize, the ReLU and its mask in CUDA kernels
    (csrc/kernels/batchnorm_train.cu). The statistics read z once more: not yet gathered in the
    conv's epilogue, as the triton backend's are."""
    z = batchnorm_train.conv_output(grouped_conv_bn_relu, x, weight, stride, padding, dilation,
                                    groups)
    y, mask, mean, var = torch.ops.resnext_kernels.batchnorm_train_forward_cuda(
        z, gamma, beta, float(eps), bool(relu))
    return y, mask, z, mean, var


def batchnorm_train_backward_sums(grad_y, mask, z, mean, var, gamma, eps):
    """(grad_gamma, grad_beta, grad_z's coefficients): one pass over grad_y, the mask and z,
    fixed-order sums (csrc/kernels/batchnorm_train.cu)."""
    return torch.ops.resnext_kernels.batchnorm_train_backward_sums_cuda(
        grad_y, mask, z, mean, var, gamma, float(eps))


def grouped_conv_bn_train_backward(grad_y, mask, z, coef, x, weight, stride, padding, dilation,
                                   groups, need_x, need_weight):
    """grad_z written once by a CUDA kernel, then this backend's dgrad and wgrad of the plain
    conv (its kernels or aten's, as CUDA_BACKWARD_ENV says)."""
    if not (need_x or need_weight):
        return z.new_empty(0), z.new_empty(0)
    grad_z = torch.ops.resnext_kernels.batchnorm_train_grad_z_cuda(grad_y, mask, z, coef)
    return batchnorm_train.conv_backward(
        grouped_conv_dgrad, grouped_conv_wgrad, grad_z, x, weight, stride, padding, dilation,
        groups, need_x, need_weight)


def squeeze_excite(u, w1, b1, w2, b2, residual, relu):
    return torch.ops.resnext_kernels.squeeze_excite_cuda(u, w1, b1, w2, b2, residual, relu)


def squeeze_excite_backward(grad_out, u, w1, b1, w2, b2, residual, relu, need_u, need_fc,
                            need_residual):
    # no CUDA kernels for the SE backward yet: the reference's fp32 torch ops
    return reference.squeeze_excite_backward(grad_out, u, w1, b1, w2, b2, residual, relu,
                                             need_u, need_fc, need_residual)
