"""Argument checks shared by the public ops. Every message names the argument and what was expected."""

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(t, name: str, ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")


def check_call_types(tensors: dict, optional: dict, backend):
    """Type checks of a public op's arguments before they reach the dispatcher, whose own cast
    errors would not name the argument: required tensors, optional tensors, the backend name."""
    for name, t in tensors.items():
        check_tensor(t, name)
    for name, t in optional.items():
        if t is not None:
            check_tensor(t, name)
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a string, got {type(backend).__name__}")


def check_supported_dtype(t, name: str):
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")


def check_same_dtype(t, name: str, like, like_name: str):
    if t.dtype != like.dtype:
        raise TypeError(
            f"{name}: expected dtype {like.dtype} (the dtype of {like_name}), got {t.dtype}"
        )


def check_floating(t, name: str):
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")


def check_same_device(t, name: str, like, like_name: str):
    if t.device != like.device:
        raise ValueError(
            f"{name}: expected a tensor on {like.device} (where {like_name} is), got {t.device}"
        )


def check_shape(t, name: str, expected: tuple, what: str = ""):
    if tuple(t.shape) != tuple(expected):
        hint = f" ({what})" if what else ""
        raise ValueError(f"{name}: expected shape {tuple(expected)}{hint}, got {tuple(t.shape)}")


def pair(value, name: str):
    """An int or a pair of ints as a list of two ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return [value, value]
    try:
        items = [int(v) for v in value]
    except TypeError:
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}") from None
    if len(items) == 1:
        items = items * 2
    if len(items) != 2:
        raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
    return items
