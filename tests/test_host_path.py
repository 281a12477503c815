"""The host path: direct calls of the ops' bodies in plain eager inference (ops/_direct.py), the
folds cached per module and per weight (_derived.py), and pickling of swapped models.

All on the CPU with the reference backend: what is tested here is the Python around the kernels.
"""

import copy
import gc
import importlib
import io
import pickle
import weakref

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import resnext_kernels as rk
from resnext_kernels import modules
from resnext_kernels.backends import reference
from resnext_kernels.ops import _direct
from resnext_kernels.replace import is_fused
from test_replace import randomize_bn, swapped_copy, tiny_resnext, tiny_seresnext

# the op modules (resnext_kernels.ops re-exports their functions under the same names)
conv_op = importlib.import_module("resnext_kernels.ops.grouped_conv_bn_relu")
se_op = importlib.import_module("resnext_kernels.ops.squeeze_excite")
CLOSE = dict(atol=1e-4, rtol=1e-4)  # fp32: fold-then-conv against conv-then-BN


def conv_bn_relu(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False),
                      nn.BatchNorm2d(16), nn.ReLU())
    return randomize_bn(m, seed).eval()


def conv_args(seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 5, 5, generator=g)
    w = torch.randn(16, 4, 3, 3, generator=g, requires_grad=requires_grad)
    scale = torch.rand(16, generator=g) + 0.5
    shift = torch.randn(16, generator=g)
    return x, w, scale, shift


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def direct_calls(monkeypatch):
    """Records every direct_call_allowed verdict of the two ops."""
    verdicts = []

    def spy(*tensors, **kwargs):
        verdict = _direct.direct_call_allowed(*tensors, **kwargs)
        verdicts.append(verdict)
        return verdict

    monkeypatch.setattr(conv_op, "direct_call_allowed", spy)
    monkeypatch.setattr(se_op, "direct_call_allowed", spy)
    return verdicts


# ---------------------------------------------------------------------------- direct calls
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_direct_call_in_plain_inference_equals_the_dispatched_op(direct_calls, monkeypatch,
                                                                 mode):
    x, w, scale, shift = conv_args()
    with mode():
        direct = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend="reference")
        assert direct_calls == [True]
        monkeypatch.setattr(_direct, "ENABLED", False)
        reference._FOLDED.clear()  # computed afresh, not from the direct call's fold
        dispatched = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend="reference")
        assert direct_calls == [True, False]
    assert torch.equal(direct, dispatched)


def test_traces_transforms_and_forward_ad_are_not_plain_eager():
    assert _direct.plain_eager()
    with torch.overrides.TorchFunctionMode():
        assert not _direct.plain_eager()
    with OpRecorder():
        assert not _direct.plain_eager()
    seen = []
    torch.vmap(lambda t: seen.append(_direct.plain_eager()) or t)(torch.ones(2, 2))
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        seen.append(_direct.plain_eager())
    assert seen == [False, False]


def test_direct_call_keeps_the_ops_errors(direct_calls):
    x, w, scale, shift = conv_args()
    with torch.no_grad(), pytest.raises(ValueError, match="scale: expected shape"):
        rk.grouped_conv_bn_relu(x, w, scale[:8], shift, groups=4, backend="reference")
    with torch.no_grad(), pytest.raises(ValueError, match="backend: unknown backend"):
        rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend="nope")
    assert direct_calls == [True, True]


def test_autograd_goes_through_the_op(direct_calls):
    x, w, scale, shift = conv_args(requires_grad=True)
    y = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend="reference")
    assert direct_calls == [False] and y.grad_fn is not None
    y.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_modes_and_transforms_see_the_op(direct_calls):
    x, w, scale, shift = conv_args()
    with torch.no_grad(), OpRecorder() as recorder:
        rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend="reference")
    assert direct_calls == [False]
    assert recorder.ops[0] == "resnext_kernels.grouped_conv_bn_relu.default"
    u = torch.randn(2, 16, 4, 4)
    w1, w2 = torch.randn(4, 16), torch.randn(16, 4)
    with torch.no_grad(), OpRecorder() as recorder:
        rk.squeeze_excite(u, w1, None, w2, None, backend="reference")
    assert direct_calls == [False, False]
    assert recorder.ops[0] == "resnext_kernels.squeeze_excite.default"


