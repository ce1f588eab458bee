"""Hydra entry points: labquant-train, labquant-quantize, labquant-lab."""

from labquant.cli import resolvers as _resolvers  # noqa: F401  (registers ${lq.*} resolvers)
