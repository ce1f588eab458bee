"""Quantization: observers, named qconfigs, and the single gateway to torch.ao.quantization."""
