"""Dataset loaders: every loader returns the same :class:`HARData` contract."""

from har_bench.data.base import HARData
from har_bench.data.hapt import load_hapt
from har_bench.data.images import load_cifar10, load_image_folder
from har_bench.data.pamap2 import load_pamap2
from har_bench.data.recordings import load_recordings
from har_bench.data.synthetic import load_synthetic
from har_bench.data.uci_har import load_uci_har
from har_bench.data.uea import load_uea
from har_bench.data.wisdm import load_wisdm

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
