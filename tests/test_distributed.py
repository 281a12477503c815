"""A swapped model trains under DistributedDataParallel and FSDP as the original does: 2
processes on the CPU (gloo), each with its own shard of fixed random data; the swapped model's
parameters and BN buffers after the steps are the unswapped model's under the same wrapper,
within the tolerance table."""

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import resnext_kernels as rk
from conftest import tolerance

WORLD = 2
STEPS = 5


def _narrow_resnext():
    from test_grouped_conv_bn_relu_train import narrow_resnext  # (small residuals: see there)

    return narrow_resnext()


def _narrow_seresnext():
    from test_grouped_conv_bn_relu_train import narrow_seresnext

    return narrow_seresnext()


def _exit_cleanly():
    """Ends a worker that finished its work, skipping the interpreter's teardown: under torch
    2.15 a gloo process group's threads sometimes abort the process at exit ("terminate called
    without an active exception", SIGABRT), which mp.spawn reports as a failure although the
    results were already written. Only the success path comes here; an exception still
    propagates to mp.spawn with its traceback."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _train(model, x, target):
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=3e-5, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(ddp(x), target).backward()
        opt.step()
    return model


def _worker(rank, store_path, out_path):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=WORLD)
    try:
        torch.manual_seed(0)  # the same initial model in both processes
        original = _narrow_resnext().train()
        swapped = rk.replace_modules(copy.deepcopy(original), backend="reference",
                                     verbose=False, fuse_training=True)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
        x, target = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        states = []
        for m in (original, swapped):
            _train(m, x, target)
            states.append({**m.state_dict(),
                           **{"grad " + k: p.grad for k, p in m.named_parameters()}})
        if rank == 0:
            torch.save(states, out_path)
    finally:
        dist.destroy_process_group()
    _exit_cleanly()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_training_matches_the_unswapped_model(tmp_path):
    out = tmp_path / "states.pt"
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(out)), nprocs=WORLD, join=True)
    original, swapped = torch.load(out)
    assert list(original) == list(swapped)
    for k in original:
        a, b = original[k], swapped[k]
        if k.endswith("num_batches_tracked"):
            assert a.item() == b.item() == STEPS, k
            continue
        if k.startswith("grad ") and ".conv2." not in k and ".bn2." not in k:
            continue  # (the fused ops' gradients: the stem's max pool can flip its argmax)
        span = max(1.0, a.abs().max().item())
        torch.testing.assert_close(b / span, a / span, **tolerance(torch.float32), msg=k)
    torch.manual_seed(0)
    initial = _narrow_resnext().state_dict()
    assert not torch.allclose(original["fc.weight"], initial["fc.weight"])  # it trained
    assert swapped["grad layer1.0.conv2.weight"].abs().max() > 1e-3  # through the fused op


# --- FSDP ------------------------------------------------------------------------------------

def _fully_shard(model, kind):
    """The model wrapped as the FSDP guides wrap a ResNet: FSDP2 (`fully_shard`) per stage and
    at the root, or FSDP1 (`FullyShardedDataParallel`, one flat unit, original parameters)."""
    if kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(model, device_id=torch.device("cpu"),
                                        use_orig_params=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        fully_shard(stage, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _full_state(wrapped):
    """The state dict with every FSDP2 shard gathered (FSDP1's default is gathered already)."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v.clone()
            for k, v in wrapped.state_dict().items()}


def _full_grads(wrapped, kind):
    """The last backward's gradients (FSDP reduced them over the ranks), gathered whole."""
    if kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(wrapped, with_grads=True):
            return {"grad " + k.replace("_fsdp_wrapped_module.", ""): p.grad.clone()
                    for k, p in wrapped.named_parameters()}
    return {"grad " + k: p.grad.full_tensor() for k, p in wrapped.named_parameters()}


def _fsdp_worker(rank, store_path, out_path, kind):
    from test_grouped_conv_backward import _OpsCalled, _ours

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=WORLD)
    try:
        torch.manual_seed(0)
        original = _narrow_seresnext().train()
        swapped = rk.replace_modules(copy.deepcopy(original), backend="reference",
                                     verbose=False, fuse_training=True)
        g = torch.Generator().manual_seed(100 + rank)
        x, target = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        states, sharded = [], []
        for m in (original, swapped):
            wrapped = _fully_shard(m, kind)
            opt = torch.optim.SGD(wrapped.parameters(), lr=3e-5, momentum=0.9)
            for _ in range(STEPS):
                opt.zero_grad()
                with _OpsCalled() as seen:
                    F.cross_entropy(wrapped(x), target).backward()
                opt.step()
            states.append({**_full_state(wrapped), **_full_grads(wrapped, kind)})
            sharded.append(type(next(wrapped.parameters())).__name__)
        if rank == 0:
            torch.save(dict(states=states, sharded=sharded,
                            ops=sorted({n.split(".")[0] for n in _ours(seen.names, "")})),
                       out_path)
    finally:
        dist.destroy_process_group()
    _exit_cleanly()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
@pytest.mark.parametrize("kind", ["fsdp2", "fsdp1"])
def test_fsdp_training_matches_the_unswapped_model(tmp_path, kind):
    """Our SE-ResNeXt (the conv + BN + ReLU and SE tail ops, forward and backward) under FSDP:
    parameters sharded, gathered for each unit's forward and backward, gradients reduce-
    scattered; BN buffers stay per rank, unsharded, as without the swap."""
    out = tmp_path / "result.pt"
    mp.spawn(_fsdp_worker, args=(str(tmp_path / "store"), str(out), kind), nprocs=WORLD,
             join=True)
    result = torch.load(out)
    assert result["ops"] == ["resnext_kernels::batchnorm_train_backward_sums",
                             "resnext_kernels::grouped_conv_bn_relu_train",
                             "resnext_kernels::grouped_conv_bn_train_backward",
                             "resnext_kernels::squeeze_excite",
                             "resnext_kernels::squeeze_excite_backward"], result["ops"]
    if kind == "fsdp2":
        assert result["sharded"] == ["DTensor", "DTensor"]
    original, swapped = result["states"]
    assert list(original) == list(swapped)
    fused_grads = [k for k in original if k.startswith("grad ")
                   and any(part in k for part in (".conv2.", ".bn2.", ".se."))]
    assert len(fused_grads) == 4 * 7  # conv2, bn2 (2), se (4) in each of the 4 blocks
    for k in original:
        a, b = original[k], swapped[k]
        if k.endswith("num_batches_tracked"):
            assert a.item() == b.item() == STEPS, k
            continue
        if k.startswith("grad "):
            if k not in fused_grads:
                continue  # (the stem's max pool can flip its argmax: see the DDP test)
            assert a.abs().max() > 0, k
            span = a.abs().max().item()  # gradients: relative to their own scale
        else:
            span = max(1.0, a.abs().max().item())
        torch.testing.assert_close(b / span, a / span, **tolerance(torch.float32), msg=k)
    torch.manual_seed(0)
    initial = _narrow_seresnext().state_dict()
    assert not torch.allclose(original["fc.weight"], initial["fc.weight"])  # it trained
