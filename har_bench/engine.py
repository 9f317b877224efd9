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
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from har_bench import distributed
from har_bench._fs import atomic_write
from har_bench.metrics import macro_f1

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
DEVICES = ("auto", "cpu", "cuda")
MONITORS = {"val_macro_f1": "max", "val_accuracy": "max", "val_loss": "min"}
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
# best.pt is replaced only after last.pt names its epoch (see Trainer._end_epoch_checkpoints).
_BEST_PENDING = "best.pt.pending"


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"training diverged: loss={loss} at epoch {epoch}, optimizer step {step}; "
            "try a lower optimizer.lr or trainer.precision=32"
        )


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped the run.

    ``saved`` says what ``checkpoints/last.pt`` holds when :meth:`Trainer.fit` wrote it on the
    way out (None when the signal arrived outside training).
    """

    def __init__(self, signum: int, saved: str | None = None) -> None:
        self.signum = int(signum)
        self.saved = saved
        super().__init__(self.signal_name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        # The shell convention for "killed by signal N"; 130 for Ctrl-C, 143 for SIGTERM.
        return 128 + self.signum


class _StopRequest:
    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signum_or_term(self) -> int:
        # Under torchrun a rank may stop because another rank was signalled.
        return self.signum if self.signum is not None else signal.SIGTERM


@contextmanager
def _signal_handlers(handler: Callable[[int, Any], None]) -> Iterator[None]:
    # signal.signal only works in the main thread; elsewhere the defaults stay.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted`.

    SIGTERM's default would end the process without running any cleanup, leaving
    ``status: running`` behind; as an exception it gets the same bookkeeping as Ctrl-C.
    """

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    with _signal_handlers(handler):
        yield


