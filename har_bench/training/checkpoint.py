"""Checkpoint files: their names, the best/last commit, resume, and the RNG state they carry.

``last.pt`` holds everything needed to continue bit-for-bit (model, optimizer, scheduler, AMP
scaler, :class:`~har_bench.training.train_state.TrainState`, RNGs); ``best.pt`` the
best-on-validation weights with their epoch. Every file is loadable with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from har_bench.core.errors import MissingInputError, UserError
from har_bench.core.fs import atomic_write
from har_bench.core.seeding import rng_state, set_rng_state
from har_bench.training.train_state import TrainState

CHECKPOINT_FORMAT = 1
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
# best.pt is replaced only after last.pt names its epoch (see commit_epoch).
BEST_PENDING = "best.pt.pending"


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """torch.save to a temp file, then rename: a crash never leaves half a checkpoint."""

    def write(tmp: Path) -> None:
        # Through a Python file: given a path, torch reports a full disk as a RuntimeError
        # ("unexpected pos ..."); this way the OSError (ENOSPC) is raised in Python, and is
        # what gets reported, even when closing the archive then fails the same way.
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as e:
                cause = e.__context__
                while cause is not None and not isinstance(cause, OSError):
                    cause = cause.__context__
                if cause is None:
                    raise
                raise cause from e

    atomic_write(path, write)


def load_checkpoint(path: Path, what: str = "trainer.resume", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint as saved here; ``what`` names the setting that pointed at it in errors.

    ``mmap`` maps the tensors instead of reading them (a cheap check that the file loads)."""
    if not path.is_file():
        raise MissingInputError(f"{what}: {path} does not exist")
    try:
        return torch.load(
            path,
            map_location="cpu",
            weights_only=True,
            # Only torch's zip format can be mapped; anything else fails on the load itself.
            mmap=mmap and zipfile.is_zipfile(path),
        )
    except Exception as e:
        raise UserError(
            f"{what}: {path} cannot be read: it is damaged or not a checkpoint har-bench "
            f"saved ({type(e).__name__}: {_load_failure(e)})"
        ) from None


