"""The Triton backend: one file per kernel (jit kernel, then its launcher)."""

from .grouped_conv_bn_relu import grouped_conv_bn_relu  # noqa: F401
