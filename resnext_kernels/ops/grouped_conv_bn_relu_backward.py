"""The fused conv's backward: the ops it is made of, and the autograd formula that calls them.

    resnext_kernels::grouped_conv_bn_relu_masked  the forward whose backward will run:
        (y, relu_mask); the mask (resnext_kernels/relu_mask.py, 1 bit per output element) is
        stored by the forward kernel's epilogue, so the backward recomputes nothing and the
        caller may change y in place (torchvision's Bottleneck applies an in-place ReLU)
    resnext_kernels::grouped_conv_dgrad            grad_x
    resnext_kernels::grouped_conv_wgrad            (grad_weight, grad_scale, grad_shift)

With gp = grad_y * mask: grad_x = conv_transpose(gp * scale, w); G = sum over pixels of
gp x (per co, ci, tap); grad_w = G * scale; grad_scale = sum(G * w) (= sum gp * conv(x, w));
grad_shift = sum gp. wgrad's sums are deterministic (fixed split order, no atomics) in every
backend that implements them.

Every backend implements the three ops; the mask's layout is the same in all of them, so a
forward and its backward may run on different backends. The backward ops run on the backend
the forward named; "auto" resolves the masked forward as the plain forward (the measured
table, then the device default) and the backward ops to the device default (the measured
tables time forwards only). Double backward (create_graph=True) is refused with an error.
"""

from typing import List, Tuple

import torch
from torch._prims_common import suggest_memory_format

from .. import _extension, backends, relu_mask
from .grouped_conv_bn_relu import _auto_table_key, _check_args, _grouped_conv_bn_relu_op


def _backend(backend, device):
    return backends.resolve(backend, device)


# ------------------------------------------------------------------------ masked forward
@torch.library.custom_op("resnext_kernels::grouped_conv_bn_relu_masked", mutates_args=())
def _masked_op(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
    stride: List[int], padding: List[int], dilation: List[int], groups: int, relu: bool,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_args(x, weight, scale, shift, stride, padding, dilation, groups)
    # "auto" as the plain forward resolves it (the measured table first), so y is the same
    table_key = _auto_table_key(x, weight, stride, padding, dilation, groups, backend)
    impl = backends.implementation("grouped_conv_bn_relu_masked",
                                   backends.resolve(backend, x.device, table_key))
    return impl(x, weight, scale, shift, stride, padding, dilation, groups, relu)


@_masked_op.register_fake
def _masked_fake(x, weight, scale, shift, stride, padding, dilation, groups, relu, backend):
    shape = _check_args(x, weight, scale, shift, stride, padding, dilation, groups)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=suggest_memory_format(x))
    mask = torch.empty(relu_mask.mask_shape(relu_mask.pixels(shape) if relu else 0, shape[1]),
                       dtype=torch.uint8, device=x.device)
    return y, mask


