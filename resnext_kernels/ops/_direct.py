"""When a public op may run its body directly instead of through the torch dispatcher.

A `torch.library.custom_op` call costs tens of microseconds of Python before its body runs
(argument parsing, the autograd and autocast layers, the Python kernel's trampolines). In plain
eager inference none of those layers does anything, so the public functions
(`grouped_conv_bn_relu`, `squeeze_excite`) call the op's body themselves there: same
validation, same backend, same result. Everywhere else the op goes through the dispatcher, so
that whoever is watching sees it as one op:

- torch.compile (Dynamo) and torch.jit tracing record the op, not what its body runs;
- a TorchDispatchMode or TorchFunctionMode is active: fake tensors, make_fx / torch.export,
  functionalization, FlopCounterMode, a user's mode;
- functorch transforms (vmap, grad) or forward-mode AD (a dual level) are active;
- a tensor is a subclass (DTensor, FakeTensor, a user's): only torch.Tensor and nn.Parameter
  are plain;
- autograd must record the op: grad mode is on and an input requires grad.

RESNEXT_KERNELS_DIRECT_CALLS=0 (read at import) sends every call through the dispatcher.

A call that goes through the dispatcher with backend="cuda" named, on CUDA tensors, and nothing
for autograd to record calls the cuda backend's own C++ op (`resnext_kernels::<op>_cuda`, which
the Python op's body would call anyway) instead of the Python op around it
(`backend_op_allowed`): a compiled graph then calls the C++ op without the Python op's layers
(about 140k instructions a call on the CPU, benchmarks/overhead.py), and an exported program
holds an op with no Python in it, for AOTInductor. Traces see that op; the arguments are
validated by the same checks, and the C++ op has the Python op's fake.
"""

import os

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import nn

from .. import _extension

ENABLED = os.environ.get("RESNEXT_KERNELS_DIRECT_CALLS", "1") != "0"
# the compiled extension's CUDA ops are registered (fixed at import, like the extension itself)
CUDA_OPS = _extension.cuda_kernels_registered()

PLAIN_TYPES = (torch.Tensor, nn.Parameter)  # not subclasses (FakeTensor, DTensor, ...)
_is_compiling = torch.compiler.is_compiling
_function_mode_enabled = torch._C._is_torch_function_mode_enabled
_dispatch_stack_len = torch._C._len_torch_dispatch_stack
_functorch_stack_top = torch._C._functorch.peek_interpreter_stack
_jit_tracing_state = torch._C._get_tracing_state


def plain_eager() -> bool:
    """True in plain eager execution: nothing traces, transforms or watches the calls (no
    compile, jit trace, dispatch or function mode, functorch transform, forward-mode AD)."""
    return not (_is_compiling() or _function_mode_enabled() or _dispatch_stack_len()
                or _functorch_stack_top() is not None or _jit_tracing_state() is not None
                or _forward_ad._current_level >= 0)


def direct_call_allowed(*tensors, plain=None) -> bool:
    """True when calling the op's body gives exactly what the dispatcher would, and nothing
    observes the difference. `tensors`: the op's tensor arguments (None for absent ones);
    `plain`: plain_eager(), where the caller has it already."""
    if not ENABLED or not (plain_eager() if plain is None else plain):
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) not in PLAIN_TYPES or (grad and t.requires_grad):
            return False
    return True


def backend_op_allowed(backend, *tensors) -> bool:
    """True when a dispatched call may call the cuda backend's C++ op itself (see the module
    docstring): backend "cuda" named, the extension's CUDA ops registered, every tensor on a
    CUDA device, and none that autograd must record (the C++ op has no backward)."""
    if backend != "cuda" or not CUDA_OPS:
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cuda" or (grad and t.requires_grad):
            return False
    return True
