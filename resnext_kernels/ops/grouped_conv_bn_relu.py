"""The op `torch.ops.resnext_kernels.grouped_conv_bn_relu`: its whole contract, in one place.

    y = relu?(conv2d(x, weight, stride, padding, dilation, groups) * scale[c] + shift[c])

BatchNorm (eval) is folded into a per-channel scale and shift (see `fold_batchnorm`), a conv
bias into the shift. The output has the input's memory format (NCHW or channels_last), like
nn.Conv2d. Supported: 3x3 kernels, any stride >= 1, padding >= 0, dilation >= 1, any groups,
float32 / float16 / bfloat16 (x and weight of one dtype; scale/shift any float dtype, used in
fp32), batch 0 and up.

Backends ("reference", "triton", "cuda", or "auto") all implement the same signature; "auto"
is resolved per call by resnext_kernels.backends.resolve: on a GPU, the backend measured fastest
for this shape (backends/auto_table.py), else the device default. The backward runs the
backend's own dgrad and wgrad ops (grouped_conv_bn_relu_backward.py); a call whose backward
will run goes through the masked forward, which saves a 1-bit ReLU mask instead of recomputing.
"""

from typing import List

import torch
from torch._prims_common import suggest_memory_format

from .. import _extension, backends
from ..backends import auto_table
from ._checks import (
    SUPPORTED_DTYPES,
    check_call_types,
    check_floating,
    check_same_device,
    check_same_dtype,
    check_shape,
    check_supported_dtype,
    check_tensor,
    pair,
)
from ._direct import backend_op_allowed, direct_call_allowed

SUPPORTED_KERNEL_SIZES = ((3, 3),)


def _check_args(x, weight, scale, shift, stride, padding, dilation, groups):
    """Validates the op's arguments; returns the output shape.

    It runs on every call, so each check is an inline test, and the _checks helper that words
    the error is called only when a test fails."""
    for t, name, ndim in ((x, "x", 4), (weight, "weight", 4), (scale, "scale", 1),
                          (shift, "shift", 1)):
        if not isinstance(t, torch.Tensor) or t.dim() != ndim:
            check_tensor(t, name, ndim)
    if x.dtype not in SUPPORTED_DTYPES:
        check_supported_dtype(x, "x")
    if weight.dtype != x.dtype:
        check_same_dtype(weight, "weight", x, "x")
    if not scale.is_floating_point():
        check_floating(scale, "scale")
    if not shift.is_floating_point():
        check_floating(shift, "shift")
    device = x.device
    for t, name in ((weight, "weight"), (scale, "scale"), (shift, "shift")):
        if t.device != device:
            check_same_device(t, name, x, "x")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups: expected a positive integer, got {groups!r}")
    N, C_in, H, W = x.shape
    C_out, cpg_in, KH, KW = weight.shape
    if C_in % groups:
        raise ValueError(f"x: channels ({C_in}) must be divisible by groups ({groups})")
    if C_out % groups:
        raise ValueError(f"weight: output channels ({C_out}) must be divisible by groups ({groups})")
    if (KH, KW) not in SUPPORTED_KERNEL_SIZES:
        raise ValueError(
            f"weight: kernel size {KH}x{KW} is not supported; supported: "
            + ", ".join(f"{a}x{b}" for a, b in SUPPORTED_KERNEL_SIZES)
        )
    if cpg_in != C_in // groups:
        check_shape(weight, "weight", (C_out, C_in // groups, KH, KW),
                    "[C_out, C_in // groups, KH, KW]")
    if scale.shape[0] != C_out:
        check_shape(scale, "scale", (C_out,), "one per output channel")
    if shift.shape[0] != C_out:
        check_shape(shift, "shift", (C_out,), "one per output channel")
    if len(stride) != 2 or min(stride) < 1:
        raise ValueError(f"stride: expected positive values, got {list(stride)}")
    if len(dilation) != 2 or min(dilation) < 1:
        raise ValueError(f"dilation: expected positive values, got {list(dilation)}")
    if len(padding) != 2 or min(padding) < 0:
        raise ValueError(f"padding: expected non-negative values, got {list(padding)}")
    H_out = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    W_out = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    if H_out < 1 or W_out < 1:
        raise ValueError(
            f"x: spatial size {H}x{W} is too small for a {KH}x{KW} kernel with padding "
            f"{list(padding)} and dilation {list(dilation)} (output would be {H_out}x{W_out})"
        )
    return (N, C_out, H_out, W_out)


def _auto_table_key(x, weight, stride, padding, dilation, groups, backend):
    """The measured-table key of an "auto" call on a GPU (None otherwise, or with no table)."""
    if backend != "auto" or x.device.type != "cuda" or not auto_table.installed():
        return None

    layout = auto_table.layout_name
    return auto_table.conv_key(backends.gpu_arch(x.device), x.dtype, layout(x), layout(weight),
                               x.shape[1], weight.shape[0], groups, x.shape[2], x.shape[3],
                               stride, padding, dilation)


@torch.library.custom_op("resnext_kernels::grouped_conv_bn_relu", mutates_args=())
def _grouped_conv_bn_relu_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    relu: bool,
    backend: str,
) -> torch.Tensor:
    return _run(x, weight, scale, shift, stride, padding, dilation, groups, relu, backend)


