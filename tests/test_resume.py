"""Resume and interruption inside the training loop (in-process, seconds).

The subprocess versions (SIGKILL, SIGINT, SIGTERM against the real CLI) are in
test_reliability_cli.py.
"""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from har_bench.training.augment import Augment
from har_bench.training.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_resume_state
from har_bench.training.engine import Trainer
from har_bench.training.schedules import StepSchedule
from har_bench.training.signals import Interrupted, stop_on_signals


class Net(nn.Module):
    """Batch-norm (running stats) and dropout (torch RNG): both must survive a resume."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(3, width, 5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(width, 4),
        )

    def forward(self, x):
        return self.net(x)


def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 3, 32, generator=g)
    y = torch.randint(0, 4, (96,), generator=g)
    return X[:72], y[:72], X[72:], y[72:]


def trainer(**kw) -> Trainer:
    kw = {
        "progress": False,
        "device": "cpu",
        "max_epochs": 5,
        "batch_size": 8,
        "accumulate_grad_batches": 2,
        "patience": None,
    } | kw
    return Trainer(**kw)


def fit(
    tr: Trainer,
    ckpt,
    resume=None,
    on_epoch_end=None,
    model=None,
    seed: int = 0,
    hook=None,
    augment=None,
    scheduler_factory=None,
):
    # run() seeds everything before building the model; do the same.
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    model = model or Net()
    if hook is not None:
        hook(model)
    result = tr.fit(
        model,
        *data(),
        optimizer_factory=lambda p: torch.optim.AdamW(p, lr=1e-2),
        scheduler_factory=scheduler_factory
        or (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5)),
        checkpoint_dir=ckpt,
        seed=7,
        on_epoch_end=on_epoch_end,
        resume=resume,
        augment=augment() if augment is not None else None,
    )
    return result, model


def assert_same(a, b) -> None:
    (fa, ma), (fb, mb) = a, b
    strip = ("train_seconds", "epoch_seconds", "samples_per_second")
    ha = [{k: v for k, v in r.items() if k not in strip} for r in fa.history]
    hb = [{k: v for k, v in r.items() if k not in strip} for r in fb.history]
    assert ha == hb  # exact: same floats, not approximately
    assert fa.best_epoch == fb.best_epoch and fa.best_metric == fb.best_metric
    for k, v in ma.state_dict().items():
        assert torch.equal(v, mb.state_dict()[k]), k
    for k, v in fa.best_state.items():
        assert torch.equal(v, fb.best_state[k]), k


class Crash(Exception):
    pass


def crash_after(epoch: int):
    def cb(row):
        if row["epoch"] == epoch:
            raise Crash  # as if killed right after last.pt of this epoch was written

    return cb


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return fit(trainer(), tmp_path_factory.mktemp("ref"))


def test_resume_after_crash_is_exact(reference, tmp_path):
    with pytest.raises(Crash):
        fit(trainer(), tmp_path, on_epoch_end=crash_after(2))
    state = load_resume_state(tmp_path)
    assert state["epoch"] == 2 and state["partial_epoch"] is None
    assert len(state["history"]) == 2
    # A different seed: the resumed run must get every RNG from the checkpoint, not from luck.
    resumed = fit(trainer(), tmp_path, resume=state, seed=123)
    assert_same(resumed, reference)
    assert torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)["epoch"] == 5


def test_resume_can_extend_max_epochs(tmp_path):
    fit(trainer(max_epochs=2), tmp_path)
    result, _ = fit(trainer(max_epochs=3), tmp_path, resume=load_resume_state(tmp_path))
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


class SignalAt:
    """Sends a signal to this process on the n-th forward pass of a model."""

    def __init__(self, model: nn.Module, n: int, signum: int = signal.SIGINT, times: int = 1):
        self.calls = 0
        self.n, self.signum, self.times = n, signum, times
        model.register_forward_hook(self.hook)

    def hook(self, *_):
        self.calls += 1
        if self.calls == self.n and torch.is_grad_enabled():
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


# 9 batches per epoch: the 3rd and 20th forward passes are mid-epoch; during the 9th (the
# epoch's last batch) there is no later step boundary, so the epoch completes first.
@pytest.mark.parametrize("n", [3, 9, 20])
def test_sigint_saves_state_and_resume_is_exact(reference, tmp_path, n):
    with pytest.raises(Interrupted) as info:
        fit(trainer(), tmp_path, hook=lambda m: SignalAt(m, n))
    assert info.value.signum == signal.SIGINT and info.value.exit_code == 130
    state = load_resume_state(tmp_path)
    part = state["partial_epoch"]
    if n % 9:
        assert "batches done" in info.value.saved
        assert part is not None and part["batches_done"] % 2 == 0  # a whole accumulation window
        assert len(state["history"]) == state["epoch"] == part["epoch"] - 1
    else:
        assert info.value.saved.startswith(f"epoch {n // 9} complete")
        assert part is None and len(state["history"]) == state["epoch"] == n // 9
    assert_same(fit(trainer(), tmp_path, resume=state, seed=99), reference)


def test_second_signal_stops_at_once(tmp_path):
    with pytest.raises(Interrupted) as info:
        fit(trainer(), tmp_path, hook=lambda m: SignalAt(m, 2, times=2))
    assert info.value.saved is None  # no time to save: last.pt stays what it was (none yet)
    assert not (tmp_path / LAST_CHECKPOINT).exists()


def test_sigterm_is_an_interruption_too():
    with pytest.raises(Interrupted) as info, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
    assert info.value.exit_code == 143 and info.value.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_crash_between_best_and_last_keeps_checkpoints_consistent(reference, tmp_path):
    fit(trainer(max_epochs=2), tmp_path)
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    best = torch.load(tmp_path / BEST_CHECKPOINT, weights_only=True)
    assert best["epoch"] == state["best_epoch"]
    # A crash after the new best was staged but before last.pt named it: discarded.
    torch.save({**best, "epoch": 3}, tmp_path / "best.pt.pending")
    assert load_resume_state(tmp_path)["best_epoch"] == best["epoch"]
    assert not (tmp_path / "best.pt.pending").exists()
    # A crash after last.pt named it but before the rename: completed.
    torch.save({**best, "epoch": 2}, tmp_path / "best.pt.pending")
    torch.save({**best, "epoch": 1}, tmp_path / BEST_CHECKPOINT)
    state["best_epoch"] = 2
    torch.save(state, tmp_path / LAST_CHECKPOINT)
    assert load_resume_state(tmp_path)["best_state"].keys() == best["model"].keys()
    assert torch.load(tmp_path / BEST_CHECKPOINT, weights_only=True)["epoch"] == 2


def test_resume_into_a_different_model_is_a_clear_error(tmp_path):
    fit(trainer(max_epochs=1), tmp_path)
    with pytest.raises(ValueError, match="different model"):
        fit(trainer(max_epochs=2), tmp_path, resume=load_resume_state(tmp_path), model=Net(16))


def test_missing_or_damaged_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="before its first checkpoint"):
        load_resume_state(tmp_path)
    (tmp_path / LAST_CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="last.pt cannot be read"):
        load_resume_state(tmp_path)


def test_early_stopped_run_does_not_train_on_after_resume(tmp_path):
    tr = trainer(max_epochs=30, patience=1, monitor="val_loss")
    first, _ = fit(tr, tmp_path)
    assert first.stopped_early
    again, _ = fit(tr, tmp_path, resume=load_resume_state(tmp_path))
    assert again.stopped_early and len(again.history) == len(first.history)


def recipe_augment() -> Augment:
    aug = Augment(p=0.7, jitter=0.05, scale=0.1, time_warp=0.2, shift=0.1, mixup=0.2, cutmix=0.2)
    return aug.bind(4, [[0, 1, 2]], torch.zeros(3), torch.ones(3), seed=7)


def recipe_fit(tmp_path, **kw):
    return fit(
        trainer(ema_decay=0.9, label_smoothing=0.1),
        tmp_path,
        augment=recipe_augment,
        scheduler_factory=StepSchedule(epochs=5, warmup_epochs=1),
        **kw,
    )


@pytest.mark.parametrize("n", [3, 20])
def test_resume_is_exact_with_augment_mixup_ema_and_step_schedule(tmp_path, n):
    reference = recipe_fit(tmp_path / "ref")
    assert reference[0].weights == "ema"
    with pytest.raises(Interrupted):
        recipe_fit(tmp_path / "run", hook=lambda m: SignalAt(m, n))
    state = load_resume_state(tmp_path / "run")
    assert state["ema"] is not None and state["augment"] is not None
    assert_same(recipe_fit(tmp_path / "run", resume=state, seed=99), reference)


def test_resume_refuses_a_run_saved_without_ema(tmp_path):
    fit(trainer(max_epochs=1), tmp_path)
    with pytest.raises(ValueError, match="saved without ema"):
        fit(trainer(max_epochs=2, ema_decay=0.9), tmp_path, resume=load_resume_state(tmp_path))


def test_resume_refuses_a_reshaped_warmup(tmp_path):
    # A step budget keeps the steps but rescales the warm-up when trainer.max_epochs changes:
    # the horizon alone would not tell.
    def schedule(warmup: float) -> StepSchedule:
        return StepSchedule(epochs=2, warmup_epochs=warmup)

    fit(trainer(max_epochs=1), tmp_path, scheduler_factory=schedule(1.0))
    with pytest.raises(ValueError, match="warmup_steps"):
        fit(
            trainer(max_epochs=2),
            tmp_path,
            resume=load_resume_state(tmp_path),
            scheduler_factory=schedule(0.5),
        )
