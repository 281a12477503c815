"""Fused forwards for the blocks that replace_modules understands.

A fused block is the original module with a new class: a subclass of its own class with one of
the mixins below first in the MRO (made once per class by resnext_kernels/replace.py). The module
keeps its children, parameters and buffers, so state_dict keys and values are unchanged and
checkpoints load before or after the swap; only `forward` changes.

With a BatchNorm in eval mode the fused op runs with BN folded on the fly from its running
statistics. With a BatchNorm in training mode the train-mode op runs (batch statistics; the
running statistics and num_batches_tracked updated as nn.BatchNorm2d updates them) if
replace_modules(fuse_training=True) asked for it (else the original runs), and unless the BN is
not exactly an
nn.BatchNorm2d (SyncBatchNorm: its statistics span processes), or the conv has a bias. BN with
no running statistics, and a dtype the kernels do not take (float64), run the original forward.
SE blocks and timm's bottleneck tail (SE + shortcut + ReLU) run the squeeze_excite op in eval
mode, and in training mode too where fuse_training=True (its backward op on the backend the forward ran: kernels
in triton, torch ops in reference and cuda); the tail in training only without stochastic
depth (drop_path None or nn.Identity).
The choice follows the BN's own mode, not the block's: a BN in eval mode inside a block in
training mode (frozen BN) runs the folded op, whatever fuse_training says.
"""

import torch
from torch import nn

from ._derived import DerivedTensors
from .ops import fold_batchnorm, squeeze_excite
from .ops._direct import plain_eager
from .ops.grouped_conv_bn_relu import grouped_conv_bn_relu_call
from .ops.grouped_conv_bn_relu_train import grouped_conv_bn_relu_train_call
from .ops._checks import SUPPORTED_DTYPES


# --------------------------------------------------------------------------- eligibility
def conv_bn_eligible(conv, bn) -> bool:
    """A grouped 3x3 nn.Conv2d followed by an nn.BatchNorm2d over its outputs."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.groups > 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.num_features == conv.out_channels
    )


def is_relu(m) -> bool:
    return isinstance(m, nn.ReLU) or type(m).__name__ == "ReLU"


def is_sigmoid(m) -> bool:
    return isinstance(m, nn.Sigmoid) or type(m).__name__ == "Sigmoid"


def is_identity(m) -> bool:
    return m is None or isinstance(m, nn.Identity)


def timm_se_eligible(se) -> bool:
    """timm's SEModule (and ours) with 1x1-conv FCs, no norm, ReLU, sigmoid gate, mean pool."""
    return (
        se is not None
        and not getattr(se, "add_maxpool", False)
        and isinstance(se.fc1, nn.Conv2d) and se.fc1.kernel_size == (1, 1)
        and isinstance(se.fc2, nn.Conv2d) and se.fc2.kernel_size == (1, 1)
        and is_identity(getattr(se, "bn", None))
        and is_relu(se.act)
        and is_sigmoid(se.gate)
    )


def torchvision_se_eligible(se) -> bool:
    return (
        isinstance(se.fc1, nn.Conv2d) and se.fc1.kernel_size == (1, 1)
        and isinstance(se.fc2, nn.Conv2d) and se.fc2.kernel_size == (1, 1)
        and is_relu(se.activation)
        and is_sigmoid(se.scale_activation)
    )


