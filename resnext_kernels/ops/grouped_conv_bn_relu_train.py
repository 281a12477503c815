"""Grouped conv + train-mode BatchNorm (+ ReLU): the ops, their autograd, and the finalize that
updates the running statistics as nn.BatchNorm2d does.

    resnext_kernels::grouped_conv_bn_relu_train(x, weight, gamma, beta, eps, stride, padding,
            dilation, groups, relu, backend) -> (y, relu_mask, z, batch_mean, batch_var)
        z = conv2d(x, weight); batch_mean, batch_var (biased) of z per channel over
        (N, H_out, W_out), in fp32; y = relu?((z - batch_mean) / sqrt(batch_var + eps) * gamma
        + beta) in x's dtype and memory format. relu_mask and z are kept for the backward.
    resnext_kernels::batchnorm_train_backward_sums(grad_y, relu_mask, z, batch_mean, batch_var,
            gamma, eps, backend) -> (grad_gamma, grad_beta, grad_z_coefficients)
        BN's training-mode sums through the ReLU, and the per-channel coefficients
        fp32 [4, C] = (mean, k_gp, k_x, k_0) of grad_z = k_gp * gp + k_x * (z - mean) + k_0
        (backends/batchnorm_train.py).
    resnext_kernels::grouped_conv_bn_train_backward(grad_y, relu_mask, z,
            grad_z_coefficients, x, weight, stride, padding, dilation, groups, need_x,
            need_weight, backend) -> (grad_x, grad_weight)
        the conv's backward of grad_z (an empty tensor for a gradient not wanted).

The first op's backward is the second, then the third. grad_z is made once and the chosen
dgrad and wgrad of the plain conv take it (aten's, or the backend's own kernels with
RESNEXT_KERNELS_*_BACKWARD, read on every call as for the eval-mode op); the triton backend's
kernels form grad_z in their prologue from grad_y, the mask, z and the coefficients instead
(never writing it) with RESNEXT_KERNELS_TRITON_BN_GRAD_Z=prologue (backends/triton/train.py).
No aten convolution in the triton and cuda backends with their kernels chosen.

`update_running_stats` is the finalize: running_mean and running_var move toward the batch's
mean and unbiased variance by `momentum`, the update of F.batch_norm(training=True) (to
rounding: the unbiased variance is var * n / (n - 1) here, var_sum / (n - 1) in aten); a
batch of 0 leaves them alone, as aten does. The fused modules (modules.py) count
num_batches_tracked and choose the momentum (cumulative when None) as nn.BatchNorm2d does.
"""

from typing import List, Tuple

import torch
from torch._prims_common import suggest_memory_format

from .. import backends, relu_mask
from ._checks import check_call_types, check_floating, check_same_device, check_tensor, pair
from .grouped_conv_bn_relu import _auto_table_key, _check_args
from .grouped_conv_bn_relu_backward import _check_wgrad_x, _refuse_double_backward

OPS = torch.ops.resnext_kernels


def _check_affine(gamma, beta, weight, device):
    for t, name in ((gamma, "gamma"), (beta, "beta")):
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            check_tensor(t, name, 1)
        if not t.is_floating_point():
            check_floating(t, name)
        if t.device != device:
            check_same_device(t, name, weight, "weight")
        if isinstance(weight, torch.Tensor) and weight.dim() == 4 and t.shape[0] != weight.shape[0]:
            raise ValueError(f"{name}: expected shape ({weight.shape[0]},) (one per output "
                             f"channel), got {tuple(t.shape)}")


def _check_train_args(x, weight, gamma, beta, eps, stride, padding, dilation, groups):
    """The forward's checks (the conv's, gamma's and beta's, eps, and BN's own: more than one
    value per channel); returns the output shape."""
    if isinstance(x, torch.Tensor):
        _check_affine(gamma, beta, weight, x.device)
    shape = _check_args(x, weight, gamma, beta, stride, padding, dilation, groups)
    if isinstance(eps, bool) or not isinstance(eps, (float, int)) or not eps >= 0:
        raise ValueError(f"eps: expected a non-negative float, got {eps!r}")
    N, _, H_out, W_out = shape
    if N * H_out * W_out == 1:  # nn.BatchNorm2d's rule (its variance would be 0/0)
        raise ValueError(f"x: expected more than 1 value per channel when training, got input "
                         f"size {list(x.shape)} (a 1x1 output of batch 1)")
    return shape


