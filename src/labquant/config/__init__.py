"""Neutral helpers every layer may import: where the configs live, the OmegaConf resolvers,
command-line checks that run before Hydra, and the settings schema."""
