"""The training loop: one explicit loop over in-memory tensors.

HAR windows are tiny (9 x 128 floats), so the per-sample ``Dataset.__getitem__`` + collate path
of a DataLoader costs more than the forward pass. Windows are held as tensors on the device and
batches are taken by indexing with a shuffled permutation.

:meth:`Trainer.fit` is the loop over epochs: a :class:`~har_bench.training.session.Session` trains
one epoch of optimizer steps, then ``_end_epoch`` validates, tracks the best epoch, commits the
checkpoint and logs. What the loop carries between steps is a
:class:`~har_bench.training.train_state.TrainState`; the checkpoint files are
:mod:`har_bench.training.checkpoint`'s, the best-epoch bookkeeping
:mod:`har_bench.training.early_stopping`'s and the signal handling
:mod:`har_bench.training.signals`'.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from har_bench.core.errors import UserError, check_int, check_optional_int
from har_bench.core.metrics import macro_f1
from har_bench.training import distributed
from har_bench.training.augment import Augment
from har_bench.training.checkpoint import commit_epoch
from har_bench.training.early_stopping import BestTracker
from har_bench.training.ema import recalibrate_batchnorm
from har_bench.training.finetune import FineTune
from har_bench.training.image_transforms import ImageAugment
from har_bench.training.session import FitResult, Prepare, Session
from har_bench.training.signals import Interrupted, deferred_stop

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise UserError(f"trainer.device={device!r} is invalid: expected one of {DEVICES}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "trainer.device='cuda' but CUDA is not available on this machine "
            "(use trainer.device=auto or cpu)"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The training step's autocast dtype, or None for full fp32.

    ``auto`` is fp16 mixed on CUDA and fp32 on a CPU, where bf16 runs only when asked for
    (docs/benchmarks.md has what it gives there). The weights and the optimizer stay fp32.
    """
    precision = str(precision)
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision!r} is invalid: expected one of {PRECISIONS}")
    if precision == "auto":
        precision = "16-mixed" if device.type == "cuda" else "32"
    return {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """The ``trainer.precision`` value that ``dtype`` stands for (what a run records)."""
    return {None: "32", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}[dtype]


@dataclass
class Trainer:
    """Fits a classifier on in-memory windows with AMP, gradient accumulation and early stopping.

    Per-batch transforms (augmentation, mixup), loss variants and weight averaging plug in at one
    place, :meth:`har_bench.training.session.Session.optimizer_step`: a batch is transformed and its
    loss computed there, and averaged weights are updated right after the optimizer steps.

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
        num_threads: torch intra-op threads, set when training starts; None = torch's default.
        progress: show a rich progress bar per epoch.
        label_smoothing: share of each target spread evenly over the classes.
        ema_decay: keep an exponential moving average of the weights with this decay per
            optimizer step; it is what is validated, kept as best and tested. None = off.
        compile: train through ``torch.compile`` (the training step only; evaluation stays
            eager); where it cannot compile, one warning and training goes on eagerly.
    """

    max_epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int | None = None
    accumulate_grad_batches: int = 1
    precision: str = "auto"
    device: str | torch.device = "auto"
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    patience: int | None = None
    monitor: str = "val_macro_f1"
    grad_clip_norm: float | None = None
    drop_last: bool = False
    num_threads: int | None = None
    progress: bool = True
    label_smoothing: float = 0.0
    ema_decay: float | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        check_settings(self)
        self.eval_batch_size = self.eval_batch_size or self.batch_size
        self.precision = str(self.precision)
        self.device = resolve_device(str(self.device))
        self.amp_dtype = resolve_precision(self.precision, self.device)
        # Evaluation's: the training step's on CUDA; fp32 on a CPU, so that a run's figures are
        # the ones `har-bench predict` (fp32) reproduces.
        self.eval_dtype = self.amp_dtype if self.device.type == "cuda" else None

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def eval_autocast(self) -> Any:
        """Evaluation's precision (``eval_dtype``)."""
        if self.eval_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.eval_dtype)

    def train_batches(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Shuffled index batches for one epoch (the last one short unless ``drop_last``)."""
        if self.drop_last and n < self.batch_size:
            raise UserError(
                f"trainer.batch_size={self.batch_size} is larger than the training set "
                f"({n} windows) with trainer.drop_last=true: no batch would be trained"
            )
        perm = torch.randperm(n, generator=generator)
        # Under torchrun: this process's share of the epoch (every rank drew the same perm).
        perm = distributed.shard(perm)
        batches = list(perm.split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.limit_train_batches is not None:
            batches = batches[: self.limit_train_batches]
        return batches

    def steps_per_epoch(self, n: int) -> int:
        """Optimizer steps in one epoch over ``n`` training windows (this process's share under
        torchrun)."""
        batches = len(self.train_batches(n, torch.Generator()))
        return math.ceil(batches / self.accumulate_grad_batches)

    @torch.inference_mode()
    def predict(self, model: nn.Module, X: torch.Tensor, prepare: Prepare = None) -> torch.Tensor:
        """Logits (float32, on CPU) for ``X``, in eval mode, capped by ``limit_eval_batches``;
        ``prepare`` turns each stored batch into the model's input on the device."""
        model.eval()
        out = []
        for i, xb in enumerate(X.split(self.eval_batch_size)):
            if self.limit_eval_batches is not None and i >= self.limit_eval_batches:
                break
            xb = xb.to(self.device, non_blocking=True)
            if prepare is not None:
                xb = prepare(xb)
            with self.eval_autocast():
                out.append(model(xb).float().cpu())
        if not out:
            return torch.empty(0, 0)
        return torch.cat(out)

    def evaluate(
        self, model: nn.Module, X: torch.Tensor, y: torch.Tensor, prepare: Prepare = None
    ) -> dict[str, Any]:
        """Loss, accuracy, macro-F1, predictions and logits on (X, y)."""
        logits = self.predict(model, X, prepare)
        y = y[: len(logits)].cpu()
        if len(y) == 0:
            nan = float("nan")
            empty = y.numpy()
            return {
                "loss": nan,
                "accuracy": nan,
                "macro_f1": nan,
                "y_true": empty,
                "y_pred": empty,
                "logits": torch.empty(0, 0).numpy(),
            }
        pred = logits.argmax(1)
        return {
            "loss": float(F.cross_entropy(logits, y)),
            "accuracy": float((pred == y).float().mean()),
            "macro_f1": macro_f1(y.numpy(), pred.numpy()),
            "y_true": y.numpy(),
            "y_pred": pred.numpy(),
            "logits": logits.numpy(),  # for the temperature (har_bench.core.calibration)
        }

    def fit(
        self,
        model: nn.Module,
        X_train: torch.Tensor,
        y_train: torch.Tensor,
        X_val: torch.Tensor,
        y_val: torch.Tensor,
        optimizer_factory: Callable[..., torch.optim.Optimizer],
        *,
        scheduler_factory: Callable[..., Any] | None = None,
        checkpoint_dir: Path | None = None,
        seed: int = 0,
        on_epoch_end: Callable[[dict[str, float]], None] | None = None,
        resume: Mapping[str, Any] | None = None,
        augment: Augment | ImageAugment | None = None,
        prepare: Prepare = None,
        finetune: FineTune | None = None,
    ) -> FitResult:
        """Train ``model``; keep the best-on-validation weights (never looks at a test set).

        ``resume`` (from :func:`har_bench.training.checkpoint.load_resume_state`) continues exactly
        where that checkpoint left off, mid-epoch included. SIGINT/SIGTERM stop training at the next
        optimizer-step boundary, with the mid-epoch state in ``last.pt``. ``augment`` transforms
        every training batch; a :class:`~har_bench.training.schedules.StepSchedule` is stepped after
        every optimizer step, any other scheduler once per epoch. ``prepare`` turns a stored batch
        into the model's input (when there is no ``augment``, which then does it); ``finetune``
        freezes parts of the model per epoch and sets the backbone's rate.
        """
        if len(X_train) == 0:
            raise UserError("the training split has no windows")
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        X_train, y_train = X_train.to(self.device), y_train.to(self.device)
        log.info(
            "training on %s, precision %s (trainer.precision=%s)",
            self.device,
            precision_name(self.amp_dtype),
            self.precision,
        )
        session = Session.start(
            self,
            model,
            len(X_train),
            optimizer_factory,
            scheduler_factory,
            seed=seed,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            augment=augment,
            prepare=prepare,
            finetune=finetune,
        )
        state, tracker = session.state, session.state.tracker
        with deferred_stop() as stop:
            for epoch in range(state.epoch + 1, self.max_epochs + 1):
                if tracker.stopped_early:
                    break
                session.train_epoch(epoch, X_train, y_train, stop)
                self._end_epoch(session, epoch, X_train, X_val, y_val, on_epoch_end)
                if distributed.agree(torch.zeros((), device=self.device), stop.requested)[1]:
                    raise Interrupted(stop.signum_or_term, state.describe())
        return session.result(len(X_train))

    def _end_epoch(
        self,
        session: Session,
        epoch: int,
        X_train: torch.Tensor,
        X_val: torch.Tensor,
        y_val: torch.Tensor,
        on_epoch_end: Callable[[dict[str, float]], None] | None,
    ) -> None:
        """After an epoch's steps: validate, track the best epoch, commit the checkpoint, log."""
        state, tracker = session.state, session.state.tracker
        distributed.sync_buffers(session.model)  # torchrun: every rank validates one model
        lr = session.optimizer.param_groups[0]["lr"]
        if session.scheduler is not None and not session.step_scheduler:
            session.scheduler.step()
        progress = state.progress
        assert progress is not None
        # Measured before each validation, or once at the end when nothing is validated (the
        # statistics depend only on the averaged weights of that moment). Part of making the
        # weights: counted as training time.
        if session.ema is not None and (len(X_val) or epoch == self.max_epochs):
            t_bn = time.perf_counter()
            with record_function("ema_batchnorm"):
                recalibrate_batchnorm(
                    session.ema.module, X_train, self.eval_batch_size, session.prepare
                )
            progress.train_seconds += time.perf_counter() - t_bn
        t_val = time.perf_counter()
        model = session.eval_model
        with record_function("evaluate"):
            val = self.evaluate(model, X_val, y_val, session.prepare) if len(X_val) else None
        row = progress.history_row(val, lr, time.perf_counter() - t_val)
        metric = row[self.monitor] if val else None
        improved = tracker.update(epoch, metric, lambda: _cpu_copy(model.state_dict()))
        state.end_epoch(row)
        # torchrun: GPU arithmetic may differ by a hair between ranks; a rank leaving the loop
        # alone would hang the others.
        no_signal = torch.zeros((), device=self.device)
        tracker.stopped_early = distributed.agree(no_signal, tracker.stopped_early)[1]
        if session.checkpoint_dir is not None:
            best = tracker.best_checkpoint() if improved else None
            commit_epoch(session.checkpoint_dir, session.checkpoint(), best)
        log_epoch(row, self.max_epochs, improved)
        if on_epoch_end is not None:
            on_epoch_end(row)
        if tracker.stopped_early and epoch < self.max_epochs:
            log.info(
                "early stopping: %s did not improve for %d epochs", self.monitor, self.patience
            )


def check_settings(trainer: Trainer) -> None:
    """Every ``trainer.*`` setting, checked before any data is read."""
    for name in ("max_epochs", "batch_size", "accumulate_grad_batches"):
        check_int(f"trainer.{name}", getattr(trainer, name))
    for name in (
        "eval_batch_size",
        "limit_train_batches",
        "limit_eval_batches",
        "num_threads",
        "patience",
    ):
        check_optional_int(f"trainer.{name}", getattr(trainer, name))
    BestTracker(trainer.monitor)  # validates the name now, before any data is read
    for name in ("drop_last", "progress", "compile"):
        if not isinstance(getattr(trainer, name), bool):
            raise UserError(
                f"trainer.{name}={getattr(trainer, name)!r} is invalid: expected true or false"
            )
    for name, value, ok, expected in (
        ("grad_clip_norm", trainer.grad_clip_norm, lambda v: v > 0, "null or > 0"),
        ("label_smoothing", trainer.label_smoothing, lambda v: 0 <= v < 1, "0 <= x < 1"),
        ("ema_decay", trainer.ema_decay, lambda v: 0 < v < 1, "null or 0 < x < 1"),
    ):
        if value is not None and not (isinstance(value, int | float) and ok(value)):
            raise UserError(f"trainer.{name}={value!r} is invalid: expected {expected}")


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def log_epoch(row: dict[str, float], max_epochs: int, improved: bool) -> None:
    """The one log line per epoch (a star marks a new best)."""
    if math.isnan(row["val_loss"]):  # no validation part (split.val_fraction=0, a refit)
        val, star = "no validation", ""
    else:
        val = "val_loss {:.4f}  val_acc {:.4f}  val_f1 {:.4f}".format(
            row["val_loss"], row["val_accuracy"], row["val_macro_f1"]
        )
        star = "  *" if improved else ""
    log.info(
        "epoch %d/%d  train_loss %.4f  train_acc %.4f  %s  %.1fs  %.0f samples/s%s",
        row["epoch"],
        max_epochs,
        row["train_loss"],
        row["train_accuracy"],
        val,
        row["epoch_seconds"],
        row["samples_per_second"],
        star,
    )
