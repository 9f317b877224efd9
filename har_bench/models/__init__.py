"""Models: one ResNet family (ResNet, ResNeXt, wide, depthwise), the HAR baselines and the deep
time-series standards (InceptionTime, LITE, a PatchTST-style transformer)."""

from har_bench.models.baselines import CNN, LSTM, DeepConvLSTM
from har_bench.models.inception import LITE, InceptionTime
from har_bench.models.patchtst import PatchTST
from har_bench.models.resnet import (
    RESNEXT50_SHAPES,
    ResNet,
    bottleneck_width,
    default_kernel_size,
    init_weights,
    parse_shape,
    takes_images,
)
from har_bench.models.summary import count_flops, model_summary

__all__ = [
    "CNN",
    "LITE",
    "LSTM",
    "RESNEXT50_SHAPES",
    "DeepConvLSTM",
    "InceptionTime",
    "PatchTST",
    "ResNet",
    "bottleneck_width",
    "count_flops",
    "default_kernel_size",
    "init_weights",
    "model_summary",
    "parse_shape",
    "takes_images",
]
