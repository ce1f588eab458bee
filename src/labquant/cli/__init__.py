"""Hydra entry points only: labquant-train, -quantize, -lab, -bench. Each parses, hands over to a
pipeline in tasks/, and turns user errors into one line and exit code 2."""
