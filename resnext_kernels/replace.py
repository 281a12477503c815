"""replace_modules / restore_modules: put the fused ops into existing models, and take them out.

A registry maps block classes to the fused behaviour in resnext_kernels/modules.py. Matching is
by exact class (a subclass may have its own forward), except for nn.Sequential(conv, bn[, relu])
which is matched by its contents. Swapping changes a module's class only: the module object, its
children, parameters and buffers stay, so optimizers, state_dicts and checkpoints keep working.
A swapped model also pickles whole (torch.save(model), copy.deepcopy): each fused module is
rebuilt from its original class and its mixin, both found by name, so loading needs
resnext_kernels importable and torch.load(..., weights_only=False), as for any pickled module.
"""

import warnings
from typing import Callable, Dict, List, Optional, Tuple, Type

from torch import nn

from . import backends, modules
from .models import resnet as own_resnet, seresnext as own_seresnext

FilterFn = Callable[[nn.Module, str], bool]


def _registry() -> List[Tuple[Type[nn.Module], Type[modules.FusedMixin]]]:
    """(block class, fused mixin) for every block class importable here."""
    entries = [
        (own_resnet.Bottleneck, modules.FusedTorchvisionBottleneck),
        (own_seresnext.SEBottleneck, modules.FusedTimmBottleneck),
        (own_seresnext.SEModule, modules.FusedTimmSE),
    ]
    try:
        from torchvision.models.resnet import Bottleneck as TvBottleneck
        from torchvision.ops.misc import SqueezeExcitation as TvSE

        entries += [(TvBottleneck, modules.FusedTorchvisionBottleneck),
                    (TvSE, modules.FusedTorchvisionSE)]
    except ImportError:
        pass
    try:
        from timm.layers.squeeze_excite import SEModule as TimmSE
        from timm.models.resnet import Bottleneck as TimmBottleneck

        entries += [(TimmBottleneck, modules.FusedTimmBottleneck),
                    (TimmSE, modules.FusedTimmSE)]
    except ImportError:
        pass
    return entries


_FUSED_CLASSES: Dict[Tuple[type, type], type] = {}


def _fused_class(original: type, mixin: type) -> type:
    """The fused subclass of `original` (made once, then reused)."""
    key = (original, mixin)
    if key not in _FUSED_CLASSES:
        cls = type(f"Fused{original.__name__}", (mixin, original),
                   {"_rk_original_class": original, "_rk_mixin": mixin, "__module__": __name__})
        _FUSED_CLASSES[key] = cls
    return _FUSED_CLASSES[key]


def _new_fused_module(original: type, mixin: type) -> nn.Module:
    """An empty instance of the fused subclass of `original`: how pickle and copy.deepcopy
    rebuild a swapped module (modules.FusedMixin.__reduce_ex__), since the fused classes are
    made at run time and cannot be looked up by name."""
    cls = _fused_class(original, mixin)
    return cls.__new__(cls)


def _mixin_for(module: nn.Module, registry) -> Optional[type]:
    for cls, mixin in registry:
        if type(module) is cls:
            return mixin if mixin.eligible(module) else None
    if isinstance(module, nn.Sequential) and modules.FusedConvBNAct.eligible(module):
        return modules.FusedConvBNAct
    return None


def is_fused(module: nn.Module) -> bool:
    return isinstance(module, modules.FusedMixin)


def replacement_report(model: nn.Module) -> Dict[str, int]:
    """{kind: count} of the fused computations the model runs in eval mode now."""
    report: Dict[str, int] = {}
    for m in model.modules():
        if is_fused(m):
            for kind, n in m.fused_kinds().items():
                report[kind] = report.get(kind, 0) + n
    return report


def _format(report: Dict[str, int]) -> str:
    return ", ".join(f"{n} × {kind}" for kind, n in sorted(report.items())) or "nothing"


def replace_modules(model: nn.Module, *, backend: str = "auto",
                    filter_fn: Optional[FilterFn] = None, verbose: bool = True,
                    fuse_training: bool = False) -> nn.Module:
    """Swaps every eligible block of `model` (in place) for its fused version; returns `model`.

    Eligible: grouped 3x3 conv + BatchNorm (+ ReLU) in torchvision's and timm's ResNet/ResNeXt
    Bottleneck, in this package's models and in nn.Sequential(conv, bn[, relu]) (torchvision's
    Conv2dNormActivation, e.g. in RegNet); SE modules (timm's SEModule, torchvision's
    SqueezeExcitation, ours), and in timm-style bottlenecks the whole tail se -> + shortcut -> ReLU.
    Modules it does not understand are left alone.

    Args:
        backend: the backend the fused ops use ("auto", "reference", "triton", "cuda").
        filter_fn: filter_fn(module, qualified_name) -> False keeps that module unfused.
        verbose: print what was replaced, by kind.
        fuse_training: True: conv + BN with the BN in training mode runs the train-mode fused
            op (batch statistics, running statistics updated as nn.BatchNorm2d does), and SE
            blocks and timm's bottleneck tail in training mode run the squeeze_excite op (the
            tail only without stochastic depth). False (the default until a GPU measures it
            faster than the original modules; docs/KERNELS.md "Train-mode BatchNorm, Triton
            v1" and "SE backward, Triton v1"): the original forward runs there. A BN in eval
            mode runs the folded op whatever its block's mode (frozen BN), either way.
    """
    if backend != "auto" and backend not in backends.BACKENDS:
        raise ValueError(
            f"backend: unknown backend {backend!r}; expected 'auto' or one of {backends.BACKENDS}")
    registry = _registry()
    swapped = []
    handled_by_parent = set()
    for name, module in model.named_modules():
        if id(module) in handled_by_parent:
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        if is_fused(module):  # already swapped: only the backend and the training choice change
            module._rk_backend = backend
            module._rk_fuse_training = bool(fuse_training)
            swapped.append(module)
            continue
        mixin = _mixin_for(module, registry)
        if mixin is None:
            continue
        module.__class__ = _fused_class(type(module), mixin)
        module._rk_backend = backend
        module._rk_fuse_training = bool(fuse_training)
        swapped.append(module)
        if mixin is modules.FusedTimmBottleneck and mixin.tail_fusable(module):
            handled_by_parent.add(id(module.se))  # the block runs its SE as the fused tail
    report = replacement_report(model)
    if not swapped:
        warnings.warn(
            "replace_modules: found nothing eligible in "
            f"{type(model).__name__} (looked for grouped 3x3 conv + BatchNorm blocks and SE "
            "modules); the model is unchanged", stacklevel=2)
    elif verbose:
        training = "train and eval" if fuse_training else "eval only"
        print(f"resnext_kernels.replace_modules: fused {_format(report)} (backend={backend!r}, "
              f"conv+BN and SE fused in {training})")
    return model


def restore_modules(model: nn.Module) -> nn.Module:
    """Undoes replace_modules in place (for export, or saving a plain PyTorch model)."""
    for module in model.modules():
        if is_fused(module):
            module.__class__ = module._rk_original_class
            module.__dict__.pop("_rk_backend", None)
            module.__dict__.pop("_rk_fuse_training", None)
            module.__dict__.pop(modules.FOLD_CACHE, None)
    return model