# --------------------------------------------------------------------------- fused calls
def _compute_dtype(x):
    """The dtype nn.Conv2d would compute in: autocast's when it is on, else x's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _fused_mode(module, x, conv, bn):
    """How module's conv + bn runs fused: (dtype, train-mode BN?), or None: the original
    forward runs (see this file's docstring)."""
    if _buffer(bn, "running_mean") is None:
        return None
    train = bn.training
    if train and not (module._rk_fuse_training and type(bn) is nn.BatchNorm2d
                      and _parameter(conv, "bias") is None):
        return None
    dtype = _compute_dtype(x)
    return (dtype, train) if dtype in SUPPORTED_DTYPES else None


# The key under which a fused module keeps its folded conv + BN (in its __dict__: not a
# buffer, so never in a state_dict, and dropped when the module is pickled or copied).
FOLD_CACHE = "_rk_fold_cache"


def _folded_conv_bn(module, conv, bn, dtype, plain):
    """(weight in `dtype`, scale, shift): BN folded and the weight cast, computed once per
    module and reused while the parameters and statistics are unchanged (_derived.py says what
    that means, and what it cannot see)."""
    def fold():
        scale, shift = fold_batchnorm(bn, conv.bias)
        return conv.weight.to(dtype), scale, shift

    if not plain:  # a trace (compile, export) must hold the fold, and see no side effect
        return fold()
    tracked = _buffer(bn, "num_batches_tracked")
    if tracked is None:  # nothing would show that a training forward updated the statistics
        return fold()
    cache = module.__dict__.get(FOLD_CACHE)
    if cache is None:
        cache = module.__dict__[FOLD_CACHE] = DerivedTensors(single=True)

    # num_batches_tracked: the batch_norm kernel writes the running statistics without a
    # version bump, but every training-mode forward of a BatchNorm module also does
    # num_batches_tracked.add_(1), which bumps its version
    sources = (_parameter(conv, "weight"), _parameter(conv, "bias"), _parameter(bn, "weight"),
               _parameter(bn, "bias"), _buffer(bn, "running_mean"), _buffer(bn, "running_var"),
               tracked)
    return cache.get(sources, (dtype, bn.eps), fold)


# nn.Module.__getattr__ costs about a microsecond a call (Python, after the normal lookup
# fails); these read the registered tensor directly, and fall back to getattr for a name that
# is not registered there (a parametrization's property, say)
def _parameter(module, name):
    table = module._parameters
    return table[name] if name in table else getattr(module, name)


def _buffer(module, name):
    table = module._buffers
    return table[name] if name in table else getattr(module, name)


def fused_conv_bn(module, x, mode, conv, bn, relu: bool, backend: str):
    """conv + bn (+ ReLU) of `module` as one fused call; mode: _fused_mode's (dtype, train)."""
    dtype, train = mode
    if train:
        return fused_conv_bn_train(x, dtype, conv, bn, relu, backend)
    plain = plain_eager()
    weight, scale, shift = _folded_conv_bn(module, conv, bn, dtype, plain)
    if x.dtype != dtype:
        x = x.to(dtype)
    return grouped_conv_bn_relu_call(
        x, weight, scale, shift, list(conv.stride), list(conv.padding), list(conv.dilation),
        conv.groups, relu, backend, plain)


def _count_batch(bn):
    """nn.BatchNorm2d.forward's bookkeeping in training mode: num_batches_tracked += 1; returns
    the running statistics' momentum (with momentum=None the cumulative average's
    1 / num_batches_tracked, as a 0-d tensor: torch.compile need not read it)."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    tracked = _buffer(bn, "num_batches_tracked")
    if tracked is not None:
        tracked.add_(1)
        if bn.momentum is None:  # (in fp64, as BN's 1.0 / float(num_batches_tracked))
            momentum = 1.0 / tracked.double()
    return momentum


def fused_conv_bn_train(x, dtype, conv, bn, relu: bool, backend: str):
    """conv + train-mode bn (+ ReLU) as one grouped_conv_bn_relu_train call in `dtype`, then the
    running statistics' update."""
    weight = _parameter(conv, "weight")
    if weight.dtype != dtype:  # autocast's cast (recorded by autograd)
        weight = weight.to(dtype)
    if x.dtype != dtype:
        x = x.to(dtype)
    C_out = weight.shape[0]
    gamma, beta = _parameter(bn, "weight"), _parameter(bn, "bias")
    if gamma is None:
        gamma = torch.ones(C_out, dtype=torch.float32, device=x.device)
    if beta is None:
        beta = torch.zeros(C_out, dtype=torch.float32, device=x.device)
    if bn.track_running_stats:
        momentum = _count_batch(bn)
        running_mean, running_var = _buffer(bn, "running_mean"), _buffer(bn, "running_var")
    else:  # buffers kept but tracking turned off: BN neither updates nor counts them
        momentum, running_mean, running_var = 0.0, None, None
    return grouped_conv_bn_relu_train_call(
        x, weight, gamma, beta, running_mean, running_var, momentum, bn.eps, list(conv.stride),
        list(conv.padding), list(conv.dilation), conv.groups, relu, backend)


def fused_se(u, fc1, fc2, residual, relu: bool, backend: str):
    if residual is not None and residual.dtype != u.dtype:
        residual = residual.to(u.dtype)
    return squeeze_excite(u, fc1.weight, fc1.bias, fc2.weight, fc2.bias, residual=residual,
                          relu=relu, backend=backend)


class FusedMixin:
    """Set by replace.py: `_rk_original_class` and `_rk_mixin` on the fused class,
    `_rk_backend` on the module."""

    _rk_original_class = None
    _rk_mixin = None
    _rk_backend = "auto"
    _rk_fuse_training = False  # replace_modules(fuse_training=...)

    def fused_kinds(self):
        """{kind: count} of the fused computations this module runs in eval mode."""
        raise NotImplementedError

    def __getstate__(self):
        state = dict(super().__getstate__())  # nn.Module's (it drops a compiled forward)
        state.pop(FOLD_CACHE, None)  # derived from the parameters; rebuilt on the next call
        return state

    def __reduce_ex__(self, protocol):
        # The fused class is made at run time (replace.py) and has no importable name: pickle
        # and deepcopy rebuild the module from the original class and the mixin, which have.
        from .replace import _new_fused_module

        return (_new_fused_module, (self._rk_original_class, self._rk_mixin),
                self.__getstate__())


# --------------------------------------------------------------------------- the blocks
class FusedConvBNAct(FusedMixin):
    """nn.Sequential(conv, bn) or (conv, bn, relu), torchvision's Conv2dNormActivation too."""

    @staticmethod
    def eligible(m) -> bool:
        return (isinstance(m, nn.Sequential) and len(m) in (2, 3)
                and conv_bn_eligible(m[0], m[1]) and (len(m) == 2 or is_relu(m[2])))

    def fused_kinds(self):
        return {"grouped conv+BN+ReLU" if len(self) == 3 else "grouped conv+BN": 1}

    def forward(self, x):
        children = iter(self._modules.values())
        conv, bn = next(children), next(children)
        mode = _fused_mode(self, x, conv, bn)
        if mode is None:
            return super().forward(x)
        return fused_conv_bn(self, x, mode, conv, bn, len(self._modules) == 3, self._rk_backend)


class FusedTorchvisionBottleneck(FusedMixin):
    """torchvision's ResNet/ResNeXt Bottleneck (and ours): conv2 + bn2 + the shared ReLU."""

    @staticmethod
    def eligible(m) -> bool:
        return conv_bn_eligible(m.conv2, m.bn2) and is_relu(m.relu)

    def fused_kinds(self):
        return {"grouped conv+BN+ReLU": 1}

    def forward(self, x):
        mode = _fused_mode(self, x, self.conv2, self.bn2)
        if mode is None:
            return super().forward(x)
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = fused_conv_bn(self, out, mode, self.conv2, self.bn2, True, self._rk_backend)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class FusedTimmBottleneck(FusedMixin):
    """timm's ResNet Bottleneck (and our SEBottleneck): conv2 + bn2 + act2, and the tail
    se -> (+ shortcut) -> act3 as one squeeze_excite call."""

    @staticmethod
    def conv_fusable(m) -> bool:
        return conv_bn_eligible(m.conv2, m.bn2) and is_identity(m.drop_block) and is_relu(m.act2)

    @staticmethod
    def tail_fusable(m) -> bool:
        return timm_se_eligible(m.se) and is_relu(m.act3)

    @classmethod
    def eligible(cls, m) -> bool:
        return cls.conv_fusable(m) or cls.tail_fusable(m)

    def fused_kinds(self):
        kinds = {}
        if self.conv_fusable(self):
            kinds["grouped conv+BN+ReLU"] = 1
        if self.tail_fusable(self):
            kinds["SE + residual + ReLU (bottleneck tail)"] = 1
        return kinds

    def forward(self, x):
        mode = _fused_mode(self, x, self.conv2, self.bn2) if self.conv_fusable(self) else None
        # the tail: in training only as asked and without stochastic depth (in eval mode
        # drop_path is the identity)
        fuse_tail = (self.tail_fusable(self) and _compute_dtype(x) in SUPPORTED_DTYPES
                     and (not self.training
                          or self._rk_fuse_training and is_identity(self.drop_path)))
        if mode is None and not fuse_tail:
            return super().forward(x)
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        if mode is not None:
            x = fused_conv_bn(self, x, mode, self.conv2, self.bn2, True, self._rk_backend)
        else:
            x = self.act2(self.drop_block(self.bn2(self.conv2(x))))
        x = self.aa(x)
        x = self.bn3(self.conv3(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        if fuse_tail:
            se = self.se
            return fused_se(x, se.fc1, se.fc2, shortcut, relu=True, backend=self._rk_backend)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        x += shortcut
        return self.act3(x)


class _FusedSE(FusedMixin):
    """An SE module on its own (out = u * gate); subclasses say which modules are eligible."""

    def fused_kinds(self):
        return {"SE block": 1}

    def forward(self, x):
        if self.training and not self._rk_fuse_training or x.dtype not in SUPPORTED_DTYPES:
            return super().forward(x)
        return fused_se(x, self.fc1, self.fc2, None, relu=False, backend=self._rk_backend)


class FusedTimmSE(_FusedSE):
    """timm's SEModule (and ours)."""

    eligible = staticmethod(timm_se_eligible)


class FusedTorchvisionSE(_FusedSE):
    """torchvision.ops.SqueezeExcitation (RegNet, EfficientNet, MobileNetV3 blocks)."""

    eligible = staticmethod(torchvision_se_eligible)
