"""One fit's objects and the training they do between two validations.

A :class:`Session` holds what :meth:`har_bench.training.engine.Trainer.fit` trains with (the model,
its optimizer, scheduler, grad scaler, averaged weights, per-batch transforms and the loop state);
:meth:`Session.train_epoch` runs one epoch of optimizer steps and :meth:`Session.optimizer_step` is
the one place where a batch is transformed, its loss computed and the weights moved.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.profiler import record_function

from har_bench.core.errors import UserError
from har_bench.training import distributed
from har_bench.training.augment import Augment
from har_bench.training.checkpoint import (
    LAST_CHECKPOINT,
    restore_training,
    save_checkpoint,
    training_state,
)
from har_bench.training.early_stopping import BestTracker
from har_bench.training.ema import moving_average
from har_bench.training.finetune import FineTune
from har_bench.training.image_transforms import ImageAugment
from har_bench.training.schedules import StepSchedule
from har_bench.training.signals import Interrupted, StopRequest
from har_bench.training.train_state import TrainState

log = logging.getLogger(__name__)

# A stored batch -> the model's input (images: uint8 -> resized, normalised float); None = as is.
Prepare = Callable[[torch.Tensor], torch.Tensor] | None


class Settings(Protocol):
    """What a session reads of its :class:`har_bench.training.engine.Trainer`."""

    device: torch.device
    amp_dtype: torch.dtype | None
    max_epochs: int
    accumulate_grad_batches: int
    label_smoothing: float
    grad_clip_norm: float | None
    ema_decay: float | None
    monitor: str
    patience: int | None
    progress: bool
    compile: bool

    def autocast(self) -> Any: ...
    def train_batches(self, n: int, generator: torch.Generator) -> list[torch.Tensor]: ...
    def steps_per_epoch(self, n: int) -> int: ...


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""

    HINT = "try a lower optimizer.lr or trainer.precision=32"

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"training diverged: loss={loss} at epoch {epoch}, optimizer step {step}; {self.HINT}"
        )


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
class Session:
    """The objects one :meth:`har_bench.training.engine.Trainer.fit` trains with."""

    trainer: Settings
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
    # Whether the compiled training step has run once (see :meth:`forward_backward`).
    compile_checked: bool = True

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
        trainer: Settings,
        model: nn.Module,
        n_train: int,
        optimizer_factory: Callable[..., torch.optim.Optimizer],
        scheduler_factory: Callable[..., Any] | None,
        *,
        seed: int,
        checkpoint_dir: Path | None,
        resume: Mapping[str, Any] | None,
        augment: Augment | ImageAugment | None,
        prepare: Prepare,
        finetune: FineTune | None,
    ) -> Session:
        """The optimizer, scheduler, scaler, averaged weights and loop state of a fit, restored
        from ``resume`` when given, the model wrapped for torchrun."""
        model.to(trainer.device)
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
        session = cls(
            trainer=trainer,
            model=model,
            train_model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            state=state,
            checkpoint_dir=checkpoint_dir,
            augment=augment,
            ema=ema,
            step_scheduler=step_scheduler,
            prepare=prepare,
            finetune=finetune,
        )
        if resume is not None:
            # Extras first: a run saved with other plug-ins is named as such, before its
            # optimizer groups fail to fit.
            session.restore_extras(resume)
            restore_training(resume, model, optimizer, scheduler, scaler, state)
            log.info("resumed at %s", state.describe())
        if finetune is not None:  # DDP registers the parameters that train when it wraps
            finetune.apply(model, state.epoch + 1)
        session.wrap()
        return session

    def wrap(self) -> None:
        """The module the training step calls: DDP under torchrun (after a restore, which it
        broadcasts from rank 0), compiled with ``trainer.compile``."""
        self.train_model = distributed.wrap(self.model)
        if self.trainer.compile:
            # Static shapes: the last, shorter batch of an epoch gets a graph of its own rather
            # than turning every batch into dynamic-shape code.
            self.train_model = torch.compile(self.train_model, dynamic=False)
            self.compile_checked = False

    def forward_backward(
        self, xb: torch.Tensor, target: torch.Tensor, window_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and loss of one micro-batch, its gradient accumulated. torch.compile compiles
        the forward and backward graphs at the first step, so that is where it fails on a
        machine without a working compiler: the step is redone eagerly and training goes on so.
        """
        if self.compile_checked:
            return self._forward_backward(xb, target, window_samples)
        self.compile_checked = True
        try:
            return self._forward_backward(xb, target, window_samples)
        except UserError:
            raise  # the model refusing its input is not the compiler's failure
        except Exception as e:  # any compiler failure; the eager module is the fallback
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("trainer.compile: torch.compile failed (%s); training eagerly", reason)
            self.optimizer.zero_grad(set_to_none=True)
            self.train_model = distributed.wrap(self.model)
            return self._forward_backward(xb, target, window_samples)

    def _forward_backward(
        self, xb: torch.Tensor, target: torch.Tensor, window_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        trainer = self.trainer
        with record_function("forward"), trainer.autocast():
            logits = self.train_model(xb)
            # Sum / window size: the gradient of a window equals that of one big batch.
            loss = F.cross_entropy(
                logits.float(), target, reduction="sum", label_smoothing=trainer.label_smoothing
            )
            loss = loss / window_samples
        with record_function("backward"):
            self.scaler.scale(loss).backward()
        return logits, loss

    def result(self, train_windows: int) -> FitResult:
        state, tracker = self.state, self.state.tracker
        return FitResult(
            history=state.history,
            best_epoch=tracker.best_epoch,
            best_metric=tracker.best_metric,
            # Patience running out on the last epoch stopped nothing.
            stopped_early=tracker.stopped_early and state.epoch < self.trainer.max_epochs,
            train_seconds_per_epoch=[float(r["train_seconds"]) for r in state.history],
            best_state=tracker.best_state,
            weights="ema" if self.ema is not None else "model",
            train_windows=train_windows,
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

    def train_epoch(self, epoch: int, X: torch.Tensor, y: torch.Tensor, stop: StopRequest) -> None:
        """One epoch of optimizer steps, from where a resumed checkpoint left it."""
        trainer = self.trainer
        self.train_model.train()
        if self.finetune is not None and self.finetune.apply(self.model, epoch):
            log.info(
                "epoch %d: backbone unfrozen, %s parameters train",
                epoch,
                f"{self.finetune.trainable_params(self.model, epoch):,}",
            )
            self.wrap()  # DDP and compile again, for the new parameters
        self.state.epoch_generator = self.state.generator.get_state()
        batches = trainer.train_batches(len(X), self.state.generator)
        progress = self.state.start_epoch(epoch, len(batches))
        correct = progress.correct.to(trainer.device)
        loss_sum = progress.loss_sum.to(trainer.device)
        t0 = time.perf_counter() - progress.train_seconds

        def record(batches_done: int) -> None:
            progress.batches_done = batches_done
            progress.train_seconds = time.perf_counter() - t0
            progress.correct = correct.detach().cpu().clone()
            progress.loss_sum = loss_sum.detach().cpu().clone()

        with progress_bar(trainer.progress) as bar:
            task = bar.add_task(
                f"epoch {epoch}/{trainer.max_epochs}",
                total=len(batches),
                completed=progress.batches_done,
                info="",
            )
            no_signal = torch.zeros((), device=trainer.device)
            _, stop_now = distributed.agree(no_signal, stop.requested)
            step_size = trainer.accumulate_grad_batches
            for first in range(progress.batches_done, len(batches), step_size):
                if stop_now:
                    record(first)
                    raise Interrupted(stop.signum_or_term, self.save_interrupted())
                window = batches[first : first + step_size]
                loss, n_correct, stop_now = self.optimizer_step(X, y, window, stop, epoch)
                window_samples = sum(len(b) for b in window)
                correct += n_correct
                progress.seen += window_samples
                loss_sum += loss * window_samples
                bar.update(task, advance=len(window), info=f"loss {float(loss):.4f}")
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        record(len(batches))

    def optimizer_step(
        self,
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
        trainer = self.trainer
        window_samples = sum(len(b) for b in window)
        window_loss = torch.zeros((), device=trainer.device)
        correct = torch.zeros((), dtype=torch.long, device=trainer.device)
        # The record_function labels name the parts of a step for torch.profiler
        # (benchmarks/throughput.py); without a profiler they cost a few microseconds.
        for idx in window:
            with record_function("augment"):
                idx = idx.to(trainer.device)
                xb, target = X[idx], y[idx]
                if self.augment is not None:
                    xb, target = self.augment(xb, target)  # soft targets [B, K] after mixup
                elif self.prepare is not None:
                    xb = self.prepare(xb)
            logits, loss = self.forward_backward(xb, target, window_samples)
            window_loss += loss.detach()
            labels = target.argmax(1) if target.ndim == 2 else target
            correct += (logits.argmax(1) == labels).sum()
        # One host sync per optimizer step: catches divergence before it is stepped in. Under
        # torchrun the ranks agree on it (and on stopping) here.
        with record_function("host_sync"):
            loss_value, stop_now = distributed.agree(window_loss, stop.requested)
        if not math.isfinite(loss_value):
            raise DivergedError(epoch, self.state.step, loss_value)
        with record_function("optimizer"):
            if trainer.grad_clip_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), trainer.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.step_scheduler:
                self.scheduler.step()
        self.state.step += 1
        if self.ema is not None:
            with record_function("ema"):
                self.ema.update_parameters(self.model)
        return window_loss, correct, stop_now
