"""qconfigs as Hydra configs (conf/qconfig/*.yaml -> QConfigSpec) and their eager translation."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.ao.quantization import FakeQuantize, FusedMovingAvgObsFakeQuantize
from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

from labquant.config.groups import group_choices, load_group_option
from labquant.errors import ConfigError
from labquant.quant.eager import qconfigs as eager_qconfigs
from labquant.quant.eager.observers import EagerPotObserver
from labquant.quant.qconfigs import QConfigSpec, engine_default, power_of_two
from labquant.quant.scheme import FloatScale
from tests.conftest import backend_for, get_qconfig, qconfig_spec

# Instantiating torch's x86/fbgemm default observers outside workflow.py: torch's own notice.
pytestmark = pytest.mark.filterwarnings("ignore:.*reduce_range will be deprecated")

QCONFIG_NAMES = group_choices("qconfig")


def test_every_qconfig_yaml_names_its_factory_and_builds_a_spec():
    assert set(QCONFIG_NAMES) >= {"x86", "fbgemm", "qnnpack", "pot"}
    for name in QCONFIG_NAMES:
        cfg = load_group_option("qconfig", name)
        assert cfg._target_.startswith("labquant.quant.qconfigs.")
        spec = qconfig_spec(name)
        assert isinstance(spec, QConfigSpec) and spec.name == name


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
        assert isinstance(obs, EagerPotObserver)
        assert (obs.dtype, (obs.quant_min, obs.quant_max)) == (dtype, qrange)
        assert obs.qscheme == torch.per_tensor_symmetric and obs.max_shift_amount == 6


def test_pot_ptq_uses_the_power_of_two_observer():
    pot = get_qconfig("pot", qat=False, max_shift_amount=4)
    act, weight = pot.activation(), pot.weight()
    assert isinstance(act, EagerPotObserver) and isinstance(weight, EagerPotObserver)
    assert (act.max_shift_amount, weight.max_shift_amount) == (4, 4)
    assert act.reduce_range is False  # full 8 bits on purpose (see EagerPotObserver)


@pytest.mark.parametrize("name", ["X86", "fp32", "onednn"])
def test_unknown_name_is_a_config_error_listing_choices(name):
    with pytest.raises(ConfigError, match=r"unknown qconfig .*pot") as err:
        load_group_option("qconfig", name, setting="lab.qconfigs")
    assert "\n" not in str(err.value) and "lab.qconfigs" in str(err.value)


@pytest.mark.parametrize("shift", [40, -1, 2.5, True, "8"])
def test_max_shift_amount_is_checked_for_pot(shift):
    with pytest.raises(ConfigError, match=r"qconfig\.max_shift_amount=.* 0\.\.31") as err:
        power_of_two(max_shift_amount=shift)
    assert "\n" not in str(err.value)


def test_max_shift_amount_is_refused_where_it_has_no_meaning():
    assert engine_default("x86", "x86").scheme == FloatScale()  # conf/qconfig/x86.yaml: null
    with pytest.raises(ConfigError, match=r"qconfig\.max_shift_amount=6 applies to power-of-two"):
        engine_default("x86", "x86", max_shift_amount=6)


ENGINES = [("x86", "x86"), ("pot", "x86"), ("fbgemm", "fbgemm"), ("qnnpack", "qnnpack")]


@pytest.mark.parametrize(("name", "engine"), ENGINES)
def test_backend_for(name, engine):
    assert backend_for(name) == engine
    assert engine in torch.backends.quantized.supported_engines


def test_backend_missing_from_this_torch_build(monkeypatch):
    monkeypatch.setattr(eager_qconfigs, "_supported_engines", lambda: ["qnnpack"])
    assert backend_for("qnnpack") == "qnnpack"
    with pytest.raises(ConfigError, match=r"qconfig=pot needs the quantized engine 'x86'"):
        backend_for("pot")
