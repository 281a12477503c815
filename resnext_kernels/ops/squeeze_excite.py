"""The op `torch.ops.resnext_kernels.squeeze_excite`: its whole contract, in one place.

    s   = sigmoid(W2 · relu(W1 · mean_hw(u) + b1) + b2)          # [N, C], computed in fp32
    out = u * s                                                  # plain SE
    out = relu?(u * s + residual)                                # the SE-ResNeXt bottleneck tail

W1 is [R, C] (Linear form) or [R, C, 1, 1] (1×1-conv form, timm / torchvision), W2 is [C, R] or
[C, R, 1, 1]; biases are optional. u and residual share a dtype (fp32, fp16, bf16) and shape; the
FC weights and biases may be any float dtype (they are applied in fp32, as autocast would keep
them). Output in u's memory format. Every backend is deterministic (no atomics).

    resnext_kernels::squeeze_excite_backward(grad_out, u, w1, b1, w2, b2, residual, relu,
            need_u, need_fc, need_residual, backend)
        -> (grad_u, grad_w1 [R, C], grad_b1 [R], grad_w2 [C, R], grad_b2 [C], grad_residual)
        the op's gradients, the excite recomputed from u (nothing saved but the inputs); the
        FC gradients in fp32 (the autograd formula casts them to each parameter's dtype and
        shape), an empty tensor for each gradient not wanted (and for grad_residual without
        a residual). The ReLUs' gradients follow torch's (a NaN output passes its gradient),
        the tail's on the forward's output as rounded. The autograd formula runs it on the
        backend the forward ran ("auto" resolved once). Triton: kernels
        (backends/triton/squeeze_excite_backward.py); reference and cuda: fp32 torch ops.
        Double backward is refused.
"""

from typing import Optional, Tuple

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
)
from ._direct import backend_op_allowed, direct_call_allowed
from .grouped_conv_bn_relu_backward import _refuse_double_backward

OPS = torch.ops.resnext_kernels


def _fc_matrix(w, name, rows, cols, rows_name, cols_name):
    """Checks an FC weight in Linear [rows, cols] or 1x1-conv [rows, cols, 1, 1] form."""
    if not isinstance(w, torch.Tensor) or w.dim() not in (2, 4):
        check_tensor(w, name, (2, 4))
    shape = w.shape
    ok = ((rows is None or shape[0] == rows) and shape[1] == cols
          and (len(shape) == 2 or (shape[2] == 1 and shape[3] == 1)))
    if not ok:
        expected_2d = (rows, cols) if rows is not None else (shape[0], cols)
        raise ValueError(
            f"{name}: expected shape [{rows_name}, {cols_name}] = {list(expected_2d)} or "
            f"[{rows_name}, {cols_name}, 1, 1], got {list(shape)}"
        )
    if not w.is_floating_point():
        check_floating(w, name)


def _check_args(u, w1, b1, w2, b2, residual):
    """Validates the op's arguments; returns (N, C, H, W, R).

    It runs on every call, so each check is an inline test, and the _checks helper that words
    the error is called only when a test fails."""
    if not isinstance(u, torch.Tensor) or u.dim() != 4:
        check_tensor(u, "u", 4)
    if u.dtype not in SUPPORTED_DTYPES:
        check_supported_dtype(u, "u")
    N, C, H, W = u.shape
    if C < 1:
        raise ValueError(f"u: expected at least one channel, got shape {tuple(u.shape)}")
    _fc_matrix(w1, "w1", None, C, "R", "C")
    R = w1.shape[0]
    if R < 1:
        raise ValueError("w1: expected a reduced width R >= 1, got 0 rows")
    _fc_matrix(w2, "w2", C, R, "C", "R")
    for b, name, n in ((b1, "b1", R), (b2, "b2", C)):
        if b is not None and not (isinstance(b, torch.Tensor) and b.dim() == 1
                                  and b.shape[0] == n and b.is_floating_point()):
            check_tensor(b, name, 1)
            check_shape(b, name, (n,), "one per output of its FC")
            check_floating(b, name)
    if residual is not None:
        check_tensor(residual, "residual", 4)
        check_shape(residual, "residual", tuple(u.shape), "the shape of u")
        check_same_dtype(residual, "residual", u, "u")
    device = u.device
    for t, name in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (residual, "residual")):
        if t is not None and t.device != device:
            check_same_device(t, name, u, "u")
    return N, C, H, W, R