# ------------------------------------------------------------------------ forward
@torch.library.custom_op("resnext_kernels::grouped_conv_bn_relu_train", mutates_args=())
def _train_op(
    x: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
    stride: List[int], padding: List[int], dilation: List[int], groups: int, relu: bool,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_train_args(x, weight, gamma, beta, eps, stride, padding, dilation, groups)
    # "auto" as the eval-mode forward resolves it (the measured table first): the same conv
    table_key = _auto_table_key(x, weight, stride, padding, dilation, groups, backend)
    impl = backends.implementation("grouped_conv_bn_relu_train",
                                   backends.resolve(backend, x.device, table_key))
    return impl(x, weight, gamma, beta, eps, stride, padding, dilation, groups, relu)


@_train_op.register_fake
def _train_fake(x, weight, gamma, beta, eps, stride, padding, dilation, groups, relu, backend):
    shape = _check_train_args(x, weight, gamma, beta, eps, stride, padding, dilation, groups)
    fmt = suggest_memory_format(x)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    mask = torch.empty(relu_mask.mask_shape(relu_mask.pixels(shape) if relu else 0, shape[1]),
                       dtype=torch.uint8, device=x.device)
    stats = torch.empty(shape[1], dtype=torch.float32, device=x.device)
    return y, mask, torch.empty_like(y), stats, torch.empty_like(stats)


# ------------------------------------------------------------------------ BN backward
def _check_grad_mask_and_z(grad_y, mask, z, tensors):
    """grad_y, the ReLU mask and z agree; `tensors` ((tensor, name, shape) of the per-channel
    arguments) have that shape, a floating dtype and grad_y's device."""
    for t, name in ((grad_y, "grad_y"), (z, "z")):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            check_tensor(t, name, 4)
    if grad_y.shape != z.shape or grad_y.dtype != z.dtype:
        raise ValueError(f"grad_y: expected z's shape {list(z.shape)} and dtype {z.dtype}, got "
                         f"{list(grad_y.shape)} {grad_y.dtype}")
    C = z.shape[1]
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.uint8:
        raise ValueError("relu_mask: expected a uint8 tensor")
    rows = relu_mask.mask_shape(relu_mask.pixels(z), C)[0]
    if tuple(mask.shape) not in ((rows, C), (0, C)) or not mask.is_contiguous():
        raise ValueError(f"relu_mask: expected a contiguous [{rows}, {C}] mask (or [0, {C}]: "
                         f"no ReLU) for z {list(z.shape)}, got {tuple(mask.shape)}")
    for t, name, shape in tensors:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.shape != shape:
            raise ValueError(f"{name}: expected a floating-point {list(shape)} tensor (per "
                             f"channel of z)")
    for t, name in ((mask, "relu_mask"), (z, "z"), *((t, name) for t, name, _ in tensors)):
        if t.device != grad_y.device:
            raise ValueError(f"{name}: expected device {grad_y.device} (grad_y's), got {t.device}")


def _check_bn_backward_args(grad_y, mask, z, mean, var, gamma, eps):
    C = z.shape[1] if isinstance(z, torch.Tensor) and z.dim() == 4 else None
    _check_grad_mask_and_z(grad_y, mask, z, ((mean, "batch_mean", (C,)),
                                             (var, "batch_var", (C,)), (gamma, "gamma", (C,))))
    if isinstance(eps, bool) or not isinstance(eps, (float, int)) or not eps >= 0:
        raise ValueError(f"eps: expected a non-negative float, got {eps!r}")


@torch.library.custom_op("resnext_kernels::batchnorm_train_backward_sums", mutates_args=())
def _bn_sums_op(
    grad_y: torch.Tensor, relu_mask: torch.Tensor, z: torch.Tensor, batch_mean: torch.Tensor,
    batch_var: torch.Tensor, gamma: torch.Tensor, eps: float, backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_bn_backward_args(grad_y, relu_mask, z, batch_mean, batch_var, gamma, eps)
    impl = backends.implementation("batchnorm_train_backward_sums",
                                   backends.resolve(backend, grad_y.device))
    return impl(grad_y, relu_mask, z, batch_mean, batch_var, gamma, eps)


@_bn_sums_op.register_fake
def _bn_sums_fake(grad_y, relu_mask, z, batch_mean, batch_var, gamma, eps, backend):
    _check_bn_backward_args(grad_y, relu_mask, z, batch_mean, batch_var, gamma, eps)
    C = z.shape[1]
    per_channel = torch.empty(C, dtype=torch.float32, device=z.device)
    coef = torch.empty((4, C), dtype=torch.float32, device=z.device)
    return per_channel, torch.empty_like(per_channel), coef


def _check_conv_backward_args(grad_y, mask, z, coef, x, weight, stride, padding, dilation,
                              groups):
    C = z.shape[1] if isinstance(z, torch.Tensor) and z.dim() == 4 else None
    _check_grad_mask_and_z(grad_y, mask, z, ((coef, "grad_z_coefficients", (4, C)),))
    if coef.dtype != torch.float32 or not coef.is_contiguous():
        raise ValueError(f"grad_z_coefficients: expected a contiguous float32 tensor, got "
                         f"{coef.dtype}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        check_tensor(weight, "weight", 4)
    if weight.dtype != z.dtype or weight.device != z.device or weight.shape[0] != C:
        raise ValueError(f"weight: expected {C} output channels (z's), {z.dtype} on {z.device}, "
                         f"got {list(weight.shape)} {weight.dtype} on {weight.device}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or C % groups:
        raise ValueError(f"groups: {groups!r} does not divide the {C} output channels")
    _check_wgrad_x(x, grad_y, weight, stride, padding, dilation, groups)


@torch.library.custom_op("resnext_kernels::grouped_conv_bn_train_backward", mutates_args=())
def _conv_backward_op(
    grad_y: torch.Tensor, relu_mask: torch.Tensor, z: torch.Tensor,
    grad_z_coefficients: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
    stride: List[int], padding: List[int], dilation: List[int], groups: int, need_x: bool,
    need_weight: bool, backend: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_conv_backward_args(grad_y, relu_mask, z, grad_z_coefficients, x, weight, stride,
                              padding, dilation, groups)
    impl = backends.implementation("grouped_conv_bn_train_backward",
                                   backends.resolve(backend, grad_y.device))
    return impl(grad_y, relu_mask, z, grad_z_coefficients, x, weight, stride, padding,
                dilation, groups, need_x, need_weight)


@_conv_backward_op.register_fake
def _conv_backward_fake(grad_y, relu_mask, z, grad_z_coefficients, x, weight, stride, padding,
                        dilation, groups, need_x, need_weight, backend):
    _check_conv_backward_args(grad_y, relu_mask, z, grad_z_coefficients, x, weight, stride,
                              padding, dilation, groups)
    nothing = z.new_empty(0)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                         memory_format=suggest_memory_format(x)) if need_x else nothing
    grad_w = torch.empty_like(weight) if need_weight else nothing.clone()
    return grad_x, grad_w


# ------------------------------------------------------------------------ autograd
def _setup_train(ctx, inputs, output):
    x, weight, gamma, beta, eps, stride, padding, dilation, groups, relu, backend = inputs
    _, mask, z, mean, var = output
    ctx.save_for_backward(x, weight, gamma, mask, z, mean, var)
    ctx.beta_dtype = beta.dtype
    ctx.eps = eps
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.backend = backend
    ctx.mark_non_differentiable(mask, z, mean, var)


def _backward_train(ctx, grad_y, _grad_mask, _grad_z, _grad_mean, _grad_var):
    _refuse_double_backward()
    x, weight, gamma, mask, z, mean, var = ctx.saved_tensors
    need_x, need_w, need_gamma, need_beta = ctx.needs_input_grad[:4]
    stride, padding, dilation, groups = ctx.conv_args
    backend = ctx.backend
    grad_gamma, grad_beta, coef = OPS.batchnorm_train_backward_sums(
        grad_y, mask, z, mean, var, gamma, ctx.eps, backend)
    grad_x = grad_w = None
    if need_x or need_w:
        grad_x, grad_w = OPS.grouped_conv_bn_train_backward(
            grad_y, mask, z, coef, x, weight, stride, padding, dilation, groups, need_x, need_w,
            backend)
    return (grad_x if need_x else None, grad_w if need_w else None,
            grad_gamma.to(gamma.dtype) if need_gamma else None,
            grad_beta.to(ctx.beta_dtype) if need_beta else None,
            None, None, None, None, None, None, None)


_train_op.register_autograd(_backward_train, setup_context=_setup_train)


# ------------------------------------------------------------------------ the finalize
def update_running_stats(running_mean, running_var, batch_mean, batch_var, count, momentum):
    """F.batch_norm(training=True)'s update of the running statistics, in place:
    running = (1 - momentum) * running + momentum * batch, with the unbiased variance
    (batch_var * count / (count - 1)). momentum: a float, or a 0-d tensor (the cumulative
    average's 1 / num_batches_tracked, kept a tensor so that torch.compile need not read it).
    No update for count 0 (a batch of 0), as aten."""
    if count == 0:
        return
    with torch.no_grad():
        unbiased = batch_var * (count / (count - 1))
        for running, batch in ((running_mean, batch_mean), (running_var, unbiased)):
            if running is not None:
                running.mul_(1 - momentum).add_(batch * momentum)


def grouped_conv_bn_relu_train_call(x, weight, gamma, beta, running_mean, running_var,
                                    momentum, eps, stride, padding, dilation, groups, relu,
                                    backend):
    """The op, then the finalize, with the arguments in the schema's types (the fused modules
    call this). gamma, beta: tensors (ones and zeros for a BN without affine)."""
    y, _, _, mean, var = OPS.grouped_conv_bn_relu_train(
        x, weight, gamma, beta, float(eps), stride, padding, dilation, groups, relu, backend)
    if running_mean is not None or running_var is not None:
        update_running_stats(running_mean, running_var, mean, var, relu_mask.pixels(y),
                             momentum)
    return y


def grouped_conv_bn_relu_train(
    x: torch.Tensor,
    weight: torch.Tensor,
    gamma=None,
    beta=None,
    running_mean=None,
    running_var=None,
    *,
    momentum=0.1,
    eps: float = 1e-5,
    stride=1,
    padding=1,
    dilation=1,
    groups: int,
    relu: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Grouped conv + BatchNorm in training mode (batch statistics) + optional ReLU, with
    F.batch_norm(training=True)'s semantics: running_mean / running_var (when given) are
    updated in place with `momentum`, from the batch's mean and unbiased variance.

    Args:
        x: [N, C_in, H, W], float32/float16/bfloat16, NCHW or channels_last.
        weight: [C_out, C_in // groups, 3, 3], x's dtype.
        gamma, beta: [C_out] BN affine parameters (None: 1 and 0).
        running_mean, running_var: [C_out] buffers to update, or None.
        momentum: the update's factor (a float, or a 0-d tensor).
        eps, stride, padding, dilation, groups, relu, backend: as grouped_conv_bn_relu.

    Returns: y, [N, C_out, H_out, W_out] in x's dtype and memory format.
    """
    check_call_types(dict(x=x, weight=weight), dict(gamma=gamma, beta=beta,
                     running_mean=running_mean, running_var=running_var), backend)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups: expected an int, got {type(groups).__name__}")
    C_out = weight.shape[0]
    if gamma is None:
        gamma = torch.ones(C_out, dtype=torch.float32, device=weight.device)
    if beta is None:
        beta = torch.zeros(C_out, dtype=torch.float32, device=weight.device)
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var")):
        if t is not None and (t.shape != (C_out,) or not t.is_floating_point()):
            raise ValueError(f"{name}: expected a floating-point ({C_out},) tensor, got "
                             f"{t.dtype} {tuple(t.shape)}")
    return grouped_conv_bn_relu_train_call(
        x, weight, gamma, beta, running_mean, running_var, momentum, eps,
        pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation"), groups,
        bool(relu), backend)
