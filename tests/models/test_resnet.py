"""Quantizable ResNets: architecture matches torchvision, fusion is exact and complete."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.ao.nn.intrinsic as nni
import torchvision
from omegaconf import OmegaConf
from torch import nn

from labquant.models import (
    QuantizableBasicBlock,
    QuantizableBottleneck,
    QuantizableResNet,
    build_resnet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    small_resnet,
)

FACTORIES = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tv_cifar(name: str, num_classes: int = 10) -> nn.Module:
    """torchvision ResNet with the usual CIFAR stem: 3x3/1 conv, no max-pool."""
    model = getattr(torchvision.models, name)(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine params and running stats, so folding them is actually tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32, generator=gen) * 2 + 0.3)


def parent_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


# ---------------------------------------------------------------- architecture / parameter counts


def test_resnet18_cifar_param_count() -> None:
    torch.manual_seed(0)
    ours = resnet18()
    assert n_params(ours) == n_params(tv_cifar("resnet18")) == 11_173_962


def test_resnet50_cifar_param_count() -> None:
    torch.manual_seed(0)
    ours = resnet50()
    assert n_params(ours) == n_params(tv_cifar("resnet50")) == 23_520_842


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_layout_matches_torchvision(name: str) -> None:
    # Built on the meta device: no memory / init cost, only shapes matter here.
    with torch.device("meta"):
        ours_c, tv_c = FACTORIES[name](), tv_cifar(name)
        ours_i, tv_i = (
            FACTORIES[name](stem="imagenet"),
            getattr(torchvision.models, name)(num_classes=10),
        )
    assert shapes(ours_c) == shapes(tv_c)
    assert shapes(ours_i) == shapes(tv_i)
    assert n_params(ours_i) == n_params(tv_i)


def test_imagenet_stem_resnet18_matches_unmodified_torchvision() -> None:
    ours = resnet18(stem="imagenet")
    tv = torchvision.models.resnet18(num_classes=10)
    assert n_params(ours) == n_params(tv) == 11_181_642
    assert isinstance(ours.maxpool, nn.MaxPool2d)
    assert ours.conv1.kernel_size == (7, 7) and ours.conv1.stride == (2, 2)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_forward_matches_torchvision_with_same_weights(stem: str) -> None:
    """Same state dict -> same logits: the forward pass is torchvision's ResNet math."""
    torch.manual_seed(0)
    tv = tv_cifar("resnet18") if stem == "cifar" else torchvision.models.resnet18(num_classes=10)
    randomize_bn(tv)
    ours = resnet18(stem=stem)
    ours.load_state_dict(tv.state_dict())
    tv.eval()
    ours.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-5, atol=1e-5)


def test_arch_records_constructor_args_and_accepts_listconfig() -> None:
    model = build_resnet("bottleneck", OmegaConf.create([1, 2]), base_width=8, num_classes=7)
    assert model.arch == {
        "block": "bottleneck",
        "layers": [1, 2],
        "base_width": 8,
        "num_classes": 7,
        "stem": "cifar",
    }
    assert type(model.arch["layers"]) is list
    assert resnet18().arch["block"] == "basic"
    assert resnet18().arch["layers"] == [2, 2, 2, 2]
    assert small_resnet().arch == {
        "block": "basic",
        "layers": [2, 2, 2],
        "base_width": 32,
        "num_classes": 10,
        "stem": "cifar",
    }


def test_stage_widths_and_strides() -> None:
    model = small_resnet(layers=(1, 1, 1), base_width=16)
    assert [n for n, _ in model.named_children() if n.startswith("layer")] == [
        "layer1",
        "layer2",
        "layer3",
    ]
    assert not hasattr(model, "layer4")
    assert [model.get_submodule(f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3)] == [
        16,
        32,
        64,
    ]
    assert [model.get_submodule(f"layer{i}")[0].conv1.stride for i in (1, 2, 3)] == [
        (1, 1),
        (2, 2),
        (2, 2),
    ]
    assert model.fc.in_features == 64
    # Bottleneck v1.5: the stride sits on the 3x3 conv, not the first 1x1.
    bott = small_resnet(layers=(1, 1), base_width=8, block="bottleneck")
    assert bott.layer2[0].conv1.stride == (1, 1)
    assert bott.layer2[0].conv2.stride == (2, 2)
    assert bott.fc.in_features == 16 * 4


