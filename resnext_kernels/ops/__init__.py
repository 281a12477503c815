"""The public ops. Each op's contract (validation, backend choice, fake, autograd) lives in its own file."""

from .grouped_conv_bn_relu import grouped_conv_bn_relu  # noqa: F401