def _as_matrix(w):
    return w.reshape(w.shape[0], w.shape[1])


@torch.library.custom_op("resnext_kernels::squeeze_excite", mutates_args=())
def _squeeze_excite_op(
    u: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    relu: bool,
    backend: str,
) -> torch.Tensor:
    return _run(u, w1, b1, w2, b2, residual, relu, backend)


def _run(u, w1, b1, w2, b2, residual, relu, backend):
    """The op's body: validation, the backend, its kernel. Called by the dispatcher, or
    directly by squeeze_excite where nothing would observe the difference (_direct.py)."""
    _check_args(u, w1, b1, w2, b2, residual)
    table_key = None if backend != "auto" else _auto_table_key(u, w1, residual, relu)
    name = backends.resolve(backend, u.device, table_key)
    impl = backends.implementation("squeeze_excite", name)
    return impl(u, _as_matrix(w1), b1, _as_matrix(w2), b2, residual, relu)


def _auto_table_key(u, w1, residual, relu):
    """The measured-table key of an "auto" call on a GPU (None otherwise, or with no table)."""
    if u.device.type != "cuda" or not auto_table.installed():
        return None
    return auto_table.se_key(backends.gpu_arch(u.device), u.dtype, auto_table.layout_name(u),
                             u.shape[1], w1.shape[0], u.shape[2], u.shape[3],
                             residual is not None, relu)


@_squeeze_excite_op.register_fake
def _(u, w1, b1, w2, b2, residual, relu, backend):
    _check_args(u, w1, b1, w2, b2, residual)
    return torch.empty(
        u.shape, dtype=u.dtype, device=u.device, memory_format=suggest_memory_format(u)
    )


if _extension.extension_loaded():
    # The compiled backend's own op gets the same fake, so it traces (and passes opcheck) too.
    @torch.library.register_fake("resnext_kernels::squeeze_excite_cuda")
    def _(u, w1, b1, w2, b2, residual, relu):
        _check_args(u, w1, b1, w2, b2, residual)
        return torch.empty(
            u.shape, dtype=u.dtype, device=u.device, memory_format=suggest_memory_format(u)
        )


# ------------------------------------------------------------------------ backward
def _check_backward_args(grad_out, u, w1, b1, w2, b2, residual):
    shape = _check_args(u, w1, b1, w2, b2, residual)
    if not isinstance(grad_out, torch.Tensor) or grad_out.dim() != 4:
        check_tensor(grad_out, "grad_out", 4)
    if grad_out.shape != u.shape or grad_out.dtype != u.dtype or grad_out.device != u.device:
        raise ValueError(f"grad_out: expected u's shape {list(u.shape)}, dtype {u.dtype} and "
                         f"device {u.device}, got {list(grad_out.shape)} {grad_out.dtype} on "
                         f"{grad_out.device}")
    return shape