@contextmanager
def deferred_stop() -> Iterator[_StopRequest]:
    """The first SIGINT/SIGTERM is only noted, so training stops between optimizer steps.

    An exception raised inside ``optimizer.step()`` could leave parameters half updated; the
    loop checks the request at step boundaries instead. A second signal raises at once.
    """
    request = _StopRequest()

    def handler(signum: int, frame: Any) -> None:
        if request.signum is not None:
            raise Interrupted(signum)
        request.signum = signum
        log.warning(
            "%s received: saving and stopping after the current optimizer step "
            "(send it again to stop at once)",
            signal.Signals(signum).name,
        )

    with _signal_handlers(handler):
        yield request


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
        resume: the run directory to continue (``trainer.resume``); the CLI resolves ``last``
            and points the run directory at it, and ``run()`` loads its checkpoints.
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
        resume: str | None = None,
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
        self.resume = str(resume) if resume not in (None, "") else None
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
        # Under torchrun: this process's share of the epoch (every rank drew the same perm).
        perm = distributed.shard(perm)
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
            "macro_f1": macro_f1(y.numpy(), pred.numpy()),
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
        resume: Mapping[str, Any] | None = None,
    ) -> FitResult:
        """Train ``model``; keep the best-on-validation weights (never looks at a test set).

        ``resume`` is a state from :func:`load_resume_state`: training continues exactly where
        that checkpoint left off (model, optimizer, scheduler, scaler, RNGs, batch order,
        early-stopping state, history), mid-epoch included.

        SIGINT/SIGTERM stop training at the next optimizer-step boundary: ``last.pt`` then
        holds that mid-epoch state and :class:`Interrupted` is raised.
        """
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
        loop = _LoopState(generator=generator)
        if resume is not None:
            self._restore(resume, model, optimizer, scheduler, scaler, generator, loop)
        # DDP under torchrun (after the restore: it broadcasts rank 0's weights); only the
        # training step goes through it, everything else uses the plain module.
        train_model = distributed.wrap(model)
        have_val = len(X_val) > 0

        with deferred_stop() as stop:
            for epoch in range(loop.epoch + 1, self.max_epochs + 1):
                if loop.stopped_early:
                    break
                self._train_epoch(
                    epoch,
                    train_model,
                    X_train,
                    y_train,
                    optimizer,
                    scaler,
                    generator,
                    loop,
                    stop,
                    lambda: self._state(model, optimizer, scheduler, scaler, loop),
                    checkpoint_dir,
                )
                distributed.sync_buffers(model)  # torchrun: every rank validates one model
                lr = optimizer.param_groups[0]["lr"]
                if scheduler is not None:
                    scheduler.step()
                row = self._end_epoch(model, X_val, y_val, have_val, lr, loop)
                # torchrun: every rank validates the same model, but GPU arithmetic may differ
                # by a hair; a rank leaving the loop alone would hang the others.
                loop.stopped_early = distributed.agree(
                    torch.zeros((), device=self.device), loop.stopped_early
                )[1]
                improved = loop.best_epoch == epoch
                if checkpoint_dir is not None:
                    self._save_epoch(
                        checkpoint_dir,
                        model,
                        improved,
                        self._state(model, optimizer, scheduler, scaler, loop),
                        loop,
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
                if loop.stopped_early:
                    log.info(
                        "early stopping: %s did not improve for %d epochs",
                        self.monitor,
                        self.patience,
                    )
                if distributed.agree(torch.zeros((), device=self.device), stop.requested)[1]:
                    raise Interrupted(
                        stop.signum_or_term,
                        f"epoch {epoch} complete (optimizer step {loop.step})",
                    )

        return FitResult(
            history=loop.history,
            best_epoch=loop.best_epoch,
            best_metric=loop.best_metric,
            stopped_early=loop.stopped_early,
            train_seconds_per_epoch=[float(r["train_seconds"]) for r in loop.history],
            best_state=loop.best_state,
        )

    def _train_epoch(
        self,
        epoch: int,
        model: nn.Module,
        X_train: torch.Tensor,
        y_train: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        generator: torch.Generator,
        loop: _LoopState,
        stop: _StopRequest,
        state: Callable[[], dict[str, Any]],
        checkpoint_dir: Path | None,
    ) -> None:
        model.train()
        # Kept so a mid-epoch checkpoint can redraw this epoch's batch order on resume.
        loop.epoch_generator = generator.get_state()
        batches = self.train_batches(len(X_train), generator)
        part = loop.partial
        if part is None or part["epoch"] != epoch:
            part = loop.partial = {
                "epoch": epoch,
                "batches_done": 0,
                "num_batches": len(batches),
                "seen": 0,
                "correct": torch.zeros((), dtype=torch.long),
                "loss_sum": torch.zeros(()),
                "train_seconds": 0.0,
            }
        correct = part["correct"].to(self.device)
        loss_sum = part["loss_sum"].to(self.device)
        seen = part["seen"]
        t0 = time.perf_counter() - part["train_seconds"]
        with self._progress() as bar:
            task = bar.add_task(
                f"epoch {epoch}/{self.max_epochs}",
                total=len(batches),
                completed=part["batches_done"],
                info="",
            )
            _, stop_now = distributed.agree(torch.zeros((), device=self.device), stop.requested)
            for w in range(part["batches_done"], len(batches), self.accumulate_grad_batches):
                if stop_now:
                    part.update(
                        batches_done=w,
                        seen=seen,
                        correct=correct.detach().cpu().clone(),
                        loss_sum=loss_sum.detach().cpu().clone(),
                        train_seconds=time.perf_counter() - t0,
                    )
                    saved = f"epoch {epoch}, {w} of {len(batches)} batches done (optimizer step {loop.step})"
                    if checkpoint_dir is not None:
                        save_checkpoint(checkpoint_dir / LAST_CHECKPOINT, state())
                        log.warning("saved %s in %s", saved, checkpoint_dir / LAST_CHECKPOINT)
                    else:
                        saved = None
                    raise Interrupted(stop.signum_or_term, saved)
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
                # Under torchrun the ranks agree on it (and on stopping) here.
                wl, stop_now = distributed.agree(window_loss, stop.requested)
                if not math.isfinite(wl):
                    raise DivergedError(epoch, loop.step, wl)
                loss_sum += window_loss * window_samples
                if self.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                loop.step += 1
                bar.update(task, info=f"loss {wl:.4f}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        part.update(
            batches_done=len(batches),
            seen=seen,
            correct=correct.detach().cpu(),
            loss_sum=loss_sum.detach().cpu(),
            train_seconds=time.perf_counter() - t0,
        )

    def _end_epoch(
        self,
        model: nn.Module,
        X_val: torch.Tensor,
        y_val: torch.Tensor,
        have_val: bool,
        lr: float,
        loop: _LoopState,
    ) -> dict[str, float]:
        """Validate, append the history row and update the early-stopping state."""
        part = loop.partial
        assert part is not None
        loop.partial = None
        seen = part["seen"]
        t_train = part["train_seconds"]
        t_val = time.perf_counter()
        val = self.evaluate(model, X_val, y_val) if have_val else None
        row = {
            "epoch": part["epoch"],
            "train_loss": float(part["loss_sum"]) / max(seen, 1),
            "train_accuracy": int(part["correct"]) / max(seen, 1),
            "val_loss": val["loss"] if val else float("nan"),
            "val_accuracy": val["accuracy"] if val else float("nan"),
            "val_macro_f1": val["macro_f1"] if val else float("nan"),
            "lr": lr,
            "train_seconds": t_train,
            "epoch_seconds": t_train + time.perf_counter() - t_val,
            "samples_per_second": seen / t_train if t_train > 0 else float("nan"),
        }
        loop.history.append(row)
        loop.epoch = part["epoch"]
        metric = row[self.monitor] if have_val else None
        best = loop.best_metric
        if (
            metric is None
            or best is None
            or (metric > best if MONITORS[self.monitor] == "max" else metric < best)
        ):
            loop.best_metric, loop.best_epoch, loop.bad_epochs = metric, loop.epoch, 0
            loop.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            loop.bad_epochs += 1
        # Decided here, before last.pt is written, so a resumed run knows it had stopped.
        if self.patience is not None and have_val and loop.bad_epochs >= self.patience:
            loop.stopped_early = True
        return row

    # -- checkpoints ---------------------------------------------------------------------------

    def _state(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        loop: _LoopState,
    ) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: the content of ``last.pt``."""
        part = loop.partial
        if part is not None and part["batches_done"] >= part["num_batches"]:
            part = None  # the epoch's training is done; only its validation was pending
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "epoch": loop.epoch,
            "step": loop.step,
            "history": loop.history,
            "best_epoch": loop.best_epoch,
            "best_metric": loop.best_metric,
            "bad_epochs": loop.bad_epochs,
            "stopped_early": loop.stopped_early,
            "monitor": self.monitor,
            # Mid-epoch: the generator as the interrupted epoch began, to redraw its batches.
            "generator": loop.epoch_generator if part is not None else loop.generator_now(),
            "partial_epoch": part,
            "rng": rng_state(),
        }

    def _save_epoch(
        self,
        checkpoint_dir: Path,
        model: nn.Module,
        improved: bool,
        state: dict[str, Any],
        loop: _LoopState,
    ) -> None:
        """last.pt every epoch, best.pt when the monitored metric improved.

        Two files cannot be replaced at once, and a crash between them must not leave a
        best.pt that last.pt does not know about (resume would then keep the wrong "best"
        weights). So a new best goes to ``best.pt.pending`` first, last.pt (naming the best
        epoch) is replaced next, and only then the pending file becomes best.pt;
        :func:`load_resume_state` completes or discards a pending file left by a crash.
        """
        pending = checkpoint_dir / _BEST_PENDING
        if improved:
            save_checkpoint(
                pending,
                {
                    "model": loop.best_state,
                    "epoch": loop.best_epoch,
                    "monitor": self.monitor,
                    "metric": loop.best_metric,
                },
            )
        save_checkpoint(checkpoint_dir / LAST_CHECKPOINT, state)
        if improved:
            os.replace(pending, checkpoint_dir / BEST_CHECKPOINT)

    def _restore(
        self,
        state: Mapping[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        generator: torch.Generator,
        loop: _LoopState,
    ) -> None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(
                f"trainer.resume: the checkpoint was saved from a different model ({first}); "
                "resume with the run's own model settings"
            ) from None
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:
            raise ValueError(
                f"trainer.resume: the checkpoint's optimizer state does not fit ({e})"
            ) from None
        if (scheduler is None) != (state["scheduler"] is None):
            raise ValueError(
                "trainer.resume: the checkpoint was saved "
                + ("without" if state["scheduler"] is None else "with")
                + " a learning-rate scheduler; resume with the run's own scheduler setting"
            )
        if scheduler is not None:
            # load_state_dict would silently bring back the old horizon, so a cosine schedule
            # resumed with more epochs would climb back up from lr 0: refuse instead.
            old, new = state["scheduler"].get("T_max"), getattr(scheduler, "T_max", None)
            if old is not None and new is not None and old != new:
                raise ValueError(
                    f"trainer.resume: the scheduler's T_max (= trainer.max_epochs) was {old}, "
                    f"now {new}; a cosine schedule cannot be stretched mid-run. Resume with "
                    f"trainer.max_epochs={old}, or use scheduler=none/step to add epochs"
                )
            scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        if state.get("monitor", self.monitor) != self.monitor:
            raise ValueError(
                f"trainer.resume: the run monitored {state['monitor']!r}, not {self.monitor!r}"
            )
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        loop.epoch = int(state["epoch"])
        loop.step = int(state["step"])
        loop.history = [dict(r) for r in state["history"]]
        loop.best_epoch = int(state["best_epoch"])
        loop.best_metric = state["best_metric"]
        loop.bad_epochs = int(state["bad_epochs"])
        loop.stopped_early = bool(state.get("stopped_early", False))
        loop.best_state = dict(state.get("best_state") or {})
        loop.partial = dict(state["partial_epoch"]) if state.get("partial_epoch") else None
        where = (
            f"epoch {loop.partial['epoch']} after {loop.partial['batches_done']} of "
            f"{loop.partial['num_batches']} batches"
            if loop.partial
            else f"the end of epoch {loop.epoch}"
        )
        log.info("resumed at %s (optimizer step %d)", where, loop.step)


@dataclass
class _LoopState:
    """What fit() carries from one epoch to the next, and what last.pt must hold of it."""

    epoch: int = 0  # last completed epoch
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float | None = None
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    bad_epochs: int = 0
    stopped_early: bool = False
    # The epoch under way: batches done and running sums (None between epochs).
    partial: dict[str, Any] | None = None
    epoch_generator: torch.Tensor | None = None
    generator: torch.Generator | None = None

    def generator_now(self) -> torch.Tensor | None:
        return self.generator.get_state() if self.generator is not None else None


CHECKPOINT_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, as plain types and tensors so the
    checkpoint loads with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def load_resume_state(checkpoint_dir: Path) -> dict[str, Any]:
    """``last.pt`` plus the best-on-validation weights it refers to, for ``fit(resume=...)``."""
    checkpoint_dir = Path(checkpoint_dir)
    last = checkpoint_dir / LAST_CHECKPOINT
    if not last.is_file():
        raise FileNotFoundError(
            f"trainer.resume: {last} does not exist; the run stopped before its first "
            "checkpoint, so start it again without trainer.resume"
        )
    state = _load_checkpoint(last)
    missing = [
        k for k in ("model", "optimizer", "epoch", "history", "generator", "rng") if k not in state
    ]
    if missing:
        raise ValueError(
            f"trainer.resume: {last} has no {', '.join(missing)}: it is not a resumable "
            "har-bench checkpoint"
        )
    best_epoch = int(state["best_epoch"])
    pending = checkpoint_dir / _BEST_PENDING
    if pending.is_file():
        try:
            pending_epoch = _load_checkpoint(pending)["epoch"]
        except ValueError:
            pending_epoch = None
        if pending_epoch == best_epoch:
            os.replace(pending, checkpoint_dir / BEST_CHECKPOINT)  # the crash hit mid-commit
        else:
            pending.unlink()
    state["best_state"] = {}
    if best_epoch >= 1:
        best = _load_checkpoint(checkpoint_dir / BEST_CHECKPOINT)
        if best.get("epoch") != best_epoch:
            raise ValueError(
                f"trainer.resume: {checkpoint_dir / BEST_CHECKPOINT} is from epoch "
                f"{best.get('epoch')} but {last} says the best epoch is {best_epoch}"
            )
        state["best_state"] = best["model"]
    return state


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"trainer.resume: {path} cannot be read ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})"
        ) from None


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """torch.save to a temp file, then rename: a crash never leaves half a checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


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
