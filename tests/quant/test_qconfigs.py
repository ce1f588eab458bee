"""Named qconfigs and their engines."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.ao.quantization import FakeQuantize, FusedMovingAvgObsFakeQuantize
from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

from labquant.errors import ConfigError
from labquant.quant import qconfigs
from labquant.quant.observers import CusQuantObserver
from labquant.quant.qconfigs import QCONFIG_NAMES, backend_for, get_qconfig

# Instantiating torch's x86/fbgemm default observers outside workflow.py: torch's own notice.
pytestmark = pytest.mark.filterwarnings("ignore:.*reduce_range will be deprecated")


@pytest.mark.parametrize("qat", [False, True], ids=["ptq", "qat"])
@pytest.mark.parametrize("name", QCONFIG_NAMES)
def test_every_named_qconfig_builds_observers(name, qat):
    qconfig = get_qconfig(name, qat=qat)
    act, weight = qconfig.activation(), qconfig.weight()
    assert act.dtype == torch.quint8 and weight.dtype == torch.qint8
    pickle.loads(pickle.dumps(qconfig))  # Lightning / DDP spawn pickle the module that holds it


def test_x86_ptq_is_torchs_default():
    qconfig = get_qconfig("x86", qat=False)
    assert isinstance(qconfig.activation(), HistogramObserver)
    assert isinstance(qconfig.weight(), PerChannelMinMaxObserver)


def test_pot_uses_plain_fake_quantize_not_the_fused_default():
    """The fused kernel would compute its own (non power-of-two) scale during training."""
    default = get_qconfig("x86", qat=True)
    assert isinstance(default.activation(), FusedMovingAvgObsFakeQuantize)
    assert isinstance(default.weight(), FusedMovingAvgObsFakeQuantize)

    pot = get_qconfig("pot", qat=True, max_shift_amount=6)
    for factory, dtype, qrange in [
        (pot.activation, torch.quint8, (0, 255)),
        (pot.weight, torch.qint8, (-128, 127)),
    ]:
        fq = factory()
        assert isinstance(fq, FakeQuantize)
        assert not isinstance(fq, FusedMovingAvgObsFakeQuantize)
        obs = fq.activation_post_process
        assert isinstance(obs, CusQuantObserver)
        assert (obs.dtype, (obs.quant_min, obs.quant_max)) == (dtype, qrange)
        assert obs.qscheme == torch.per_tensor_symmetric and obs.max_shift_amount == 6


def test_pot_ptq_uses_the_power_of_two_observer():
    pot = get_qconfig("pot", qat=False, max_shift_amount=4)
    act, weight = pot.activation(), pot.weight()
    assert isinstance(act, CusQuantObserver) and isinstance(weight, CusQuantObserver)
    assert (act.max_shift_amount, weight.max_shift_amount) == (4, 4)
    assert act.reduce_range is False  # full 8 bits on purpose (see CusQuantObserver)


@pytest.mark.parametrize("name", ["X86", "fp32", "", "onednn"])
def test_unknown_name_is_a_config_error_listing_choices(name):
    with pytest.raises(ConfigError, match=r"qconfig must be one of .*'pot'") as err:
        get_qconfig(name, qat=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="qconfig"):
        backend_for(name)


@pytest.mark.parametrize("qat", [False, True])
def test_max_shift_amount_is_checked_for_pot_and_ignored_elsewhere(qat):
    with pytest.raises(ConfigError, match=r"qconfig\.max_shift_amount"):
        get_qconfig("pot", qat=qat, max_shift_amount=40)
    get_qconfig("x86", qat=qat, max_shift_amount=None)  # conf/qconfig/x86.yaml sets it null


ENGINES = [("x86", "x86"), ("pot", "x86"), ("fbgemm", "fbgemm"), ("qnnpack", "qnnpack")]


@pytest.mark.parametrize(("name", "engine"), ENGINES)
def test_backend_for(name, engine):
    assert backend_for(name) == engine
    assert engine in torch.backends.quantized.supported_engines


def test_backend_missing_from_this_torch_build(monkeypatch):
    monkeypatch.setattr(qconfigs, "_supported_engines", lambda: ["qnnpack"])
    assert backend_for("qnnpack") == "qnnpack"
    with pytest.raises(ConfigError, match=r"qconfig=pot needs the quantized engine 'x86'"):
        backend_for("pot")
