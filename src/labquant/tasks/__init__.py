"""Pipelines: what one command does from a composed config to results.json (train, quantize,
lab, bench). They instantiate, call Lightning, then convert / evaluate / save from return values."""
