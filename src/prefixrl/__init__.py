"""prefixrl: on-policy RL on hard problems, conditioned on prefixes of correct off-policy traces."""

__version__ = "0.1.0"
