"""The public ops. Each op's contract (validation, backend choice, fake, autograd) lives in its own file."""

from .grouped_conv_bn_relu import fold_batchnorm, grouped_conv_bn_relu  # noqa: F401
from . import grouped_conv_bn_relu_backward  # noqa: F401  (the conv's backward ops, autograd)
from .grouped_conv_bn_relu_train import grouped_conv_bn_relu_train  # noqa: F401
from .squeeze_excite import squeeze_excite  # noqa: F401