@torch.library.custom_op("resnext_kernels::squeeze_excite_backward", mutates_args=())
def _squeeze_excite_backward_op(
    grad_out: torch.Tensor,
    u: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    relu: bool,
    need_u: bool,
    need_fc: bool,
    need_residual: bool,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_backward_args(grad_out, u, w1, b1, w2, b2, residual)
    impl = backends.implementation("squeeze_excite_backward",
                                   backends.resolve(backend, u.device))
    return impl(grad_out, u, _as_matrix(w1), b1, _as_matrix(w2), b2, residual, relu, need_u,
                need_fc, need_residual)


@_squeeze_excite_backward_op.register_fake
def _(grad_out, u, w1, b1, w2, b2, residual, relu, need_u, need_fc, need_residual, backend):
    _, C, _, _, R = _check_backward_args(grad_out, u, w1, b1, w2, b2, residual)
    grad_u = torch.empty(u.shape, dtype=u.dtype, device=u.device,
                         memory_format=suggest_memory_format(u)) if need_u else u.new_empty(0)
    grad_res = u.new_empty(0)
    if need_residual and residual is not None:
        grad_res = torch.empty(u.shape, dtype=u.dtype, device=u.device,
                               memory_format=suggest_memory_format(residual))
    fc_grads = [u.new_empty(0) for _ in range(4)]
    if need_fc:
        fc_grads = [u.new_empty(shape, dtype=torch.float32) for shape in ((R, C), (R,), (C, R),
                                                                          (C,))]
    return (grad_u, *fc_grads, grad_res)


def _setup_context(ctx, inputs, output):
    u, w1, b1, w2, b2, residual, relu, backend = inputs
    # without the ReLU the residual's values are not needed (its gradient is grad_out's, and
    # nothing else depends on it): not saving it lets autograd free a shortcut tensor early
    ctx.save_for_backward(u, w1, b1, w2, b2, residual if relu else None)
    ctx.relu = relu
    # None when the op had no residual: the backward tells the two cases apart by it
    ctx.residual_format = suggest_memory_format(residual) if residual is not None else None
    # the backend the forward ran ("auto" resolved as _run resolves it, the measured table
    # first): its backward recomputes the same gate, so the tail's mask is the forward's
    table_key = None if backend != "auto" else _auto_table_key(u, w1, residual, relu)
    ctx.backend = backends.resolve(backend, u.device, table_key)


def _backward(ctx, grad_out):
    """The backward op; its fp32 FC gradients cast to each parameter's dtype and shape."""
    _refuse_double_backward("squeeze_excite")
    u, w1, b1, w2, b2, residual = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_fc = any(need[1:5])
    grad_u = grad_w1 = grad_b1 = grad_w2 = grad_b2 = grad_res = None
    if need[0] or need_fc or (need[5] and residual is not None):
        grad_u, grad_w1, grad_b1, grad_w2, grad_b2, grad_res = OPS.squeeze_excite_backward(
            grad_out, u, w1, b1, w2, b2, residual, ctx.relu, need[0], need_fc,
            need[5] and residual is not None, ctx.backend)
    has_residual = ctx.residual_format is not None
    if not ctx.relu and has_residual and need[5]:
        # out = u * s + residual; in the residual's memory format, as the op's own is
        grad_res = grad_out.contiguous(memory_format=ctx.residual_format)
    grads = [grad_u if need[0] else None]
    for wanted, grad, param in ((need[1], grad_w1, w1), (need[2], grad_b1, b1),
                                (need[3], grad_w2, w2), (need[4], grad_b2, b2)):
        grads.append(grad.reshape(param.shape).to(param.dtype)
                     if wanted and param is not None else None)
    grads.append(grad_res if need[5] and has_residual else None)
    return (*grads, None, None)


_squeeze_excite_op.register_autograd(_backward, setup_context=_setup_context)


def squeeze_excite(
    u: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    *,
    residual: Optional[torch.Tensor] = None,
    relu: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Fused squeeze-and-excitation, optionally with the bottleneck tail relu(u * s + residual).

    Args:
        u: [N, C, H, W] float32/float16/bfloat16, NCHW or channels_last.
        w1, b1: the reducing FC, [R, C] or [R, C, 1, 1], and [R] or None.
        w2, b2: the expanding FC, [C, R] or [C, R, 1, 1], and [C] or None.
        residual: None, or [N, C, H, W] in u's dtype, added after the scaling.
        relu: apply ReLU at the end (the bottleneck tail).
        backend: "auto", "reference", "triton" or "cuda".
    """
    check_call_types(dict(u=u, w1=w1, w2=w2), dict(b1=b1, b2=b2, residual=residual), backend)
    args = (u, w1, b1, w2, b2, residual, bool(relu), backend)
    if direct_call_allowed(u, w1, b1, w2, b2, residual):
        return _run(*args)
    if backend_op_allowed(backend, u, w1, b1, w2, b2, residual):  # traced: the C++ op itself
        _check_args(u, w1, b1, w2, b2, residual)
        return torch.ops.resnext_kernels.squeeze_excite_cuda(
            u, _as_matrix(w1), b1, _as_matrix(w2), b2, residual, bool(relu))
    return torch.ops.resnext_kernels.squeeze_excite(*args)
