"""The seam stays small: what a backend with PTQ and QAT must implement (quant/backend.py's
Quantizer + QATQuantizer) is at most 12 methods; what every backend shares is not among them."""

from __future__ import annotations

from labquant.quant.backend import QATQuantizer, Quantizer


def protocol_methods(protocol: type) -> set[str]:
    return {
        name
        for name, value in vars(protocol).items()
        if callable(value) and not name.startswith("_")
    }


def test_a_qat_backend_implements_at_most_twelve_methods():
    methods = protocol_methods(Quantizer) | protocol_methods(QATQuantizer)
    assert len(methods) <= 12, sorted(methods)
    assert not {"start_learned_scales", "learned_thresholds"} & methods  # shared code
