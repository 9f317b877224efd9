"""The training loop: one explicit loop over in-memory tensors.

HAR windows are tiny (9 x 128 floats), so the per-sample ``Dataset.__getitem__`` + collate path
of a DataLoader costs more than the forward pass. Windows are held as tensors on the device and
batches are taken by indexing with a shuffled permutation.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
DEVICES = ("auto", "cpu", "cuda")
MONITORS = {"val_macro_f1": "max", "val_accuracy": "max", "val_loss": "min"}


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"training diverged: loss={loss} at epoch {epoch}, optimizer step {step}; "
            "try a lower optimizer.lr or trainer.precision=32"
        )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"trainer.device={device!r} is invalid: expected one of {DEVICES}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "trainer.device='cuda' but CUDA is not available on this machine "
            "(use trainer.device=auto or cpu)"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32.

    ``auto`` is fp16 mixed on CUDA and fp32 on CPU: bf16 on a CPU without native bf16 units is
    slower than fp32, so it is used there only when asked for.
    """
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ValueError(
            f"trainer.precision={precision!r} is invalid: expected one of {PRECISIONS}"
        )
    if precision == "auto":
        precision = "16-mixed" if device.type == "cuda" else "32"
    return {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_metric: float | None
    stopped_early: bool
    train_seconds_per_epoch: list[float]
    best_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


class Trainer:
    """Fits a classifier on in-memory windows with AMP, gradient accumulation and early stopping.

    Args:
        max_epochs: epochs to train at most.
        batch_size: windows per forward pass (the micro-batch).
        eval_batch_size: batch size for validation/test/inference; defaults to ``batch_size``.
        accumulate_grad_batches: micro-batches per optimizer step. The loss is summed over the
            window and divided by the window's sample count, so 4 x 16 equals one batch of 64 and
            a short last window is weighted correctly.
        precision: ``auto``, ``32``, ``bf16-mixed``, ``16-mixed``.
        device: ``auto``, ``cpu``, ``cuda``.
        limit_train_batches / limit_eval_batches: cap batches per epoch / per evaluation.
        patience: stop after this many epochs without improvement of ``monitor``; None = never.
        monitor: ``val_macro_f1``, ``val_accuracy`` or ``val_loss``.
        grad_clip_norm: clip the global gradient norm; None = no clipping.
        drop_last: drop the last short training batch.
        num_threads: torch intra-op threads; None = torch's default.
        progress: show a rich progress bar per epoch.
    """

    def __init__(
        self,
        max_epochs: int = 10,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        accumulate_grad_batches: int = 1,
        precision: str = "auto",
        device: str = "auto",
        limit_train_batches: int | None = None,
        limit_eval_batches: int | None = None,
        patience: int | None = None,
        monitor: str = "val_macro_f1",
        grad_clip_norm: float | None = None,
        drop_last: bool = False,
        num_threads: int | None = None,
        progress: bool = True,
    ) -> None:
        for name, value in (
            ("max_epochs", max_epochs),
            ("batch_size", batch_size),
            ("accumulate_grad_batches", accumulate_grad_batches),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"trainer.{name}={value!r} is invalid: expected an integer >= 1")
        for name, value in (
            ("eval_batch_size", eval_batch_size),
            ("limit_train_batches", limit_train_batches),
            ("limit_eval_batches", limit_eval_batches),
            ("num_threads", num_threads),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"trainer.{name}={value!r} is invalid: expected null or an integer >= 1"
                )
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"trainer.patience={patience!r} is invalid: expected null or >= 1")
        if monitor not in MONITORS:
            raise ValueError(
                f"trainer.monitor={monitor!r} is invalid: expected one of {list(MONITORS)}"
            )
        if grad_clip_norm is not None and not grad_clip_norm > 0:
            raise ValueError(
                f"trainer.grad_clip_norm={grad_clip_norm!r} is invalid: expected null or > 0"
            )
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.accumulate_grad_batches = accumulate_grad_batches
        self.limit_train_batches = limit_train_batches
        self.limit_eval_batches = limit_eval_batches
        self.patience = patience
        self.monitor = monitor
        self.grad_clip_norm = grad_clip_norm
        self.drop_last = drop_last
        self.progress = progress
        self.device = resolve_device(device)
        self.amp_dtype = resolve_precision(precision, self.device)
        self.precision = str(precision)
        if num_threads is not None:
            torch.set_num_threads(num_threads)

    # -- helpers -------------------------------------------------------------------------------

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _progress(self) -> Any:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            transient=True,
            # Off when output goes to a file or pipe: the log line per epoch says it all there.
            disable=not (self.progress and Console().is_terminal),
        )

    def train_batches(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Shuffled index batches for one epoch (the last one short unless ``drop_last``)."""
        if self.drop_last and n < self.batch_size:
            raise ValueError(
                f"trainer.batch_size={self.batch_size} is larger than the training set "
                f"({n} windows) with trainer.drop_last=true: no batch would be trained"
            )
        perm = torch.randperm(n, generator=generator)
        batches = list(perm.split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.limit_train_batches is not None:
            batches = batches[: self.limit_train_batches]
        return batches

    # -- evaluation ----------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, model: nn.Module, X: torch.Tensor) -> torch.Tensor:
        """Logits (float32, on CPU) for ``X``, in eval mode, capped by ``limit_eval_batches``."""
        model.eval()
        out = []
        for i, xb in enumerate(X.split(self.eval_batch_size)):
            if self.limit_eval_batches is not None and i >= self.limit_eval_batches:
                break
            with self.autocast():
                out.append(model(xb.to(self.device, non_blocking=True)).float().cpu())
        if not out:
            return torch.empty(0, 0)
        return torch.cat(out)

    def evaluate(self, model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Loss, accuracy, macro-F1 and predictions on (X, y)."""
        logits = self.predict(model, X)
        y = y[: len(logits)].cpu()
        if len(y) == 0:
            return {
                "loss": float("nan"),
                "accuracy": float("nan"),
                "macro_f1": float("nan"),
                "y_true": y.numpy(),
                "y_pred": y.numpy(),
            }
        pred = logits.argmax(1)
        return {
            "loss": float(F.cross_entropy(logits, y)),
            "accuracy": float((pred == y).float().mean()),
            "macro_f1": float(f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0)),
            "y_true": y.numpy(),
            "y_pred": pred.numpy(),
        }

    # -- training ------------------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        X_train: torch.Tensor,
        y_train: torch.Tensor,
        X_val: torch.Tensor,
        y_val: torch.Tensor,
        optimizer_factory: Callable[..., torch.optim.Optimizer],
        scheduler_factory: Callable[..., Any] | None = None,
        checkpoint_dir: Path | None = None,
        seed: int = 0,
        on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    ) -> FitResult:
        """Train ``model``; keep the best-on-validation weights (never looks at a test set)."""
        if len(X_train) == 0:
            raise ValueError("the training split has no windows")
        model.to(self.device)
        X_train = X_train.to(self.device)
        y_train = y_train.to(self.device)
        optimizer = optimizer_factory(model.parameters())
        scheduler = scheduler_factory(optimizer) if scheduler_factory is not None else None
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        # The shuffling generator lives on the CPU so runs match across devices.
        generator = torch.Generator().manual_seed(seed)
        mode = MONITORS[self.monitor]
        have_val = len(X_val) > 0
        best_metric: float | None = None
        best_epoch = 0
        best_state: dict[str, torch.Tensor] = {}
        bad_epochs = 0
        stopped_early = False
        history: list[dict[str, float]] = []
        train_seconds: list[float] = []
        step = 0

        for epoch in range(1, self.max_epochs + 1):
            model.train()
            batches = self.train_batches(len(X_train), generator)
            seen = 0
            correct = torch.zeros((), dtype=torch.long, device=self.device)
            loss_sum = torch.zeros((), device=self.device)
            t0 = time.perf_counter()
            with self._progress() as bar:
                task = bar.add_task(f"epoch {epoch}/{self.max_epochs}", total=len(batches), info="")
                for w in range(0, len(batches), self.accumulate_grad_batches):
                    window = batches[w : w + self.accumulate_grad_batches]
                    window_samples = sum(len(b) for b in window)
                    window_loss = torch.zeros((), device=self.device)
                    for idx in window:
                        idx = idx.to(self.device)
                        xb, yb = X_train[idx], y_train[idx]
                        with self.autocast():
                            logits = model(xb)
                        # Sum / window size: the gradient of a window equals that of one big batch.
                        loss = F.cross_entropy(logits.float(), yb, reduction="sum") / window_samples
                        scaler.scale(loss).backward()
                        window_loss += loss.detach()
                        correct += (logits.argmax(1) == yb).sum()
                        seen += len(idx)
                        bar.advance(task)
                    # One host sync per optimizer step: catches divergence before it is stepped in.
                    wl = float(window_loss)
                    if not math.isfinite(wl):
                        raise DivergedError(epoch, step, wl)
                    loss_sum += window_loss * window_samples
                    if self.grad_clip_norm is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    bar.update(task, info=f"loss {wl:.4f}")
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t_train = time.perf_counter() - t0
            train_seconds.append(t_train)
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()

            val = self.evaluate(model, X_val, y_val) if have_val else None
            row = {
                "epoch": epoch,
                "train_loss": float(loss_sum) / max(seen, 1),
                "train_accuracy": int(correct) / max(seen, 1),
                "val_loss": val["loss"] if val else float("nan"),
                "val_accuracy": val["accuracy"] if val else float("nan"),
                "val_macro_f1": val["macro_f1"] if val else float("nan"),
                "lr": lr,
                "train_seconds": t_train,
                "epoch_seconds": time.perf_counter() - t0,
                "samples_per_second": seen / t_train if t_train > 0 else float("nan"),
            }
            history.append(row)

            metric = row[self.monitor] if have_val else None
            improved = (
                not have_val
                or best_metric is None
                or (metric > best_metric if mode == "max" else metric < best_metric)
            )
            if improved:
                best_metric, best_epoch, bad_epochs = metric, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if checkpoint_dir is not None:
                    save_checkpoint(
                        checkpoint_dir / "best.pt",
                        {
                            "model": best_state,
                            "epoch": epoch,
                            "monitor": self.monitor,
                            "metric": best_metric,
                        },
                    )
            else:
                bad_epochs += 1
            if checkpoint_dir is not None:
                save_checkpoint(
                    checkpoint_dir / "last.pt",
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "scaler": scaler.state_dict(),
                        "epoch": epoch,
                        "step": step,
                        "history": history,
                        "best_epoch": best_epoch,
                        "best_metric": best_metric,
                        "bad_epochs": bad_epochs,
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                    },
                )
            log.info(
                "epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  "
                "val_f1 %.4f  %.1fs  %.0f samples/s%s",
                epoch,
                self.max_epochs,
                row["train_loss"],
                row["train_accuracy"],
                row["val_loss"],
                row["val_accuracy"],
                row["val_macro_f1"],
                row["epoch_seconds"],
                row["samples_per_second"],
                "  *" if improved else "",
            )
            if on_epoch_end is not None:
                on_epoch_end(row)
            if self.patience is not None and have_val and bad_epochs >= self.patience:
                log.info(
                    "early stopping: %s did not improve for %d epochs", self.monitor, self.patience
                )
                stopped_early = True
                break

        return FitResult(
            history=history,
            best_epoch=best_epoch,
            best_metric=best_metric,
            stopped_early=stopped_early,
            train_seconds_per_epoch=train_seconds,
            best_state=best_state,
        )


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """torch.save to a temp file, then rename: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.inference_mode()
def measure_latency(
    model: nn.Module, sample: torch.Tensor, device: torch.device, repeats: int = 50, warmup: int = 5
) -> dict[str, float]:
    """Single-sample inference latency in milliseconds (p50, p95) at batch size 1, fp32."""
    model.eval().to(device)
    x = sample[:1].to(device)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return {
        "p50": float(np.percentile(times, 50)),
        "p95": float(np.percentile(times, 95)),
        "repeats": repeats,
    }
