"""The real shapes of the fused layers, read from the model definitions (on meta tensors).

Benchmarks, compile reports and GPU profiles all use these, so every tool talks about the same
layers: the shapes come from running the model, never from a hand-written table.
"""

import importlib

import torch
from torch import nn

from . import seresnext as _seresnext


def _run_meta(model_name: str, image: int, hooks):
    """Builds a model on the meta device, registers hooks (module, name) -> handle or None,
    runs one image through it and removes the hooks."""
    builders = importlib.import_module(__package__)  # resnext_kernels.models (imports us late)
    with torch.device("meta"):
        model = getattr(builders, model_name)().eval()
    handles = [h for name, module in model.named_modules() if (h := hooks(module, name))]
    with torch.no_grad():
        model(torch.empty(1, 3, image, image, device="meta"))
    for h in handles:
        h.remove()


def grouped_conv_shapes(model_name: str, image: int = 224):
    """Every distinct grouped 3x3 conv of a model, in the order the model runs them:
    [(layer, C_in, H, W, C_out, groups, stride, count)], H and W the input's, count the number
    of convs of that shape, layer the name of the first one's block."""
    found = {}

    def hooks(module, name):
        if not (isinstance(module, nn.Conv2d) and module.groups > 1
                and module.kernel_size == (3, 3)):
            return None

        def record(mod, inputs, _output):
            x = inputs[0]
            key = (x.shape[1], x.shape[2], x.shape[3], mod.out_channels, mod.groups,
                   mod.stride[0])
            layer, count = found.get(key, (name.rsplit(".conv", 1)[0], 0))
            found[key] = (layer, count + 1)
        return module.register_forward_hook(record)

    _run_meta(model_name, image, hooks)
    return [(layer, *key, count) for key, (layer, count) in found.items()]


def se_shapes(model_name: str, image: int = 224):
    """Every distinct SE module of a model: [(layer, C, H, W, R, count)], R the reduced width."""
    found = {}

    def hooks(module, name):
        if not isinstance(module, _seresnext.SEModule):
            return None

        def record(mod, inputs, _output):
            u = inputs[0]
            key = (u.shape[1], u.shape[2], u.shape[3], mod.fc1.out_channels)
            layer, count = found.get(key, (name.rsplit(".se", 1)[0], 0))
            found[key] = (layer, count + 1)
        return module.register_forward_hook(record)

    _run_meta(model_name, image, hooks)
    return [(layer, *key, count) for key, (layer, count) in found.items()]