def _run(x, weight, scale, shift, stride, padding, dilation, groups, relu, backend,
         direct=False):
    """The op's body: validation, the backend, its kernel. Called by the dispatcher, or
    directly (direct=True) by grouped_conv_bn_relu where nothing would observe the difference
    (_direct.py)."""
    _check_args(x, weight, scale, shift, stride, padding, dilation, groups)
    table_key = None if backend != "auto" else _auto_table_key(x, weight, stride, padding,
                                                               dilation, groups, backend)
    name = backends.resolve(backend, x.device, table_key)
    impl = backends.implementation("grouped_conv_bn_relu", name, direct)
    return impl(x, weight, scale, shift, stride, padding, dilation, groups, relu)


@_grouped_conv_bn_relu_op.register_fake
def _(x, weight, scale, shift, stride, padding, dilation, groups, relu, backend):
    shape = _check_args(x, weight, scale, shift, stride, padding, dilation, groups)
    return torch.empty(
        shape, dtype=x.dtype, device=x.device, memory_format=suggest_memory_format(x)
    )


if _extension.extension_loaded():
    # The compiled backend's own op gets the same fake, so it traces (and passes opcheck) too.
    @torch.library.register_fake("resnext_kernels::grouped_conv_bn_relu_cuda")
    def _(x, weight, scale, shift, stride, padding, dilation, groups, relu):
        shape = _check_args(x, weight, scale, shift, stride, padding, dilation, groups)
        return torch.empty(
            shape, dtype=x.dtype, device=x.device, memory_format=suggest_memory_format(x)
        )


# Autograd: registered in grouped_conv_bn_relu_backward.py, with the backward's own ops.


def grouped_conv_bn_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    *,
    stride=1,
    padding=1,
    dilation=1,
    groups: int,
    relu: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Fused grouped conv + per-channel affine (folded BatchNorm) + optional ReLU.

    Args:
        x: [N, C_in, H, W], float32/float16/bfloat16, NCHW or channels_last (or any strides).
        weight: [C_out, C_in // groups, 3, 3], the dtype of x.
        scale, shift: [C_out] floating point; see `fold_batchnorm`.
        stride, padding, dilation: an int or a pair.
        groups: number of groups.
        relu: apply ReLU after the affine.
        backend: "auto", "reference", "triton" or "cuda".

    Returns: [N, C_out, H_out, W_out] in x's dtype and memory format.
    """
    check_call_types(dict(x=x, weight=weight, scale=scale, shift=shift), {}, backend)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups: expected an int, got {type(groups).__name__}")
    return grouped_conv_bn_relu_call(x, weight, scale, shift, pair(stride, "stride"),
                                     pair(padding, "padding"), pair(dilation, "dilation"),
                                     groups, bool(relu), backend)


def grouped_conv_bn_relu_call(x, weight, scale, shift, stride, padding, dilation, groups,
                              relu, backend, plain=None):
    """The op with its arguments in the schema's types (the fused modules call this): run
    directly where nothing observes the difference, else through the dispatcher. `plain`:
    _direct.plain_eager(), where the caller has it already."""
    if direct_call_allowed(x, weight, scale, shift, plain=plain):
        return _run(x, weight, scale, shift, stride, padding, dilation, groups, relu, backend,
                    direct=True)
    if backend_op_allowed(backend, x, weight, scale, shift):  # traced: the C++ op itself
        _check_args(x, weight, scale, shift, stride, padding, dilation, groups)
        return torch.ops.resnext_kernels.grouped_conv_bn_relu_cuda(
            x, weight, scale, shift, stride, padding, dilation, groups, relu)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or scale.requires_grad or shift.requires_grad):
        # the backward will run: the forward that saves the ReLU mask
        return torch.ops.resnext_kernels.grouped_conv_bn_relu_masked(
            x, weight, scale, shift, stride, padding, dilation, groups, relu, backend)[0]
    return torch.ops.resnext_kernels.grouped_conv_bn_relu(
        x, weight, scale, shift, stride, padding, dilation, groups, relu, backend)


def fold_batchnorm(bn: torch.nn.BatchNorm2d, conv_bias=None):
    """(scale, shift) in fp32 from an eval-mode BatchNorm's running statistics.

    scale = gamma / sqrt(running_var + eps);  shift = beta - running_mean * scale (+ scale * bias).
    """
    var = bn.running_var.float()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.float()
    shift = -bn.running_mean.float() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.float()
    if conv_bias is not None:
        shift = shift + scale * conv_bias.float()
    return scale, shift
