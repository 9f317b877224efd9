"""Dataset loaders: every loader returns the same :class:`HARData` contract."""

from .base import HARData
from .hapt import load_hapt
from .images import load_cifar10, load_image_folder
from .pamap2 import load_pamap2
from .recordings import load_recordings
from .synthetic import load_synthetic
from .uci_har import load_uci_har
from .uea import load_uea
from .wisdm import load_wisdm

__all__ = [
    "HARData",
    "load_cifar10",
    "load_hapt",
    "load_image_folder",
    "load_pamap2",
    "load_recordings",
    "load_synthetic",
    "load_uci_har",
    "load_uea",
    "load_wisdm",
]
