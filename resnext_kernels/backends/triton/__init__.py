"""The Triton backend: one file per kernel (jit kernels, then their launcher)."""

from .grouped_conv_bn_relu import grouped_conv_bn_relu  # noqa: F401
from .squeeze_excite import squeeze_excite  # noqa: F401
