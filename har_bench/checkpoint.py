"""Checkpoint files: their names, the best/last commit, resume, and the RNG state they carry.

``last.pt`` holds everything needed to continue bit-for-bit (model, optimizer, scheduler, AMP
scaler, :class:`~har_bench.train_state.TrainState`, RNGs); ``best.pt`` the best-on-validation
weights with their epoch. Every file is loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from har_bench._fs import atomic_write
from har_bench.errors import MissingInputError, UserError
from har_bench.train_state import TrainState

CHECKPOINT_FORMAT = 1
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
# best.pt is replaced only after last.pt names its epoch (see commit_epoch).
BEST_PENDING = "best.pt.pending"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """torch.save to a temp file, then rename: a crash never leaves half a checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, what: str = "trainer.resume") -> dict[str, Any]:
    """A checkpoint as saved here; ``what`` names the setting that pointed at it in errors."""
    if not path.is_file():
        raise MissingInputError(f"{what}: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{what}: {path} cannot be read ({type(e).__name__}: {first})") from None


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
    save_checkpoint(checkpoint_dir / LAST_CHECKPOINT, last)
    if best is not None:
        os.replace(pending, checkpoint_dir / BEST_CHECKPOINT)


def load_resume_state(checkpoint_dir: Path) -> dict[str, Any]:
    """``last.pt`` plus the best-on-validation weights it refers to (``best_state``)."""
    checkpoint_dir = Path(checkpoint_dir)
    last = checkpoint_dir / LAST_CHECKPOINT
    if not last.is_file():
        raise MissingInputError(
            f"trainer.resume: {last} does not exist; the run stopped before its first "
            "checkpoint, so start it again without trainer.resume"
        )
    state = load_checkpoint(last)
    missing = [
        k for k in ("model", "optimizer", "epoch", "history", "generator", "rng") if k not in state
    ]
    if missing:
        raise UserError(
            f"trainer.resume: {last} has no {', '.join(missing)}: it is not a resumable "
            "har-bench checkpoint"
        )
    best_epoch = int(state["best_epoch"])
    pending = checkpoint_dir / BEST_PENDING
    if pending.is_file():
        try:
            pending_epoch = load_checkpoint(pending)["epoch"]
        except ValueError:
            pending_epoch = None
        if pending_epoch == best_epoch:
            os.replace(pending, checkpoint_dir / BEST_CHECKPOINT)  # the crash hit mid-commit
        else:
            pending.unlink()
    state["best_state"] = {}
    if best_epoch >= 1:
        best = load_checkpoint(checkpoint_dir / BEST_CHECKPOINT)
        if best.get("epoch") != best_epoch:
            raise UserError(
                f"trainer.resume: {checkpoint_dir / BEST_CHECKPOINT} is from epoch "
                f"{best.get('epoch')} but {last} says the best epoch is {best_epoch}"
            )
        state["best_state"] = best["model"]
    return state


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
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(
            f"trainer.resume: the checkpoint was saved from a different model ({first}); "
            "resume with the run's own model settings"
        ) from None
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
