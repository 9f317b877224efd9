"""Parameter counts, size and FLOPs of a model, for model_summary.json and comparisons."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _rnn_flops(module: nn.RNNBase, inp: torch.Tensor) -> int:
    """2 FLOPs per multiply-add of every weight matrix at every time step."""
    x = inp.data if isinstance(inp, nn.utils.rnn.PackedSequence) else inp
    steps, batch = (x.shape[1], x.shape[0]) if module.batch_first else (x.shape[0], x.shape[1])
    if x.dim() == 2:  # unbatched input
        steps, batch = x.shape[0], 1
    macs = sum(w.numel() for name, w in module.named_parameters() if name.startswith("weight"))
    return 2 * macs * steps * batch


def _attention_flops(
    query: torch.Size, key: torch.Size, value: torch.Size, *args: Any, **kwargs: Any
) -> int:
    """softmax(Q K^T) V on [batch, heads, tokens, dim] shapes: its two batched matmuls."""
    b, h, s_q, d = query
    s_k, d_v = value[-2], value[-1]
    return 2 * b * h * s_q * s_k * (d + d_v)


def count_flops(model: nn.Module, sample: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``sample`` in eval mode (a multiply-add counts 2).

    torch.utils.flop_counter counts convolutions and matmuls; recurrent layers run as fused
    backend kernels (mkldnn_rnn_layer on CPU, cuDNN on GPU) that it does not know, so their
    FLOPs are computed from the weights and replace whatever the counter saw inside them.
    Attention is counted through its unfused path: the counter does not know the fused
    transformer layer eval mode uses, nor the CPU attention kernel.
    """
    rnn_flops: dict[str, int] = {}
    hooks = [
        module.register_forward_hook(
            lambda mod, args, _out, name=name: rnn_flops.__setitem__(name, _rnn_flops(mod, args[0]))
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.RNNBase)
    ]
    was_training = model.training
    model.eval()
    # Older torch builds within the supported range lack the CPU attention op or the switch
    # for the fused path; there attention is counted as far as the counter sees it.
    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {cpu_attention: _attention_flops} if cpu_attention is not None else {}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    mha = getattr(torch.backends, "mha", None)
    fastpath = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        with counter, torch.no_grad():
            model(sample)
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
        for h in hooks:
            h.remove()
    total = int(counter.get_total_flops())
    counts = counter.get_flop_counts()
    root = type(model).__name__
    for name, flops in rnn_flops.items():
        seen = counts.get(f"{root}.{name}", {})
        total += flops - int(sum(seen.values()))
    return total


def model_summary(model: nn.Module, sample: torch.Tensor) -> dict[str, Any]:
    """Parameters, size and per-sample FLOPs (counted by torch.utils.flop_counter).

    ``macs_per_sample`` is half of ``flops_per_sample``; papers quoting "FLOPs" for ResNets
    (4.1 G for ResNet-50) usually mean multiply-adds.
    """
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    flops = count_flops(model, sample[:1])
    out: dict[str, Any] = {
        "params": int(params),
        "trainable_params": int(trainable),
        "flops_per_sample": flops,
        "macs_per_sample": flops // 2,
        "size_mb": size / 2**20,
        "input_shape": list(sample.shape[1:]),
        "architecture": type(model).__name__,
    }
    # What was actually built, e.g. when model.shape overrode cardinality/base_width.
    for attr, key in (
        ("groups", "cardinality"),
        ("base_width", "base_width"),
        ("kernel_size", "kernel_size"),
    ):
        if isinstance(getattr(model, attr, None), int):
            out[key] = getattr(model, attr)
    return out
