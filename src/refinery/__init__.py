"""Refinery: NVIDIA Nemotron-family recipes (data, RLVR, reward models, compression) as one tested toolkit."""

__version__ = "0.1.0"

from refinery.errors import RefineryError

__all__ = ["RefineryError", "__version__"]