@pytest.mark.parametrize(
    ("stem", "size", "final_hw"),
    [("cifar", 32, 8), ("imagenet", 32, 2), ("imagenet", 64, 4)],
)
def test_output_shapes(stem: str, size: int, final_hw: int) -> None:
    model = small_resnet(layers=(1, 1, 1), base_width=8, num_classes=5, stem=stem).eval()
    seen: list[torch.Size] = []
    model.avgpool.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].shape))
    with torch.no_grad():
        out = model(torch.randn(4, 3, size, size))
    assert out.shape == (4, 5)
    assert seen == [torch.Size([4, 32, final_hw, final_hw])]


def test_cifar_stem_has_no_maxpool() -> None:
    model = resnet18()
    assert isinstance(model.maxpool, nn.Identity)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize(
    "build",
    [
        resnet18,
        lambda: resnet50(stem="imagenet"),
        lambda: small_resnet(block="bottleneck", base_width=8),
    ],
)
def test_no_inplace_relu(build) -> None:
    model = build()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus, "expected ReLU modules"
    assert not any(m.inplace for m in relus)


def test_zero_init_residual() -> None:
    basic = QuantizableResNet(QuantizableBasicBlock, [1, 1], base_width=8, zero_init_residual=True)
    bott = QuantizableResNet(QuantizableBottleneck, [1, 1], base_width=8, zero_init_residual=True)
    for block in (basic.layer1[0], basic.layer2[0]):
        assert torch.count_nonzero(block.bn2.weight) == 0
        assert torch.count_nonzero(block.bn1.weight) > 0
    for block in (bott.layer1[0], bott.layer2[0]):
        assert torch.count_nonzero(block.bn3.weight) == 0
        assert torch.count_nonzero(block.bn2.weight) > 0
    assert torch.count_nonzero(small_resnet().layer1[0].bn2.weight) > 0


# ------------------------------------------------------------------------------------ bad configs


@pytest.mark.parametrize("build", [resnet18, resnet50, small_resnet])
def test_invalid_stem_names_setting(build) -> None:
    with pytest.raises(ValueError, match=r"model\.stem.*cifar.*imagenet"):
        build(stem="tiny")


def test_invalid_block_names_setting() -> None:
    with pytest.raises(ValueError, match=r"model\.block.*basic.*bottleneck"):
        build_resnet("preact", [1, 1])
    with pytest.raises(ValueError, match=r"model\.block"):
        small_resnet(block="resnext")


def test_invalid_layers_names_setting() -> None:
    with pytest.raises(ValueError, match=r"model\.layers"):
        build_resnet("basic", [])
    with pytest.raises(ValueError, match=r"model\.layers"):
        build_resnet("basic", [2, 0])


# ----------------------------------------------------------------------------------------- fusion


def make_block(kind: str, with_downsample: bool) -> nn.Module:
    if kind == "basic":
        if with_downsample:
            ds = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
            return QuantizableBasicBlock(8, 16, stride=2, downsample=ds)
        return QuantizableBasicBlock(8, 8)
    if with_downsample:
        ds = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        return QuantizableBottleneck(8, 4, stride=2, downsample=ds)
    return QuantizableBottleneck(16, 4)


BLOCK_CASES = [
    ("basic", False),
    ("basic", True),
    ("bottleneck", False),
    ("bottleneck", True),
]


def _block_input(block: nn.Module) -> torch.Tensor:
    return torch.randn(4, block.conv1.in_channels, 16, 16)


@pytest.mark.parametrize(("kind", "with_downsample"), BLOCK_CASES)
def test_block_ptq_fusion(kind: str, with_downsample: bool) -> None:
    torch.manual_seed(0)
    block = make_block(kind, with_downsample)
    block.train()
    with torch.no_grad():
        for _ in range(2):
            block(_block_input(block) * 3 + 1)
    block.eval()
    x = _block_input(block)
    with torch.no_grad():
        ref = block(x)
    block.fuse_model(is_qat=False)

    assert type(block.conv1) is nni.ConvReLU2d
    assert isinstance(block.bn1, nn.Identity) and isinstance(block.relu1, nn.Identity)
    assert isinstance(block.bn2, nn.Identity)
    if kind == "basic":
        last = block.conv2
    else:
        assert type(block.conv2) is nni.ConvReLU2d
        assert isinstance(block.relu2, nn.Identity)
        assert isinstance(block.bn3, nn.Identity)
        last = block.conv3
    assert type(last) is nn.Conv2d
    assert last.bias is not None, "BN shift must be folded into the conv bias"
    if with_downsample:
        assert type(block.downsample[0]) is nn.Conv2d
        assert block.downsample[0].bias is not None
        assert isinstance(block.downsample[1], nn.Identity)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())

    with torch.no_grad():
        torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kind", "with_downsample"), BLOCK_CASES)
