"""labquant: quantize CNNs (FP32 -> PTQ / QAT int8) with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