# ------------------------------------------------------------------------ dgrad
def _check_backward_args(grad_y, mask, weight, scale, groups):
    if not isinstance(grad_y, torch.Tensor) or grad_y.dim() != 4:
        raise ValueError("grad_y: expected a 4-D tensor")
    if grad_y.dtype != weight.dtype:
        raise ValueError(f"grad_y: expected {weight.dtype} (the weight's dtype), got {grad_y.dtype}")
    if mask.dtype != torch.uint8 or mask.dim() != 2:
        raise ValueError(f"relu_mask: expected a 2-D uint8 tensor, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    C_out = grad_y.shape[1]
    rows = relu_mask.mask_shape(relu_mask.pixels(grad_y), C_out)[0]
    if tuple(mask.shape) not in ((rows, C_out), (0, C_out)) or not mask.is_contiguous():
        raise ValueError(f"relu_mask: expected a contiguous [{rows}, {C_out}] mask (or "
                         f"[0, {C_out}]: no ReLU) for grad_y {tuple(grad_y.shape)}, got "
                         f"{tuple(mask.shape)}")
    if weight.shape[0] != C_out or scale.shape != (C_out,):
        raise ValueError(f"weight, scale: expected {C_out} output channels (grad_y's), got "
                         f"{tuple(weight.shape)} and {tuple(scale.shape)}")
    for t, name in ((mask, "relu_mask"), (weight, "weight"), (scale, "scale")):
        if t.device != grad_y.device:
            raise ValueError(f"{name}: expected device {grad_y.device} (grad_y's), got {t.device}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or C_out % groups:
        raise ValueError(f"groups: {groups!r} does not divide the {C_out} output channels")


def _check_input_geometry(input_size, grad_y, weight, stride, padding, dilation, groups, name):
    """The forward's input (its size) must be one whose conv gives grad_y's shape."""
    for values, what, least in ((stride, "stride", 1), (padding, "padding", 0),
                                (dilation, "dilation", 1)):
        if len(values) != 2 or min(values) < least:
            raise ValueError(f"{what}: expected 2 values >= {least}, got {list(values)}")
    if len(input_size) != 4:
        raise ValueError(f"{name}: expected 4 sizes [N, C_in, H, W], got {list(input_size)}")
    N, C_in, H, W = input_size
    if C_in != weight.shape[1] * groups:
        raise ValueError(f"{name}: expected {weight.shape[1] * groups} channels (weight's "
                         f"{weight.shape[1]} per group x {groups} groups), got {C_in}")
    H_out = (H + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    W_out = (W + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
    if (N, H_out, W_out) != (grad_y.shape[0], grad_y.shape[2], grad_y.shape[3]):
        raise ValueError(f"{name}: {list(input_size)} convolves to [{N}, _, {H_out}, {W_out}], "
                         f"but grad_y is {list(grad_y.shape)}")


@torch.library.custom_op("resnext_kernels::grouped_conv_dgrad", mutates_args=())
def _dgrad_op(
    grad_y: torch.Tensor, relu_mask: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
    input_size: List[int], stride: List[int], padding: List[int], dilation: List[int],
    groups: int, channels_last: bool, backend: str,
) -> torch.Tensor:
    _check_backward_args(grad_y, relu_mask, weight, scale, groups)
    _check_input_geometry(input_size, grad_y, weight, stride, padding, dilation, groups,
                          "input_size")
    impl = backends.implementation("grouped_conv_dgrad", _backend(backend, grad_y.device))
    return impl(grad_y, relu_mask, weight, scale, input_size, stride, padding, dilation, groups,
                channels_last)


@_dgrad_op.register_fake
def _dgrad_fake(grad_y, relu_mask, weight, scale, input_size, stride, padding, dilation, groups,
                channels_last, backend):
    _check_backward_args(grad_y, relu_mask, weight, scale, groups)
    _check_input_geometry(input_size, grad_y, weight, stride, padding, dilation, groups,
                          "input_size")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(input_size, dtype=grad_y.dtype, device=grad_y.device, memory_format=fmt)


# ------------------------------------------------------------------------ wgrad
def _check_wgrad_x(x, grad_y, weight, stride, padding, dilation, groups):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("x: expected a 4-D tensor")
    if x.dtype != grad_y.dtype or x.device != grad_y.device:
        raise ValueError(f"x: expected {grad_y.dtype} on {grad_y.device} (grad_y's), got "
                         f"{x.dtype} on {x.device}")
    _check_input_geometry(list(x.shape), grad_y, weight, stride, padding, dilation, groups, "x")


@torch.library.custom_op("resnext_kernels::grouped_conv_wgrad", mutates_args=())
def _wgrad_op(
    grad_y: torch.Tensor, relu_mask: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
    scale: torch.Tensor, stride: List[int], padding: List[int], dilation: List[int],
    groups: int, backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_backward_args(grad_y, relu_mask, weight, scale, groups)
    _check_wgrad_x(x, grad_y, weight, stride, padding, dilation, groups)
    impl = backends.implementation("grouped_conv_wgrad", _backend(backend, grad_y.device))
    return impl(grad_y, relu_mask, x, weight, scale, stride, padding, dilation, groups)


@_wgrad_op.register_fake
def _wgrad_fake(grad_y, relu_mask, x, weight, scale, stride, padding, dilation, groups, backend):
    _check_backward_args(grad_y, relu_mask, weight, scale, groups)
    _check_wgrad_x(x, grad_y, weight, stride, padding, dilation, groups)
    C_out = weight.shape[0]
    per_channel = torch.empty(C_out, dtype=torch.float32, device=weight.device)
    return torch.empty_like(weight), per_channel, torch.empty_like(per_channel)


if _extension.extension_loaded():
    # The compiled backend's own ops get the same fakes, so they trace (and pass opcheck) too.
    @torch.library.register_fake("resnext_kernels::grouped_conv_bn_relu_masked_cuda")
    def _(x, weight, scale, shift, stride, padding, dilation, groups, relu):
        return _masked_fake(x, weight, scale, shift, stride, padding, dilation, groups, relu,
                            "cuda")

    @torch.library.register_fake("resnext_kernels::grouped_conv_dgrad_cuda")
    def _(grad_y, relu_mask, weight, scale, input_size, stride, padding, dilation, groups,
          channels_last):
        return _dgrad_fake(grad_y, relu_mask, weight, scale, input_size, stride, padding,
                           dilation, groups, channels_last, "cuda")

    @torch.library.register_fake("resnext_kernels::grouped_conv_wgrad_cuda")
    def _(grad_y, relu_mask, x, weight, scale, stride, padding, dilation, groups):
        return _wgrad_fake(grad_y, relu_mask, x, weight, scale, stride, padding, dilation,
                           groups, "cuda")


# ------------------------------------------------------------------------ autograd
def _refuse_double_backward(op="grouped_conv_bn_relu"):
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{op}: double backward (create_graph=True) is not supported; "
            "compute the first-order gradients without create_graph")


def backward_from_mask(grad_y, mask, x, weight, scale, shift_dtype, conv_args, backend, needs):
    """(grad_x, grad_weight, grad_scale, grad_shift) from the saved mask; None where `needs`
    (the four inputs' needs_input_grad) says no gradient is wanted."""
    _refuse_double_backward()
    stride, padding, dilation, groups = conv_args
    need_x, need_w, need_scale, need_shift = needs
    grad_x = grad_w = grad_scale = grad_shift = None
    if need_x:
        grad_x = torch.ops.resnext_kernels.grouped_conv_dgrad(
            grad_y, mask, weight, scale, list(x.shape), stride, padding, dilation, groups,
            suggest_memory_format(x) == torch.channels_last, backend)
    if need_w or need_scale or need_shift:
        gw, gs, gb = torch.ops.resnext_kernels.grouped_conv_wgrad(
            grad_y, mask, x, weight, scale, stride, padding, dilation, groups, backend)
        grad_w = gw if need_w else None
        grad_scale = gs.to(scale.dtype) if need_scale else None
        grad_shift = gb.to(shift_dtype) if need_shift else None
    return grad_x, grad_w, grad_scale, grad_shift


def _setup_masked(ctx, inputs, output):
    x, weight, scale, shift, stride, padding, dilation, groups, relu, backend = inputs
    ctx.save_for_backward(x, weight, scale, output[1])
    ctx.shift_dtype = shift.dtype
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.backend = backend
    ctx.mark_non_differentiable(output[1])


def _backward_masked(ctx, grad_y, _grad_mask):
    x, weight, scale, mask = ctx.saved_tensors
    grads = backward_from_mask(grad_y, mask, x, weight, scale, ctx.shift_dtype, ctx.conv_args,
                               ctx.backend, ctx.needs_input_grad[:4])
    return (*grads, None, None, None, None, None, None)


_masked_op.register_autograd(_backward_masked, setup_context=_setup_masked)


def _setup_plain(ctx, inputs, output):
    x, weight, scale, shift, stride, padding, dilation, groups, relu, backend = inputs
    # Inputs only: the output may be changed in place by what follows, so the mask is made
    # again in backward (by the forward kernel, once more). grouped_conv_bn_relu() and the fused
    # modules call the masked op instead when a gradient is wanted, which saves it.
    ctx.save_for_backward(x, weight, scale, shift)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.relu = relu
    ctx.backend = backend


def _backward_plain(ctx, grad_y):
    x, weight, scale, shift = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    C_out = weight.shape[0]
    if ctx.relu:
        with torch.no_grad():
            _, mask = torch.ops.resnext_kernels.grouped_conv_bn_relu_masked(
                x, weight, scale, shift, stride, padding, dilation, groups, True, ctx.backend)
    else:
        mask = torch.empty((0, C_out), dtype=torch.uint8, device=grad_y.device)
    grads = backward_from_mask(grad_y, mask, x, weight, scale, shift.dtype, ctx.conv_args,
                               ctx.backend, ctx.needs_input_grad[:4])
    return (*grads, None, None, None, None, None, None)


_grouped_conv_bn_relu_op.register_autograd(_backward_plain, setup_context=_setup_plain)
