"""har-bench: config-driven ResNet/ResNeXt experiments for human-activity recognition."""

__version__ = "0.1.0"
