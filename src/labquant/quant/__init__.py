"""Quantization behind a few small protocols (quant/backend.py): qconfig specs, the backend
seam, and one subpackage per backend (eager/, pt2e/). Nothing here imports models/ or data/."""