def _load_failure(e: Exception) -> str:
    """Why torch.load failed, without its advice to load with ``weights_only=False``: that
    would run whatever code the file holds."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        return reason[0].strip() if reason else "not a plain checkpoint"
    lines = [line for line in text.splitlines() if "weights_only" not in line]
    return lines[0].strip() if lines else "not a plain checkpoint"


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``last.pt``; ``extra`` adds the state of the loop's plug-ins."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(),
        **state.state_dict(),
        **(extra or {}),
        "rng": rng_state(),
    }


def commit_epoch(checkpoint_dir: Path, last: dict[str, Any], best: dict[str, Any] | None) -> None:
    """Write ``last.pt`` every epoch and ``best.pt`` when ``best`` is given.

    Two files cannot be replaced at once, and a crash between them must not leave a best.pt
    that last.pt does not know about (resume would then keep the wrong "best" weights). So a new
    best goes to ``best.pt.pending`` first, last.pt (naming the best epoch) is replaced next, and
    only then the pending file becomes best.pt; :func:`load_resume_state` completes or discards a
    pending file left by a crash.
    """
    pending = checkpoint_dir / BEST_PENDING
    if best is not None:
        save_checkpoint(pending, best)
    try:
        save_checkpoint(checkpoint_dir / LAST_CHECKPOINT, last)
    except OSError:
        # last.pt still names the previous best, so the pending file is of no use (a full
        # disk, say); OSError only: once last.pt is replaced, the pending file is needed.
        if best is not None:
            with contextlib.suppress(OSError):
                pending.unlink(missing_ok=True)
        raise
    if best is not None:
        os.replace(pending, checkpoint_dir / BEST_CHECKPOINT)


def load_resume_state(checkpoint_dir: Path) -> dict[str, Any]:
    """``last.pt`` plus the best-on-validation weights it refers to (``best_state``)."""
    checkpoint_dir = Path(checkpoint_dir)
    state, best_file = _read_resume_state(checkpoint_dir, mmap=False)
    pending = checkpoint_dir / BEST_PENDING
    if best_file == pending:
        os.replace(pending, checkpoint_dir / BEST_CHECKPOINT)  # the crash hit mid-commit
    elif pending.is_file():
        pending.unlink()
    return state


def check_resume_state(checkpoint_dir: Path) -> None:
    """Raise what :func:`load_resume_state` would, changing nothing (tensors are mapped, not
    read): a resume is checked before the run directory is touched."""
    _read_resume_state(Path(checkpoint_dir), mmap=True)


def _read_resume_state(checkpoint_dir: Path, mmap: bool) -> tuple[dict[str, Any], Path | None]:
    """``last.pt`` with ``best_state``, and the file that holds the best weights: best.pt, or
    best.pt.pending when a crash hit between the two renames of :func:`commit_epoch`."""
    last = checkpoint_dir / LAST_CHECKPOINT
    if not last.is_file():
        raise MissingInputError(
            f"trainer.resume: {last} does not exist; the run stopped before its first "
            "checkpoint, so start it again without trainer.resume"
        )
    state = load_checkpoint(last, mmap=mmap)
    missing = [
        k for k in ("model", "optimizer", "epoch", "history", "generator", "rng") if k not in state
    ]
    if missing:
        raise UserError(
            f"trainer.resume: {last} has no {', '.join(missing)}: it is not a resumable "
            "har-bench checkpoint"
        )
    best_epoch = int(state["best_epoch"])
    best_file = checkpoint_dir / BEST_CHECKPOINT
    pending = checkpoint_dir / BEST_PENDING
    if pending.is_file():
        try:
            pending_epoch = load_checkpoint(pending, mmap=mmap)["epoch"]
        except ValueError:
            pending_epoch = None
        if pending_epoch == best_epoch:
            best_file = pending
    state["best_state"] = {}
    if best_epoch < 1:
        return state, None
    best = load_checkpoint(best_file, mmap=mmap)
    if best.get("epoch") != best_epoch:
        raise UserError(
            f"trainer.resume: {checkpoint_dir / BEST_CHECKPOINT} is from epoch "
            f"{best.get('epoch')} but {last} says the best epoch is {best_epoch}"
        )
    state["best_state"] = best["model"]
    return state, best_file


def load_model_state(model: nn.Module, state: Mapping[str, Any], mismatch: str) -> None:
    """``state`` loaded into ``model`` strictly; a mismatch is the user's: ``mismatch`` with
    ``{reason}`` (torch's first line) as one line."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0]
        raise UserError(mismatch.replace("{reason}", reason)) from None


def restore_training(
    checkpoint: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    state: TrainState,
) -> None:
    """Load a :func:`load_resume_state` result into freshly built training objects.

    Each mismatch with the run's own settings is refused in one line rather than silently
    training something else.
    """
    load_model_state(
        model,
        checkpoint["model"],
        "trainer.resume: the checkpoint was saved from a different model ({reason}); resume "
        "with the run's own model settings",
    )
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except ValueError as e:
        raise UserError(
            f"trainer.resume: the checkpoint's optimizer state does not fit ({e})"
        ) from None
    saved = checkpoint["scheduler"]
    if (scheduler is None) != (saved is None):
        raise UserError(
            "trainer.resume: the checkpoint was saved "
            + ("without" if saved is None else "with")
            + " a learning-rate scheduler; resume with the run's own scheduler setting"
        )
    if scheduler is not None:
        # load_state_dict would silently bring back the old horizon, so a schedule resumed with
        # more epochs would climb back up from its end: refuse instead.
        horizons = {
            "T_max": "trainer.max_epochs",
            "total_steps": "epochs x steps per epoch",
            "warmup_steps": "the warm-up",
        }
        for key, meaning in horizons.items():
            old, new = saved.get(key), getattr(scheduler, key, None)
            if old is not None and new is not None and old != new:
                raise UserError(
                    f"trainer.resume: the scheduler's {key} (= {meaning}) was {old}, now {new}; "
                    "a schedule cannot be stretched mid-run. Resume with the run's own "
                    "trainer.max_epochs, or use scheduler=none/step to add epochs"
                )
        scheduler.load_state_dict(saved)
    if scaler.is_enabled() and checkpoint["scaler"]:
        scaler.load_state_dict(checkpoint["scaler"])
    state.load_state_dict(dict(checkpoint))
    set_rng_state(checkpoint["rng"])
