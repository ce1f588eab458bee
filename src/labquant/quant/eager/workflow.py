"""Eager-mode torch.ao.quantization calls: prepare, observers on / off, BN freeze, convert.

Eager mode is deprecated upstream (DeprecationWarning on prepare / convert); keeping the calls
here keeps the warning filter in one place. The backend (eager/backend.py) is their only user in
labquant; the mode-matrix script (scripts/) also uses the bare steps.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.ao.nn.intrinsic as nni
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from torch import Tensor, nn
from torch.ao.quantization import FakeQuantizeBase, QConfig
from torch.ao.quantization.observer import ObserverBase


@contextmanager
def _quiet_deprecation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # torch 2.15 announces the same deprecations as UserWarnings in two more places: when
        # convert builds quint8/qint8 tensors, and when the x86/fbgemm default observers get
        # `reduce_range` (torch's own qconfig, nothing a user can act on).
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated")
        yield


def set_engine(backend: str) -> None:
    """Pick the int8 kernels; must happen before convert (weights are prepacked per engine)."""
    torch.backends.quantized.engine = backend


# Every module a conv / linear is after fusion (PTQ and QAT), plus the plain ones.
_MATMULS = (
    nn.Conv2d,
    nn.Linear,
    nni.ConvReLU2d,
    nni.ConvBn2d,
    nni.ConvBnReLU2d,
    nni.LinearReLU,
    nniqat.ConvBn2d,
    nniqat.ConvBnReLU2d,
    nniqat.ConvReLU2d,
)

RELU_FUSED = (
    nni.ConvReLU2d,
    nni.ConvBnReLU2d,
    nni.LinearReLU,
    nniqat.ConvBnReLU2d,
    nniqat.ConvReLU2d,
)


def set_relu_qconfig(model: nn.Module, qconfig: QConfig | None) -> int:
    """Give every module whose output follows a ReLU its own qconfig (fused conv(-bn)-relu,
    and the FloatFunctionals a block lists in `relu_outputs`: add_relu); returns how many.

    prepare() keeps a module's own `qconfig` over its parent's, so this runs after fusion and
    before attaching observers.
    """
    if qconfig is None:
        return 0
    count = 0
    for module in model.modules():
        targets = [module] if isinstance(module, RELU_FUSED) else []
        targets += [getattr(module, name) for name in getattr(module, "relu_outputs", ())]
        for target in targets:
            target.qconfig = qconfig
            count += 1
    return count


LayerQConfig = Callable[[str, nn.Module], QConfig | None]


def set_layer_qconfigs(model: nn.Module, layer_qconfig: LayerQConfig | None) -> int:
    """Give each fused conv / linear the qconfig `layer_qconfig(name, module)` returns (None:
    keep what it has), after fusion and the ReLU outputs' qconfig; returns how many."""
    if layer_qconfig is None:
        return 0
    count = 0
    outer: list[str] = []  # a fused module's own conv (`<name>.0`) is not a layer of its own
    for name, module in model.named_modules():
        if isinstance(module, _MATMULS) and not any(name.startswith(f"{o}.") for o in outer):
            outer.append(name)
            qconfig = layer_qconfig(name, module)
            if qconfig is not None:
                module.qconfig = qconfig
                count += 1
    return count


def prepare_ptq(
    model: nn.Module,
    qconfig: QConfig,
    relu_qconfig: QConfig | None = None,
    layer_qconfig: LayerQConfig | None = None,
) -> nn.Module:
    """Fuse (BN folded, eval mode) and insert observers, in place, ready for calibration."""
    model.eval()
    model.fuse_model(is_qat=False)
    set_relu_qconfig(model, relu_qconfig)
    set_layer_qconfigs(model, layer_qconfig)
    return attach_observers(model, qconfig)


def prepare_qat(
    model: nn.Module,
    qconfig: QConfig,
    relu_qconfig: QConfig | None = None,
    layer_qconfig: LayerQConfig | None = None,
) -> nn.Module:
    """Fuse (BN kept trainable, train mode) and insert fake-quant modules, in place."""
    model.train()
    model.fuse_model(is_qat=True)
    set_relu_qconfig(model, relu_qconfig)
    set_layer_qconfigs(model, layer_qconfig)
    return attach_fake_quant(model, qconfig)


