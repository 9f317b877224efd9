"""The training loop: one explicit loop over in-memory tensors.

HAR windows are tiny (9 x 128 floats), so the per-sample ``Dataset.__getitem__`` + collate path
of a DataLoader costs more than the forward pass. Windows are held as tensors on the device and
batches are taken by indexing with a shuffled permutation.

What the loop carries between steps is a :class:`~har_bench.train_state.TrainState`; the
checkpoint files are :mod:`har_bench.checkpoint`'s, the best-epoch bookkeeping
:mod:`har_bench.early_stopping`'s and the signal handling :mod:`har_bench.signals`'.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from har_bench import distributed
from har_bench.augment import Augment
from har_bench.checkpoint import (
    LAST_CHECKPOINT,
    commit_epoch,
    restore_training,
    save_checkpoint,
    training_state,
)
from har_bench.early_stopping import BestTracker
from har_bench.ema import moving_average, recalibrate_batchnorm
from har_bench.errors import UserError, check_int, check_optional_int
from har_bench.finetune import FineTune
from har_bench.image_transforms import ImageAugment
from har_bench.metrics import latency_ms, macro_f1
from har_bench.schedules import StepSchedule
from har_bench.signals import Interrupted, StopRequest, deferred_stop
from har_bench.train_state import TrainState

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
# A stored batch -> the model's input (images: uint8 -> resized, normalised float); None = as is.
Prepare = Callable[[torch.Tensor], torch.Tensor] | None
DEVICES = ("auto", "cpu", "cuda")


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""

    HINT = "try a lower optimizer.lr or trainer.precision=32"

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"training diverged: loss={loss} at epoch {epoch}, optimizer step {step}; {self.HINT}"
        )


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
    """The autocast dtype, or None for full fp32.

    ``auto`` is fp16 mixed on CUDA and fp32 on CPU: bf16 on a CPU without native bf16 units is
    slower than fp32, so it is used there only when asked for.
    """
    precision = str(precision)
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision!r} is invalid: expected one of {PRECISIONS}")
    if precision == "auto":
        precision = "16-mixed" if device.type == "cuda" else "32"
    return {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]


def progress_bar(enabled: bool) -> Any:
    """A rich progress bar for one epoch's batches."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        transient=True,
        # Off when output goes to a file or pipe: the log line per epoch says it all there.
        disable=not (enabled and Console().is_terminal),
    )


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_metric: float | None
    stopped_early: bool
    train_seconds_per_epoch: list[float]
    best_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    # Which weights were validated, kept as best and handed back: "ema" or "model".
    weights: str = "model"
    train_windows: int = 0


