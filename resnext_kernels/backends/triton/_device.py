"""Launch helpers shared by the Triton launchers."""

import contextlib

import torch


def on_device(t: torch.Tensor):
    """Makes t's CUDA device current for the launch (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
