"""The training loop on tensors and the small units it calls; no Hydra, no datasets."""
