"""Per-shape choices for backend="auto" on a GPU, taken from committed benchmark results.

`benchmarks/auto_table.py RESULTS.json` turns a GPU run of benchmarks/grouped_conv.py or of
benchmarks/squeeze_excite.py into a table under resnext_kernels/backends/auto_tables/: for every
measured (GPU architecture, dtype, layout, shape), the fastest backend whose output matched the
float64 reference, among "triton", "cuda" and "reference" (aten: cuDNN with BatchNorm folded, or
the SE in aten ops). "auto" looks the call up there; a call that no table covers gets the
device's default preference (resnext_kernels.backends.AUTO_PREFERENCE), the aten reference.

Keys hold everything the kernels' speed depends on except the batch (tables are measured at one
batch size, which each table records). GPUs are matched by compute capability (an H100 and an
H200 share sm_90), so a table measured on one serves the other; the table says which it was.
"""

import functools
import json
from pathlib import Path

import torch
from torch._prims_common import suggest_memory_format

TABLE_DIR = Path(__file__).with_name("auto_tables")
CHOOSABLE = ("triton", "cuda", "reference")


def conv_key(arch, dtype, layout, weight_layout, C_in, C_out, groups, H, W, stride, padding,
             dilation):
    """The lookup key of one grouped_conv_bn_relu call (ints, strings, tuples only). `layout` is
    the input's memory format and `weight_layout` the weight's ("nhwc" for channels_last, else
    "nchw"). cuDNN's speed on a channels_last input depends on the weights' layout (channels_last
    weights are what `model.to(memory_format=torch.channels_last)` gives; docs/KERNELS.md has
    the measurement), so a choice measured with one says nothing about the other."""
    return ("grouped_conv_bn_relu", str(arch), str(dtype).replace("torch.", ""), str(layout),
            str(weight_layout), int(C_in), int(C_out), int(groups), int(H), int(W),
            tuple(int(s) for s in stride), tuple(int(p) for p in padding),
            tuple(int(d) for d in dilation))


def layout_name(t) -> str:
    """A tensor's layout as the tables name it: "nhwc" (channels_last) or "nchw"."""
    return "nhwc" if suggest_memory_format(t) == torch.channels_last else "nchw"


def se_key(arch, dtype, layout, C, R, H, W, residual: bool, relu: bool):
    """The lookup key of one squeeze_excite call: u's layout and shape, the hidden width R,
    and whether the bottleneck tail (residual, ReLU) is fused in."""
    return ("squeeze_excite", str(arch), str(dtype).replace("torch.", ""), str(layout), int(C),
            int(R), int(H), int(W), bool(residual), bool(relu))


def entry_key(entry: dict):
    if entry.get("op") == "squeeze_excite":
        return se_key(entry["arch"], entry["dtype"], entry["layout"], entry["C"], entry["R"],
                      entry["H"], entry["W"], entry["residual"], entry["relu"])
    return conv_key(entry["arch"], entry["dtype"], entry["layout"], entry["weight_layout"],
                    entry["C_in"], entry["C_out"], entry["groups"], entry["H"], entry["W"],
                    entry["stride"], entry["padding"], entry["dilation"])


def load_tables(directory=TABLE_DIR) -> dict:
    """{key: backend} from every *.json table in `directory` (later files win on a clash)."""
    choices = {}
    for path in sorted(Path(directory).glob("*.json")):
        table = json.loads(path.read_text())
        for entry in table["entries"]:
            if entry["backend"] not in CHOOSABLE:
                raise ValueError(f"{path}: backend {entry['backend']!r} is not one of {CHOOSABLE}")
            choices[entry_key(entry)] = entry["backend"]
    return choices


@functools.lru_cache(maxsize=None)
def _installed_tables():
    return load_tables()


def installed() -> bool:
    """Whether any table is installed (when none is, "auto" needs no lookup key at all)."""
    return bool(_installed_tables())


def lookup(key, tables=None):
    """The measured-fastest backend for `key`, or None when no table covers it."""
    return (tables if tables is not None else _installed_tables()).get(key)
