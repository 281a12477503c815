"""The instruction mix of compiled GPU code, read from its SASS (cuobjdump -sass): what the
compiled-code profile (scripts/compiled_profile.py) reports per kernel, for the CUDA kernels
(nvcc's cubins) and the Triton ones (the cubin Triton compiles).

    python scripts/sass_mix.py KERNEL.cubin            # a table per function

Per function: the whole kernel's static counts and its hot loop's. The hot loop is the
innermost loop (a backward branch's range) that holds a tensor-core instruction, else the
loop with the most memory instructions; loops are found from backward branches, so a loop the
compiler fully unrolled is not one. Categories:
  global loads / stores by width (LDG/STG: 1, 2, 4, 8, 16 bytes), LDGSTS (cp.async) and bulk
  tensor copies (UTMALDG/UBLKCP), shared loads / stores by width (LDS/STS), ldmatrix (LDSM, by
  matrices per instruction), tensor-core ops (HMMA, HGMMA, IMMA), barriers (BAR), local memory
  (LDL/STL: spills or arrays in local memory), integer index math (IMAD, IADD3, LEA, SHF,
  LOP3, ISETP, IMNMX, SEL, IABS, I2F, F2I), floating point (FFMA, FMUL, FADD, HFMA2, ...).
"""

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
FUNCTION = re.compile(r"Function : (\S+)")
INT_OPS = {"IMAD", "IADD3", "LEA", "SHF", "LOP3", "ISETP", "IMNMX", "SEL", "IABS", "I2F", "F2I",
           "IADD", "IMUL", "SHL", "SHR", "PRMT", "VIMNMX", "LEA.HI", "IMAD.WIDE", "BMSK"}
FP_OPS = {"FFMA", "FMUL", "FADD", "FMNMX", "FSETP", "FSEL", "HFMA2", "HMUL2", "HADD2", "F2F",
          "F2FP", "MUFU", "HMNMX2", "FCHK", "DFMA", "DADD", "DMUL"}


def tool(name: str):
    """cuobjdump / nvdisasm: CUDA's, else the copy Triton's package carries."""
    cuda = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / name
    if cuda.exists():
        return str(cuda)
    try:
        import triton

        carried = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if carried.exists():
            return str(carried)
    except ImportError:
        pass
    return shutil.which(name)


def width(op: str) -> int:
    """Bytes per thread of a load or store opcode (LDG.E.128 -> 16, LDS.U16 -> 2, LDG.E -> 4)."""
    parts = op.split(".")
    if "128" in parts:
        return 16
    if "64" in parts:
        return 8
    if {"U16", "S16"} & set(parts):
        return 2
    if {"U8", "S8"} & set(parts):
        return 1
    return 4


def category(op: str):
    base = op.split(".")[0]
    if base in ("LDG", "LD"):
        return f"global_load_{width(op)}B"
    if base in ("STG", "ST"):
        return f"global_store_{width(op)}B"
    if base == "LDGSTS":
        return f"cp_async_{width(op)}B"
    if base in ("UTMALDG", "UBLKCP", "UTMASTG", "UBLKRED"):
        return "bulk_copy"
    if base == "LDSM":
        m = re.search(r"M?T?88\.(\d)", op)
        return f"ldmatrix_x{m.group(1) if m else 1}"
    if base == "LDS":
        return f"shared_load_{width(op)}B"
    if base == "STS":
        return f"shared_store_{width(op)}B"
    if base in ("HMMA", "HGMMA", "IMMA", "QGMMA", "WGMMA"):
        return base.lower()
    if base == "BAR":
        return "barrier"
    if base in ("LDL", "STL"):
        return "local"
    if base in INT_OPS or op.startswith("IMAD") or op.startswith("LEA"):
        return "int"
    if base in FP_OPS:
        return "fp"
    return "other"


MEMORY = ("global_", "shared_", "ldmatrix", "cp_async", "bulk_copy", "local")
TENSOR_CORE = ("hmma", "hgmma", "imma", "qgmma", "wgmma")


def parse(sass: str):
    """{function: [(offset, opcode, operands)]} from cuobjdump -sass text."""
    functions, current = {}, None
    for line in sass.splitlines():
        f = FUNCTION.search(line)
        if f:
            current = functions.setdefault(f.group(1), [])
            continue
        m = INSTR.search(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return functions


def loops(instrs):
    """[(start, end)] offsets of every backward branch's range."""
    out = []
    for off, op, args in instrs:
        if op.split(".")[0] == "BRA":
            target = re.search(r"0x([0-9a-f]+)", args)
            if target and int(target.group(1), 16) <= off:
                out.append((int(target.group(1), 16), off))
    return out


def mix(instrs):
    return Counter(category(op) for _, op, _ in instrs)


def hot_loop(instrs):
    """(start, end, mix) of the hot loop, or None when the kernel has no loop."""
    candidates = []
    for start, end in loops(instrs):
        body = [i for i in instrs if start <= i[0] <= end]
        m = mix(body)
        tc = sum(m[k] for k in TENSOR_CORE)
        mem = sum(v for k, v in m.items() if k.startswith(MEMORY))
        # innermost first among the tensor-core loops: the fewest instructions
        candidates.append(((tc > 0), -len(body) if tc else mem, start, end, m))
    if not candidates:
        return None
    _, _, start, end, m = max(candidates, key=lambda c: (c[0], c[1]))
    return start, end, m


def split_subroutines(functions):
    """Subroutines (the targets of CALL.REL: a Triton noinline function, which ptxas places
    after the kernel's own code in the same function) as functions of their own, named
    '<kernel>/subroutine@<offset>', so a rarely called path's loops are not taken for the
    kernel's hot loop and its instructions are not counted as the kernel's."""
    out = {}
    for name, instrs in functions.items():
        targets = sorted({int(t.group(1), 16) for _, op, args in instrs
                          if op.startswith("CALL.REL")
                          for t in [re.search(r"0x([0-9a-f]+)", args)] if t})
        if not targets:
            out[name] = instrs
            continue
        out[name] = [i for i in instrs if i[0] < targets[0]]
        for start, end in zip(targets, targets[1:] + [None]):
            out[f"{name}/subroutine@{start:x}"] = [
                i for i in instrs if i[0] >= start and (end is None or i[0] < end)]
    return out


def profile_cubin(path):
    """{function: {"instructions": n, "mix": {...}, "hot_loop": {...} or None}}, subroutines
    apart (split_subroutines)."""
    cuobjdump = tool("cuobjdump")
    if cuobjdump is None:
        raise RuntimeError("no cuobjdump (CUDA's or Triton's) to disassemble with")
    sass = subprocess.run([cuobjdump, "-sass", str(path)], capture_output=True, text=True,
                          check=True).stdout
    out = {}
    for name, instrs in split_subroutines(parse(sass)).items():
        hot = hot_loop(instrs)
        out[name] = dict(
            instructions=len(instrs), mix=dict(mix(instrs)),
            hot_loop=None if hot is None else dict(
                start=hot[0], end=hot[1], instructions=sum(hot[2].values()), mix=dict(hot[2])))
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    for path in argv:
        for name, p in profile_cubin(path).items():
            print(name)
            print("  all:", dict(sorted(p["mix"].items())))
            if p["hot_loop"]:
                print("  hot loop:", dict(sorted(p["hot_loop"]["mix"].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
