"""Models: one ResNet family (ResNet, ResNeXt, wide, depthwise) and the HAR baselines."""

from har_bench.models.resnet import ResNet, bottleneck_width, init_weights

__all__ = ["ResNet", "bottleneck_width", "init_weights"]
