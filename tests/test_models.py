"""The model zoo: torchvision / timm module names, parameter counts, strict checkpoint loading."""

import pytest
import torch

from resnext_kernels import models

# torchvision's and timm's parameter counts (../shared/perf-model.md; timm's SE-ResNeXt counted
# from timm 1.0 definitions).
PARAM_COUNTS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336, "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
    "seresnext50_32x4d": 27_559_896, "seresnext101_32x4d": 48_955_416,
    "seresnext101_32x8d": 93_569_048,
}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_count(name):
    with torch.device("meta"):
        model = getattr(models, name)()
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_checkpoint_loads_strictly(name):
    torchvision = pytest.importorskip("torchvision")
    ours = getattr(models, name)()
    theirs = getattr(torchvision.models, name)()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    x = torch.randn(1, 3, 64, 64)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))


def test_timm_checkpoint_loads_strictly():
    timm = pytest.importorskip("timm")
    ours = models.seresnext50_32x4d()
    theirs = timm.create_model("seresnext50_32x4d", pretrained=False)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))


def test_num_classes_and_zero_init_residual(tmp_path):
    model = models.resnext50_32x4d(num_classes=10, zero_init_residual=True)
    assert model.fc.out_features == 10
    assert all(not b.bn3.weight.detach().any() for b in model.layer1)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    other = models.load_checkpoint(models.resnext50_32x4d(num_classes=10), str(path))
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