@dataclass
class _Session:
    """The objects one :meth:`Trainer.fit` trains with."""

    model: nn.Module  # the plain module: evaluation and checkpoints
    train_model: nn.Module  # the same, DDP-wrapped under torchrun, for the training step only
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    state: TrainState
    checkpoint_dir: Path | None
    augment: Augment | ImageAugment | None
    ema: AveragedModel | None
    step_scheduler: bool  # stepped after every optimizer step, not every epoch
    prepare: Prepare = None
    finetune: FineTune | None = None

    @property
    def eval_model(self) -> nn.Module:
        """The weights validated and kept as best: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self) -> dict[str, Any]:
        extra = {
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "augment": self.augment.state_dict() if self.augment is not None else None,
            "finetune": self.finetune.state_dict() if self.finetune is not None else None,
        }
        return training_state(
            self.model, self.optimizer, self.scheduler, self.scaler, self.state, extra
        )

    @classmethod
    def start(
        cls,
        trainer: Trainer,
        model: nn.Module,
        n_train: int,
        optimizer_factory: Callable[..., torch.optim.Optimizer],
        scheduler_factory: Callable[..., Any] | None,
        seed: int,
        augment: Augment | ImageAugment | None,
        finetune: FineTune | None = None,
    ) -> _Session:
        """The optimizer, scheduler, scaler, averaged weights and loop state of a new fit."""
        if finetune is None:
            optimizer = optimizer_factory(model.parameters())
        else:  # head and backbone groups, the backbone at its own rate
            optimizer = optimizer_factory(finetune.parameter_groups(model))
            finetune.configure(optimizer)
        tracker = BestTracker(trainer.monitor, trainer.patience)
        step_scheduler = isinstance(scheduler_factory, StepSchedule)
        if isinstance(scheduler_factory, StepSchedule):
            scheduler = scheduler_factory(optimizer, trainer.steps_per_epoch(n_train))
            tracker.patience_after = math.ceil(scheduler_factory.warmup)
        else:
            scheduler = scheduler_factory(optimizer) if scheduler_factory is not None else None
        scaler = torch.amp.GradScaler(
            trainer.device.type, enabled=trainer.amp_dtype == torch.float16
        )
        state = TrainState(tracker=tracker, generator=torch.Generator().manual_seed(seed))
        ema = moving_average(model, trainer.ema_decay) if trainer.ema_decay is not None else None
        return cls(
            model=model,
            train_model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            state=state,
            checkpoint_dir=None,
            augment=augment,
            ema=ema,
            step_scheduler=step_scheduler,
            finetune=finetune,
        )

    def restore_extras(self, checkpoint: Mapping[str, Any]) -> None:
        settings = {
            "ema": "trainer.ema_decay",
            "augment": "augment",
            "finetune": "model.freeze / model.backbone_lr",
        }
        for name, part in (
            ("ema", self.ema),
            ("augment", self.augment),
            ("finetune", self.finetune),
        ):
            saved = checkpoint.get(name)
            if (part is None) != (saved is None):
                raise UserError(
                    f"trainer.resume: the checkpoint was saved "
                    f"{'without' if saved is None else 'with'} {name}; resume with the run's "
                    f"own {settings[name]} setting"
                )
            if part is not None:
                part.load_state_dict(saved)

    def save_interrupted(self) -> str | None:
        """Write the mid-epoch state to ``last.pt``; what it holds, or None without a dir."""
        if self.checkpoint_dir is None:
            return None
        saved = self.state.describe()
        save_checkpoint(self.checkpoint_dir / LAST_CHECKPOINT, self.checkpoint())
        log.warning("saved %s in %s", saved, self.checkpoint_dir / LAST_CHECKPOINT)
        return saved


@dataclass
class Trainer:
    """Fits a classifier on in-memory windows with AMP, gradient accumulation and early stopping.

    Per-batch transforms (augmentation, mixup), loss variants and weight averaging plug in at
    one place, :meth:`_optimizer_step`: a batch is transformed and its loss computed there, and
    averaged weights are updated right after the optimizer steps.

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

    def __post_init__(self) -> None:
        check_settings(self)
        self.eval_batch_size = self.eval_batch_size or self.batch_size
        self.precision = str(self.precision)
        self.device = resolve_device(str(self.device))
        self.amp_dtype = resolve_precision(self.precision, self.device)

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

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
            with self.autocast():
                out.append(model(xb).float().cpu())
        if not out:
            return torch.empty(0, 0)
        return torch.cat(out)

    def evaluate(
        self, model: nn.Module, X: torch.Tensor, y: torch.Tensor, prepare: Prepare = None
    ) -> dict[str, Any]:
        """Loss, accuracy, macro-F1 and predictions on (X, y)."""
        logits = self.predict(model, X, prepare)
        y = y[: len(logits)].cpu()
        if len(y) == 0:
            nan = float("nan")
            empty = y.numpy()
            return {"loss": nan, "accuracy": nan, "macro_f1": nan, "y_true": empty, "y_pred": empty}
        pred = logits.argmax(1)
        return {
            "loss": float(F.cross_entropy(logits, y)),
            "accuracy": float((pred == y).float().mean()),
            "macro_f1": macro_f1(y.numpy(), pred.numpy()),
            "y_true": y.numpy(),
            "y_pred": pred.numpy(),
        }

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
        augment: Augment | ImageAugment | None = None,
        prepare: Prepare = None,
        finetune: FineTune | None = None,
    ) -> FitResult:
        """Train ``model``; keep the best-on-validation weights (never looks at a test set).

        ``resume`` is a state from :func:`har_bench.checkpoint.load_resume_state`: training
        continues exactly where that checkpoint left off, mid-epoch included.

        SIGINT/SIGTERM stop training at the next optimizer-step boundary: ``last.pt`` then
        holds that mid-epoch state and :class:`~har_bench.signals.Interrupted` is raised.

        ``augment`` transforms every training batch (see :mod:`har_bench.augment`); a
        :class:`~har_bench.schedules.StepSchedule` factory is stepped after every optimizer
        step, any other scheduler once per epoch.

        ``prepare`` turns a stored batch into the model's input (images: uint8 -> resized,
        normalised float; :mod:`har_bench.image_transforms`) for validation, and for training
        when there is no ``augment``, which then does that itself. ``finetune`` freezes and
        unfreezes parts of the model per epoch and gives the backbone its own learning rate
        (:mod:`har_bench.finetune`).
        """
        if len(X_train) == 0:
            raise UserError("the training split has no windows")
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        model.to(self.device)
        X_train, y_train = X_train.to(self.device), y_train.to(self.device)
        s = _Session.start(
            self, model, len(X_train), optimizer_factory, scheduler_factory, seed, augment, finetune
        )
        s.checkpoint_dir, s.prepare = checkpoint_dir, prepare
        state, tracker = s.state, s.state.tracker
        if resume is not None:
            # Extras first: a run saved with other plug-ins is named as such, before its
            # optimizer groups fail to fit.
            s.restore_extras(resume)
            restore_training(resume, model, s.optimizer, s.scheduler, s.scaler, state)
            log.info("resumed at %s", state.describe())
        if finetune is not None:  # DDP registers the parameters that train when it wraps
            finetune.apply(model, state.epoch + 1)
        # DDP under torchrun after the restore, which it broadcasts from rank 0.
        s.train_model = distributed.wrap(model)
        no_signal = torch.zeros((), device=self.device)

        with deferred_stop() as stop:
            for epoch in range(state.epoch + 1, self.max_epochs + 1):
                if tracker.stopped_early:
                    break
                self._train_epoch(epoch, s, X_train, y_train, stop)
                distributed.sync_buffers(model)  # torchrun: every rank validates one model
                lr = s.optimizer.param_groups[0]["lr"]
                if s.scheduler is not None and not s.step_scheduler:
                    s.scheduler.step()

                assert state.progress is not None
                # Measured before each validation, or once at the end when nothing is
                # validated (the statistics depend only on the averaged weights of that moment).
                # Part of making the weights: counted as training time.
                if s.ema is not None and (len(X_val) or epoch == self.max_epochs):
                    t_bn = time.perf_counter()
                    recalibrate_batchnorm(s.ema.module, X_train, self.eval_batch_size, s.prepare)
                    state.progress.train_seconds += time.perf_counter() - t_bn
                t_val = time.perf_counter()
                val = self.evaluate(s.eval_model, X_val, y_val, s.prepare) if len(X_val) else None
                row = state.progress.history_row(val, lr, time.perf_counter() - t_val)
                metric = row[self.monitor] if val else None
                improved = tracker.update(
                    epoch, metric, lambda: _cpu_copy(s.eval_model.state_dict())
                )
                state.end_epoch(row)
                # torchrun: GPU arithmetic may differ by a hair between ranks; a rank leaving
                # the loop alone would hang the others.
                tracker.stopped_early = distributed.agree(no_signal, tracker.stopped_early)[1]
                if checkpoint_dir is not None:
                    best = tracker.best_checkpoint() if improved else None
                    commit_epoch(checkpoint_dir, s.checkpoint(), best)
                log_epoch(row, self.max_epochs, improved)
                if on_epoch_end is not None:
                    on_epoch_end(row)
                if tracker.stopped_early and epoch < self.max_epochs:
                    log.info(
                        "early stopping: %s did not improve for %d epochs",
                        self.monitor,
                        self.patience,
                    )
                if distributed.agree(no_signal, stop.requested)[1]:
                    raise Interrupted(stop.signum_or_term, state.describe())

        return FitResult(
            history=state.history,
            best_epoch=tracker.best_epoch,
            best_metric=tracker.best_metric,
            # Patience running out on the last epoch stopped nothing.
            stopped_early=tracker.stopped_early and state.epoch < self.max_epochs,
            train_seconds_per_epoch=[float(r["train_seconds"]) for r in state.history],
            best_state=tracker.best_state,
            weights="ema" if s.ema is not None else "model",
            train_windows=len(X_train),
        )

    def _train_epoch(
        self,
        epoch: int,
        s: _Session,
        X: torch.Tensor,
        y: torch.Tensor,
        stop: StopRequest,
    ) -> None:
        """One epoch of optimizer steps, from where a resumed checkpoint left it."""
        s.train_model.train()
        if s.finetune is not None and s.finetune.apply(s.model, epoch):
            log.info(
                "epoch %d: backbone unfrozen, %s parameters train",
                epoch,
                f"{s.finetune.trainable_params(s.model, epoch):,}",
            )
            s.train_model = distributed.wrap(s.model)  # DDP again, for the new parameters
        s.state.epoch_generator = s.state.generator.get_state()
        batches = self.train_batches(len(X), s.state.generator)
        p = s.state.start_epoch(epoch, len(batches))
        correct, loss_sum = p.correct.to(self.device), p.loss_sum.to(self.device)
        t0 = time.perf_counter() - p.train_seconds

        def record(batches_done: int) -> None:
            p.batches_done, p.train_seconds = batches_done, time.perf_counter() - t0
            p.correct, p.loss_sum = correct.detach().cpu().clone(), loss_sum.detach().cpu().clone()

        with progress_bar(self.progress) as bar:
            task = bar.add_task(
                f"epoch {epoch}/{self.max_epochs}",
                total=len(batches),
                completed=p.batches_done,
                info="",
            )
            _, stop_now = distributed.agree(torch.zeros((), device=self.device), stop.requested)
            for w in range(p.batches_done, len(batches), self.accumulate_grad_batches):
                if stop_now:
                    record(w)
                    raise Interrupted(stop.signum_or_term, s.save_interrupted())
                window = batches[w : w + self.accumulate_grad_batches]
                loss, n_correct, stop_now = self._optimizer_step(s, X, y, window, stop, epoch)
                correct += n_correct
                p.seen += sum(len(b) for b in window)
                loss_sum += loss * sum(len(b) for b in window)
                bar.update(task, advance=len(window), info=f"loss {float(loss):.4f}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        record(len(batches))

    def _optimizer_step(
        self,
        s: _Session,
        X: torch.Tensor,
        y: torch.Tensor,
        window: list[torch.Tensor],
        stop: StopRequest,
        epoch: int,
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Forward/backward over the window's micro-batches, then one optimizer step.

        Returns the window's mean loss, its correct predictions and whether any rank was asked
        to stop.
        """
        window_samples = sum(len(b) for b in window)
        window_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for idx in window:
            idx = idx.to(self.device)
            xb, target = X[idx], y[idx]
            if s.augment is not None:
                xb, target = s.augment(xb, target)  # soft targets [B, K] after mixup/CutMix
            elif s.prepare is not None:
                xb = s.prepare(xb)
            with self.autocast():
                logits = s.train_model(xb)
            # Sum / window size: the gradient of a window equals that of one big batch.
            loss = F.cross_entropy(
                logits.float(), target, reduction="sum", label_smoothing=self.label_smoothing
            )
            loss = loss / window_samples
            s.scaler.scale(loss).backward()
            window_loss += loss.detach()
            labels = target.argmax(1) if target.ndim == 2 else target
            correct += (logits.argmax(1) == labels).sum()
        # One host sync per optimizer step: catches divergence before it is stepped in. Under
        # torchrun the ranks agree on it (and on stopping) here.
        wl, stop_now = distributed.agree(window_loss, stop.requested)
        if not math.isfinite(wl):
            raise DivergedError(epoch, s.state.step, wl)
        if self.grad_clip_norm is not None:
            s.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.model.parameters(), self.grad_clip_norm)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.optimizer.zero_grad(set_to_none=True)
        s.state.step += 1
        if s.ema is not None:
            s.ema.update_parameters(s.model)
        if s.step_scheduler:
            s.scheduler.step()
        return window_loss, correct, stop_now


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
    for name, value, ok, expected in (
        ("grad_clip_norm", trainer.grad_clip_norm, lambda v: v > 0, "null or > 0"),
        ("label_smoothing", trainer.label_smoothing, lambda v: 0 <= v < 1, "0 <= x < 1"),
        ("ema_decay", trainer.ema_decay, lambda v: 0 < v < 1, "null or 0 < x < 1"),
    ):
        if value is not None and not (isinstance(value, int | float) and ok(value)):
            raise UserError(f"trainer.{name}={value!r} is invalid: expected {expected}")


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


@torch.inference_mode()
def measure_latency(
    model: nn.Module, sample: torch.Tensor, device: torch.device, repeats: int = 50, warmup: int = 5
) -> dict[str, float]:
    """Single-sample inference latency in milliseconds (p50, p95) at batch size 1, fp32."""
    model.eval().to(device)
    x = sample[:1].to(device)

    def forward() -> None:
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return latency_ms(forward, repeats, warmup)


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