@pytest.mark.skipif(not _direct.CUDA_OPS, reason="needs the compiled extension's CUDA ops")
def test_traced_cuda_calls_record_the_cpp_op():
    """backend="cuda", CUDA tensors, nothing for autograd: a trace records the backend's C++ op
    (what a compiled graph then calls, and what AOTInductor can package). Fake CUDA tensors: no
    GPU needed."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    with FakeTensorMode():
        x = torch.empty(2, 64, 8, 8, device="cuda", dtype=torch.float16)
        w = torch.empty(64, 2, 3, 3, device="cuda", dtype=torch.float16)
        scale, shift = torch.empty(64, device="cuda"), torch.empty(64, device="cuda")
        w1, w2 = torch.empty(4, 64, 1, 1, device="cuda"), torch.empty(64, 4, 1, 1, device="cuda")

    def ops(fn, *args):
        graph = make_fx(fn, tracing_mode="fake")(*args).graph
        return [str(n.target) for n in graph.nodes if str(n.target).startswith("resnext")]

    def conv(backend):
        return lambda x, w: rk.grouped_conv_bn_relu(x, w, scale, shift, groups=32,
                                                    backend=backend)

    assert ops(conv("cuda"), x, w) == ["resnext_kernels.grouped_conv_bn_relu_cuda.default"]
    assert ops(conv("auto"), x, w) == ["resnext_kernels.grouped_conv_bn_relu.default"]
    se = lambda u: rk.squeeze_excite(u, w1, None, w2, None, residual=u, relu=True,  # noqa: E731
                                     backend="cuda")
    assert ops(se, x) == ["resnext_kernels.squeeze_excite_cuda.default"]
    # autograd must record it: the Python op that has the backward (the masked forward, which
    # saves the ReLU mask for it)
    assert ops(conv("cuda"), x, w.requires_grad_()) == [
        "resnext_kernels.grouped_conv_bn_relu_masked.default"]
    with pytest.raises(ValueError, match="scale: expected shape"):
        make_fx(lambda x, w: rk.grouped_conv_bn_relu(x, w, scale[:8], shift, groups=32,
                                                     backend="cuda"),
                tracing_mode="fake")(x, w.detach())


def test_tensor_subclasses_go_through_the_dispatcher(direct_calls):
    class Marked(torch.Tensor):
        pass

    x, w, scale, shift = conv_args()
    with torch.no_grad():
        rk.grouped_conv_bn_relu(x.as_subclass(Marked), w, scale, shift, groups=4,
                                backend="reference")
        rk.grouped_conv_bn_relu(x, nn.Parameter(w), scale, shift, groups=4,
                                backend="reference")
    assert direct_calls == [False, True]


# ---------------------------------------------------------------------------- module fold cache
@pytest.fixture
def fold_counter(monkeypatch):
    calls = []
    real = modules.fold_batchnorm

    def counting(bn, conv_bias=None):
        calls.append(bn)
        return real(bn, conv_bias)

    monkeypatch.setattr(modules, "fold_batchnorm", counting)
    return calls


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_the_fold_is_made_once_and_reused(fold_counter, mode):
    model = conv_bn_relu()
    fused = swapped_copy(model, backend="reference")
    x = torch.randn(2, 16, 5, 5)
    with mode():
        for _ in range(3):
            torch.testing.assert_close(fused(x), model(x), **CLOSE)
    assert len(fold_counter) == 1


def changes():
    """(name, change(model)) for every kind of change that must invalidate the cached fold."""
    def in_place_weight(m):
        with torch.no_grad():
            m[0].weight.mul_(1.5)

    def optimizer_step(m):
        torch.manual_seed(11)
        m[0].weight.grad = torch.randn_like(m[0].weight)
        m[1].weight.grad = torch.randn_like(m[1].weight)
        torch.optim.SGD(m.parameters(), lr=0.5).step()

    def running_stats(m):
        torch.manual_seed(12)
        m.train()
        m(torch.randn(4, 16, 5, 5) * 3 + 1)
        m.eval()

    def load_state_dict(m):
        m.load_state_dict(randomize_bn(conv_bn_relu(seed=7), seed=7).state_dict())

    def data_assignment(m):
        m[1].running_var.data = m[1].running_var.data * 2

    def new_parameter(m):
        m[1].weight = nn.Parameter(m[1].weight.detach() * -1)

    def eps(m):
        m[1].eps = 0.5

    return [(f.__name__, f) for f in (in_place_weight, optimizer_step, running_stats,
                                      load_state_dict, data_assignment, new_parameter, eps)]


@pytest.mark.parametrize("name,change", changes(), ids=[n for n, _ in changes()])
def test_a_change_of_parameters_or_statistics_refolds(name, change):
    model = conv_bn_relu()
    fused = swapped_copy(model, backend="reference")
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        before = fused(x)
        torch.testing.assert_close(before, model(x), **CLOSE)
    change(model)
    change(fused)
    with torch.no_grad():
        after = fused(x)
        torch.testing.assert_close(after, model(x), **CLOSE)
    assert not torch.equal(before, after)


@pytest.mark.parametrize("foreach_or_fused", ["fused", "foreach"])
def test_every_optimizer_step_refolds(foreach_or_fused):
    """Adam(fused=True) writes the parameters without a version bump: every optimizer step
    clears the caches (frozen-BN fine-tuning, validated between steps)."""
    model = conv_bn_relu()
    fused = swapped_copy(model, backend="reference")
    x = torch.randn(2, 16, 5, 5)
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.1, **{foreach_or_fused: True})
                  for m in (model, fused)]
    for step in range(2):
        for m, opt in zip((model, fused), optimizers):
            m(x).square().sum().backward()  # eval mode: the fused path, with grad
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            torch.testing.assert_close(fused(x), model(x), **CLOSE)


def test_clear_caches_covers_writes_no_version_counter_sees():
    model = conv_bn_relu()
    fused = swapped_copy(model, backend="reference")
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        fused(x)
        for m in (model, fused):
            m[0].weight.data.mul_(-1)  # .data: its own version counter
            m[1].running_var.data.mul_(4)
        rk.clear_caches()
        torch.testing.assert_close(fused(x), model(x), **CLOSE)


def test_bn_without_num_batches_tracked_is_folded_every_call(fold_counter):
    """Without num_batches_tracked nothing shows that a training forward moved the running
    statistics (the batch_norm kernel writes them without a version bump)."""
    model = conv_bn_relu()
    fused = swapped_copy(model, backend="reference")
    for m in (model, fused):
        m[1].num_batches_tracked = None
    x = torch.randn(2, 16, 5, 5)
    batch = torch.randn(4, 16, 5, 5) * 3 + 1
    with torch.no_grad():
        fused(x)
        for m in (model, fused):
            m.train()(batch)
            m.eval()
        torch.testing.assert_close(fused(x), model(x), **CLOSE)
    assert len(fold_counter) == 2


def test_replaced_parameters_are_not_kept_alive():
    model = conv_bn_relu()
    fused = swapped_copy(model, backend="reference")
    x = torch.randn(2, 16, 5, 5)
    old = []
    with torch.no_grad():
        for i in range(3):
            old.append(weakref.ref(fused[0].weight))
            fused.load_state_dict(randomize_bn(conv_bn_relu(seed=i + 1), i + 1).state_dict(),
                                  assign=True)
            fused(x)
    gc.collect()
    assert [r() is None for r in old] == [True, True, True]


def test_eval_with_grad_is_never_cached_and_gets_every_gradient(fold_counter):
    model = conv_bn_relu()
    fused = swapped_copy(model, backend="reference")
    x = torch.randn(2, 16, 5, 5)
    for _ in range(2):
        fused(x).square().sum().backward()
    model(x).square().sum().backward()
    model(x).square().sum().backward()
    assert len(fold_counter) == 2
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **CLOSE, msg=name)


def test_a_fold_cached_in_inference_mode_serves_a_backward_later():
    """Frozen parameters, an input that needs a gradient: the fold cached inside
    inference_mode is made of normal tensors, so autograd can save them."""
    model = conv_bn_relu()
    fused = swapped_copy(model, backend="reference")
    for m in (model, fused):
        m.requires_grad_(False)
    with torch.inference_mode():
        fused(torch.randn(2, 16, 5, 5))
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    fused(x).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    model(x_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **CLOSE)


def test_bf16_autocast_caches_the_cast_per_dtype(fold_counter):
    model = conv_bn_relu()
    fused = swapped_copy(model, backend="reference")
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, a_ref = fused(x), model(x)
            fused(x)
        b = fused(x)
    assert a.dtype == torch.bfloat16 and b.dtype == torch.float32
    torch.testing.assert_close(a.float(), a_ref.float(), atol=5e-2, rtol=5e-2)
    assert len(fold_counter) == 2  # one per compute dtype


def test_parameters_made_in_inference_mode_are_folded_every_call(fold_counter):
    with torch.inference_mode():
        model = conv_bn_relu()
        fused = swapped_copy(model, backend="reference")
        x = torch.randn(2, 16, 5, 5)
        for _ in range(2):
            torch.testing.assert_close(fused(x), model(x), **CLOSE)
    assert len(fold_counter) == 2


# ---------------------------------------------------------------------------- reference cache
def test_reference_fold_is_reused_and_dropped_with_its_weight(monkeypatch):
    folds = []
    real = reference._fold
    monkeypatch.setattr(reference, "_fold", lambda *a: folds.append(1) or real(*a))
    x, w, scale, shift = conv_args(seed=3)
    key = id(w)
    with torch.no_grad():
        y1 = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend="reference")
        rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend="reference")
        assert key in reference._FOLDED._entries and len(folds) == 1
        w.mul_(-1)  # in place: a version bump
        y2 = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend="reference")
    assert len(folds) == 2
    expected = torch.relu(torch.conv2d(x, w * scale.view(-1, 1, 1, 1), shift, 1, 1, 1, 4))
    torch.testing.assert_close(y2, expected, **CLOSE)
    assert not torch.equal(y1, y2)
    del w
    assert key not in reference._FOLDED._entries


def test_reference_fold_is_kept_by_direct_calls_only():
    """Under the dispatcher the op may run inside a compiled graph: CUDA-graph trees (compile's
    reduce-overhead mode) refuse any allocation of the graph's pool that outlives its run, so a
    fold cached there broke them (seen on an H100, 2026-11-26). Only direct calls cache."""
    reference._FOLDED.clear()
    x, w, scale, shift = conv_args(seed=5)
    expected = torch.relu(torch.conv2d(x, w * scale.view(-1, 1, 1, 1), shift, 1, 1, 1, 4))
    with torch.no_grad():
        dispatched = torch.ops.resnext_kernels.grouped_conv_bn_relu(
            x, w, scale, shift, [1, 1], [1, 1], [1, 1], 4, True, "reference")
        assert len(reference._FOLDED._entries) == 0
        compiled = torch.compile(
            lambda *a: rk.grouped_conv_bn_relu(*a, groups=4, backend="reference"),
            fullgraph=True, backend="aot_eager")(x, w, scale, shift)
        assert len(reference._FOLDED._entries) == 0
        direct = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend="reference")
        assert id(w) in reference._FOLDED._entries
    for y in (dispatched, compiled, direct):
        torch.testing.assert_close(y, expected, **CLOSE)


# ---------------------------------------------------------------------------- pickling
@pytest.mark.parametrize("build", [tiny_resnext, tiny_seresnext])
def test_swapped_models_pickle_and_deepcopy(build):
    model = randomize_bn(build()).eval()
    fused = swapped_copy(model, backend="reference")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = fused(x)  # fills the fold caches
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    copied = copy.deepcopy(fused)
    for other in (loaded, copied, pickle.loads(pickle.dumps(fused))):
        assert [type(m) for m in other.modules()] == [type(m) for m in fused.modules()]
        assert all(m._rk_backend == "reference" for m in other.modules() if is_fused(m))
        assert not any(modules.FOLD_CACHE in m.__dict__ for m in other.modules())
        with torch.no_grad():
            assert torch.equal(other(x), expected)
    with torch.no_grad():  # the copy has its own parameters
        next(copied.parameters()).mul_(2)
        assert torch.equal(fused(x), expected)
    rk.restore_modules(fused)
    assert not any(modules.FOLD_CACHE in m.__dict__ for m in fused.modules())


def test_deepcopy_of_a_module_compiled_in_place():
    """Module.compile() keeps the compiled forward in the module's __dict__; a copy must not
    run the original's."""
    model = conv_bn_relu()
    fused = swapped_copy(model, backend="reference")
    fused.compile(backend="eager")
    copied = copy.deepcopy(fused)
    with torch.no_grad():
        copied[0].weight.mul_(-1)
        model[0].weight.mul_(-1)
        x = torch.randn(2, 16, 5, 5)
        torch.testing.assert_close(copied(x), model(x), **CLOSE)
