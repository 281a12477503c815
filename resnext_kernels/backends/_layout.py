"""The memory format a backend writes its outputs in."""

import torch
from torch._prims_common import suggest_memory_format


def memory_format(t):
    """suggest_memory_format(t), without its cost for contiguous t (never channels_last-like)."""
    return torch.contiguous_format if t.is_contiguous() else suggest_memory_format(t)
