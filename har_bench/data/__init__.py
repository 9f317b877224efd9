"""Dataset loaders: every loader returns the same :class:`HARData` contract."""

from .base import HARData
from .synthetic import load_synthetic
from .uci_har import load_uci_har

__all__ = ["HARData", "load_synthetic", "load_uci_har"]
