"""Which backward a kernel backend runs for the fused op: its own dgrad and wgrad kernels, or
aten's (cuDNN on a GPU) through the reference backend, given the same saved ReLU mask.

One environment variable per backend, read on every call (so a benchmark or a test can switch
it between calls): "aten" (the default, also when unset or empty), "kernels" (dgrad and wgrad
kernels) or "dgrad" (the dgrad kernel, aten's wgrad: the CUDA dgrad on v3 was predicted far
faster than the direct wgrad it came with, before wgrad moved to tensor cores too). A backend's own backward is the default only once a
GPU measurement shows it faster than aten's: on the H100 (659b2c1; resnext50's grouped layers,
fp16, batch 128) neither was (docs/KERNELS.md, "Sixth GPU session").
"""

import os

CHOICES = ("aten", "kernels", "dgrad")


def backward_choice(env: str) -> str:
    """The choice that the environment variable `env` makes: one of CHOICES."""
    choice = os.environ.get(env, "").strip() or "aten"
    if choice not in CHOICES:
        raise ValueError(f"{env}: expected one of {CHOICES}, got {choice!r}")
    return choice


def runs_kernel(env: str, op: str) -> bool:
    """Whether the backend's own kernel runs `op` ("dgrad" or "wgrad") under `env`'s choice."""
    choice = backward_choice(env)
    return choice == "kernels" or (choice == "dgrad" and op == "dgrad")
