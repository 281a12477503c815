"""CUDA graphs on swapped models: manual torch.cuda.CUDAGraph capture, torch.compile's
"reduce-overhead" mode, and a launch path without host synchronisation. GPU only."""

import pytest
import torch

from conftest import HAS_CUDA
from resnext_kernels import backends
from test_replace import assert_logits_close, randomize_bn, swapped_copy, tiny_seresnext

pytestmark = pytest.mark.gpu

BACKENDS = ["cuda", "triton", "reference"]


def gpu_model(backend):
    """A small SE-ResNeXt (our timm-style blocks: conv ops and SE tails), fp16 channels_last:
    small, so the compile tests fit the GPU plan's test step."""
    if not HAS_CUDA:
        pytest.skip("needs a CUDA device")
    if not backends.backend_status(backend, "cuda")[0]:
        pytest.skip(backends.backend_status(backend, "cuda")[1])
    model = randomize_bn(tiny_seresnext()).eval().to("cuda", torch.float16,
                                                      memory_format=torch.channels_last)
    return model, swapped_copy(model, backend=backend)


def gpu_input(seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(4, 3, 64, 64, device="cuda", dtype=torch.float16, generator=g)
    return x.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_manual_cuda_graph_capture_and_replay(backend):
    model, fused = gpu_model(backend)
    static_x = gpu_input(0)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up: autotuning, lazy init, the fold caches
            for _ in range(3):
                fused(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = fused(static_x)
        for seed in (1, 2):  # new inputs through the captured graph
            x = gpu_input(seed)
            static_x.copy_(x)
            graph.replay()
            torch.cuda.synchronize()
            assert_logits_close(static_y, model(x), 5e-2)
        # weights updated in place after capture (a served model's new checkpoint): the graph
        # holds the BN fold, so the replay folds the new values (no cached fold was captured)
        for m in (model, fused):
            for name, t in m.state_dict().items():
                if "running_var" in name or name.endswith("conv2.weight"):
                    t.mul_(1.5)
        graph.replay()
        torch.cuda.synchronize()
        assert_logits_close(static_y, model(static_x), 5e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_reduce_overhead(backend):
    model, fused = gpu_model(backend)
    compiled = torch.compile(fused, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for seed in range(4):  # the first calls record, later ones replay the graph
            x = gpu_input(seed)
            assert_logits_close(compiled(x).clone(), model(x), 5e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_launch_path_never_synchronises(backend):
    model, fused = gpu_model(backend)
    x = gpu_input(0)
    with torch.no_grad():
        fused(x)  # first call: autotuning and the fold caches may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            fused(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
