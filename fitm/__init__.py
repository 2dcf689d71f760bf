"""fitm: near-distribution novelty detection with fakes from an early-stopped score model (FITYMI)."""

__version__ = "0.1.0"