def test_block_qat_fusion(kind: str, with_downsample: bool) -> None:
    block = make_block(kind, with_downsample).train()
    block.fuse_model(is_qat=True)

    assert type(block.conv1) is nni.ConvBnReLU2d
    assert isinstance(block.bn1, nn.Identity) and isinstance(block.relu1, nn.Identity)
    if kind == "basic":
        assert type(block.conv2) is nni.ConvBn2d
    else:
        assert type(block.conv2) is nni.ConvBnReLU2d
        assert type(block.conv3) is nni.ConvBn2d
    if with_downsample:
        assert type(block.downsample[0]) is nni.ConvBn2d
        assert isinstance(block.downsample[1], nn.Identity)
    else:
        assert block.downsample is None
    # BN stays trainable, but only inside a fused ConvBn* module.
    for name, m in block.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert isinstance(parent_of(block, name), (nni.ConvBn2d, nni.ConvBnReLU2d)), name


@pytest.mark.parametrize(("kind", "with_downsample"), BLOCK_CASES)
def test_block_fuse_model_default_follows_training_flag(kind: str, with_downsample: bool) -> None:
    qat = make_block(kind, with_downsample).train()
    qat.fuse_model()
    assert type(qat.conv1) is nni.ConvBnReLU2d

    ptq = make_block(kind, with_downsample).eval()
    ptq.fuse_model()
    assert type(ptq.conv1) is nni.ConvReLU2d


def small_nets() -> list[tuple[str, QuantizableResNet]]:
    return [
        # Stage 2 of each has a strided downsample; the bottleneck stage 1 a width-only one.
        ("basic", small_resnet(layers=(1, 2), base_width=8)),
        ("bottleneck", small_resnet(layers=(1, 1), base_width=8, block="bottleneck")),
        ("basic-imagenet", small_resnet(layers=(1, 1), base_width=8, stem="imagenet")),
    ]


@pytest.mark.parametrize("idx", range(3))
def test_fused_model_matches_unfused_in_eval(idx: int) -> None:
    torch.manual_seed(idx)
    _, model = small_nets()[idx]
    assert any(
        isinstance(m, (QuantizableBasicBlock, QuantizableBottleneck)) and m.downsample is not None
        for m in model.modules()
    )
    randomize_bn(model, seed=idx)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)

    ptq = copy.deepcopy(model)
    ptq.fuse_model()  # eval -> PTQ fusion (BN folded)
    assert type(ptq.conv1) is nni.ConvReLU2d
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ptq.modules())
    for name, m in ptq.named_modules():
        if isinstance(m, nn.ReLU):
            assert isinstance(parent_of(ptq, name), nni.ConvReLU2d), name
    with torch.no_grad():
        torch.testing.assert_close(ptq(x), ref, rtol=1e-5, atol=1e-6)

    # QAT fusion keeps conv and BN as separate submodules: same eval output, too.
    qat = copy.deepcopy(model).train()
    qat.fuse_model()  # train -> QAT fusion
    assert type(qat.conv1) is nni.ConvBnReLU2d
    qat.eval()
    with torch.no_grad():
        torch.testing.assert_close(qat(x), ref, rtol=1e-5, atol=1e-6)


def test_model_fuse_model_is_complete_for_both_modes() -> None:
    model = small_resnet(layers=(2, 2), base_width=8, block="bottleneck")
    ptq = copy.deepcopy(model).eval()
    ptq.fuse_model(is_qat=False)
    qat = copy.deepcopy(model).train()
    qat.fuse_model(is_qat=True)

    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    # ConvReLU2d wraps a Conv2d: count only top-level fused units.
    top_ptq = [
        n
        for n, m in ptq.named_modules()
        if type(m) is nni.ConvReLU2d
        or (type(m) is nn.Conv2d and not isinstance(parent_of(ptq, n), nni.ConvReLU2d))
    ]
    assert len(top_ptq) == n_convs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ptq.modules())

    top_qat = [m for m in qat.modules() if type(m) in (nni.ConvBn2d, nni.ConvBnReLU2d)]
    assert len(top_qat) == n_convs
    for name, m in qat.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert isinstance(parent_of(qat, name), (nni.ConvBn2d, nni.ConvBnReLU2d)), name
