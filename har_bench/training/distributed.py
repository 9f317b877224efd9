"""Data-parallel training under ``torchrun`` (DistributedDataParallel).

    torchrun --standalone --nproc_per_node=2 -m har_bench.cli dataset=uci_har ...

Every process loads the same data, seeds the same way and draws the same shuffled order; each
then trains on its share of every epoch (:func:`shard`, what a ``DistributedSampler`` does
for a DataLoader) through a DDP-wrapped model (:func:`wrap`), so gradients are averaged over
all processes at each step. Validation and test run in full on every process: HAR sets are
small, and identical evaluations keep early stopping and the best epoch identical everywhere
without further messages. Only rank 0 writes the run directory; the others write into a
temporary one that is deleted when they exit (see :func:`worker_args`).

Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) every function here is a no-op.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def enabled() -> bool:
    return world_size() > 1


def worker_args(args: Sequence[str]) -> list[str]:
    """Called by the CLI before Hydra (and torch) start in a torchrun worker.

    Pins the process to its GPU (``LOCAL_RANK``-th visible device) before CUDA can be
    initialised, and points every rank but 0 at a throw-away run (and sweep) dir: Hydra would
    otherwise create one dated directory per process.
    """
    args = list(args)
    if not enabled():
        return args
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d for d in visible.split(",") if d.strip()] if visible else None
    if devices is None or len(devices) > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = (
            devices[local % len(devices)] if devices else str(local)
        )
    if rank() != 0:
        tmp = tempfile.mkdtemp(prefix=f"har_bench_rank{rank()}_")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        # A sweep (-m) works too: every rank runs the jobs in the same order.
        args += [f"hydra.run.dir={tmp}", f"hydra.sweep.dir={tmp}"]
    return args


def _ensure_process_group() -> Any:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(_destroy)
    return dist


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: Any) -> Any:
    """``model`` in DistributedDataParallel under torchrun, else unchanged.

    The trainer uses the wrapper only for the training forward/backward; checkpoints,
    evaluation and ``state_dict`` keep using the plain module (no ``module.`` prefixes).
    """
    if not enabled():
        return model
    from torch.nn.parallel import DistributedDataParallel

    _ensure_process_group()
    device = next(model.parameters()).device
    return DistributedDataParallel(
        model, device_ids=[device.index or 0] if device.type == "cuda" else None
    )


def sync_buffers(model: Any) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks.

    DDP keeps parameters equal, but each rank updates its running statistics on its own
    share of the batches; evaluated with those, the ranks would disagree on validation and
    so on the best epoch. Averaged after every epoch, all ranks evaluate the same model.
    """
    if not enabled():
        return
    import torch

    dist = _ensure_process_group()
    with torch.no_grad():
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(world_size())


def shard(perm: Any) -> Any:
    """This process's share of an epoch's permutation (identical on every rank).

    Padded with its own first indices to a multiple of the world size, as DistributedSampler
    does, so every rank runs the same number of batches (a rank with one batch fewer would
    wait forever in the gradient all-reduce).
    """
    n_ranks = world_size()
    if n_ranks <= 1:
        return perm
    import torch

    pad = (-len(perm)) % n_ranks
    if pad:
        perm = torch.cat([perm, perm[:pad]])
    return perm[rank() :: n_ranks]


def agree(loss: Any, stop: bool) -> tuple[float, bool]:
    """The window loss averaged over the ranks, and whether any rank was asked to stop.

    Divergence and Ctrl-C/SIGTERM are decided from these shared values so that every rank
    leaves the loop at the same optimizer step: a rank that stopped alone would leave the
    others waiting forever in the next gradient all-reduce. One tiny all-reduce per step.
    Without torchrun: ``(float(loss), stop)``.
    """
    if not enabled():
        return float(loss), stop
    import torch

    dist = _ensure_process_group()
    both = torch.stack([loss.detach().float(), torch.tensor(float(stop), device=loss.device)])
    dist.all_reduce(both, op=dist.ReduceOp.SUM)  # a NaN/inf anywhere stays NaN/inf
    return float(both[0]) / world_size(), bool(both[1] > 0)


def report(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """Every rank's final figures, gathered on all ranks (recorded by rank 0 in metrics.json):
    a check that the processes really trained one model."""
    if not enabled():
        return None
    dist = _ensure_process_group()
    mine = {
        "best_val_metric": metrics.get("best_val_metric"),
        "val_accuracy": (metrics["val"] or {}).get("accuracy"),
        "val_macro_f1": (metrics["val"] or {}).get("macro_f1"),
        "test_accuracy": metrics["test"]["accuracy"],
        "test_macro_f1": metrics["test"]["macro_f1"],
    }
    per_rank: list[Any] = [None] * world_size()
    dist.all_gather_object(per_rank, mine)
    return {
        "world_size": world_size(),
        "backend": dist.get_backend(),
        "per_rank": per_rank,
        "ranks_agree": all(r == per_rank[0] for r in per_rank),
    }
