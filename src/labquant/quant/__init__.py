"""Quantization behind one interface (`QuantBackend`): qconfig specs, the backend seam, and one
subpackage per backend (eager today). Nothing here imports models/ or data/."""
