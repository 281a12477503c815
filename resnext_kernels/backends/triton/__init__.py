"""The Triton backend: one file per kernel (jit kernels, then their launcher)."""

from .grouped_conv_bn_relu import (  # noqa: F401
    grouped_conv_bn_relu,
    grouped_conv_bn_relu_direct,
    grouped_conv_bn_relu_masked,
)
from .backward import grouped_conv_dgrad, grouped_conv_wgrad  # noqa: F401
from .squeeze_excite import squeeze_excite  # noqa: F401
from .squeeze_excite_backward import squeeze_excite_backward  # noqa: F401
from .train import (  # noqa: F401
    batchnorm_train_backward_sums,
    grouped_conv_bn_relu_train,
    grouped_conv_bn_train_backward,
)
