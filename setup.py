"""Build script for resnext_kernels and its compiled extension `resnext_kernels._C`.

Build knobs (environment variables):
  TORCH_CUDA_ARCH_LIST            archs to compile for; default: the visible GPUs, or
                                  "8.0;8.6;8.9;9.0+PTX" when no GPU is visible (build machines, CI)
  MAX_JOBS                        parallel compile jobs (ninja), honoured by torch.utils.cpp_extension
  DEBUG=1                         -O0 -g (host) and -O0 -G -lineinfo (device)
  RESNEXT_KERNELS_SKIP_CUDA=1     build no extension; the Triton and reference backends still work
  RESNEXT_KERNELS_FORCE_CUDA=1    fail the install if the CUDA extension cannot be built
                                  (instead of quietly installing without it)
  RESNEXT_KERNELS_PTXAS_VERBOSE=1 print ptxas' per-kernel register / spill / shared-memory report
  CUDA_HOME                       the CUDA toolkit; default /usr/local/cuda when it holds nvcc
"""

import glob
import json
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def choose_cuda_home():
    """Point torch.utils.cpp_extension at a real toolkit before it is imported.

    torch guesses CUDA_HOME from `which nvcc`; a /usr/local/bin/nvcc symlink makes that guess
    /usr/local, which has no lib64. Prefer an explicit CUDA_HOME, then /usr/local/cuda, then the
    directory that the nvcc on PATH really lives in.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if os.path.exists(os.path.join(home, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = home
            return


def pip_cuda_include_dirs():
    """Include dirs of the nvidia-* pip packages that a CUDA build of torch installs.

    They carry headers (cusparse.h, cublas_v2.h, ...) that torch's ATen/cuda headers include and
    that a bare toolkit may lack.
    """
    dirs = []
    for entry in sys.path:
        nvidia = os.path.join(entry, "nvidia")
        if os.path.isdir(nvidia):
            dirs += sorted(glob.glob(os.path.join(nvidia, "*", "include")))
    # keep order, drop duplicates
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def write_build_info(info):
    path = os.path.join(ROOT, "resnext_kernels", "_build_info.json")
    with open(path, "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)


def cuda_extension_plan(torch, cpp_extension):
    """Returns (build: bool, reason: str)."""
    if env_flag("RESNEXT_KERNELS_SKIP_CUDA"):
        return False, "skipped: RESNEXT_KERNELS_SKIP_CUDA is set"
    if torch.version.cuda is None:
        return False, f"skipped: torch {torch.__version__} is not a CUDA build"
    if cpp_extension.CUDA_HOME is None or not os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    ):
        return False, "skipped: nvcc not found (set CUDA_HOME to the CUDA toolkit)"
    return True, "built"


def main():
    choose_cuda_home()
    import torch
    from torch.utils import cpp_extension

    build_cuda, reason = cuda_extension_plan(torch, cpp_extension)
    if not build_cuda and env_flag("RESNEXT_KERNELS_FORCE_CUDA"):
        raise RuntimeError(
            "RESNEXT_KERNELS_FORCE_CUDA=1 but the CUDA extension cannot be built: " + reason
        )

    if build_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if not torch.cuda.is_available():
            # No GPU to ask: build for Ampere, Ada, Hopper, plus PTX for newer GPUs.
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "detected from the visible GPUs")

    debug = env_flag("DEBUG")
    info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_home": cpp_extension.CUDA_HOME if build_cuda else None,
        "cuda_archs": archs if build_cuda else None,
        "cuda_extension": reason,
        "debug": debug,
        "python": sys.version.split()[0],
    }
    write_build_info(info)

    ext_modules, cmdclass, options = [], {}, {}
    if build_cuda:
        sources = sorted(glob.glob(os.path.join("csrc", "torch", "*.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "kernels", "*.cu")))
        host_flags = ["-O0", "-g"] if debug else ["-O3"]
        host_flags += ["-DPy_LIMITED_API=0x03090000"]
        nvcc_flags = ["-O0", "-G", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
        nvcc_flags += ["--expt-relaxed-constexpr", "-std=c++17"]
        if env_flag("RESNEXT_KERNELS_PTXAS_VERBOSE"):
            nvcc_flags += ["-Xptxas=-v"]
        ext_modules.append(
            cpp_extension.CUDAExtension(
                name="resnext_kernels._C",
                sources=sources,
                include_dirs=[os.path.join(ROOT, "csrc")] + pip_cuda_include_dirs(),
                extra_compile_args={"cxx": host_flags, "nvcc": nvcc_flags},
                py_limited_api=True,
            )
        )
        cmdclass["build_ext"] = cpp_extension.BuildExtension
        # One build serves every Python >= 3.9 (the module init is empty; ops register via torch).
        options["bdist_wheel"] = {"py_limited_api": "cp39"}
    else:
        print(f"resnext_kernels: CUDA extension {reason}", file=sys.stderr)

    setup(ext_modules=ext_modules, cmdclass=cmdclass, options=options)


if __name__ == "__main__":
    main()