def is_prepared(model: nn.Module) -> bool:
    """Preparing twice would fuse twice and nest observers; callers check this first.

    Looks for observer / fake-quant instances, not for an `activation_post_process` attribute:
    FloatFunctional has one (an Identity) before prepare and QFunctional keeps it after convert.
    """
    return any(isinstance(m, (ObserverBase, FakeQuantizeBase)) for m in model.modules())


def convert_int8(model: nn.Module) -> nn.Module:
    """An int8 copy on CPU (the only place int8 kernels run).

    A copy, so a QAT run can keep training and checkpointing the float model afterwards.
    The original stays on the CPU until convert is done: prepare() wraps each qconfig's
    observer constructors in closures that read the device of the ORIGINAL module when convert
    builds the weight observers, so converting while it sits on CUDA gives CUDA weight scales
    and fails. `Module.to` moves parameters in place, so an optimizer keeps the same tensors.
    """
    device = next(model.parameters()).device
    training = model.training
    model.cpu()
    try:
        int8 = copy.deepcopy(model).eval()
        with _quiet_deprecation():
            tq.convert(int8, inplace=True)
    finally:
        model.to(device)
        model.train(training)
    return int8


def attach_observers(model: nn.Module, qconfig: QConfig) -> nn.Module:
    """`prepare` alone, in place: no fusion, no mode change.

    `prepare_ptq` always fuses in eval mode first; the mode matrix (quant/modes.py) needs the
    bare call to see what happens with other fusions and in train mode.
    """
    model.qconfig = qconfig
    with _quiet_deprecation():
        tq.prepare(model, inplace=True)
    return model


def attach_fake_quant(model: nn.Module, qconfig: QConfig) -> nn.Module:
    """`prepare_qat` alone, in place: no fusion, no mode change (see `attach_observers`)."""
    model.qconfig = qconfig
    with _quiet_deprecation():
        tq.prepare_qat(model, inplace=True)
    return model


def convert_in_place(model: nn.Module) -> nn.Module:
    """`convert` where the model is, in its current mode, without a copy.

    Unlike `convert_int8` this does not move to the CPU or switch to eval: the mode matrix uses
    it to record what convert does on CUDA and in train mode.
    """
    with _quiet_deprecation():
        tq.convert(model, inplace=True)
    return model


def disable_observers(model: nn.Module) -> None:
    """Freeze the fake-quant ranges (QAT); the scales stay in use, they just stop moving.

    PTQ observers have no off switch: they only observe while calibration batches run.
    """
    model.apply(tq.disable_observer)


def enable_observers(model: nn.Module) -> None:
    model.apply(tq.enable_observer)


def freeze_bn_stats(model: nn.Module) -> None:
    """Stop fused ConvBn running stats late in QAT so the folded weights stop shifting."""
    model.apply(nniqat.freeze_bn_stats)


def fake_quant_scales(model: nn.Module) -> dict[str, float]:
    """Scale of every fake-quant module (for logging); per-channel ones as '<name>.max'.

    Plain observers are skipped: they hold min/max only, and computing a scale from them
    (HistogramObserver) is a search too slow to run every logging step.
    """
    scales: dict[str, float] = {}
    for name, m in model.named_modules():
        scale = getattr(m, "scale", None)
        if not isinstance(m, FakeQuantizeBase) or not isinstance(scale, Tensor):
            continue
        if scale.numel() == 1:
            scales[name] = float(scale)
        else:
            scales[f"{name}.max"] = float(scale.max())
    return scales


def quantized_layers(model_int8: nn.Module) -> list[tuple[str, nn.Module]]:
    """Quantized conv / linear modules (fused ConvReLU etc. included) of a converted model."""
    kinds = (nnq.Conv1d, nnq.Conv2d, nnq.Conv3d, nnq.Linear)
    return [(name, m) for name, m in model_int8.named_modules() if isinstance(m, kinds)]
