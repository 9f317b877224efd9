"""The recipe units the training loop calls: augmentation, step schedules, EMA weights."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from har_bench.experiment.fit import apply_step_budget
from har_bench.experiment.prepare import SMALL_VALIDATION, check_selection
from har_bench.experiment.spec import Training
from har_bench.training.augment import TRANSFORMS, Augment, random_rotations
from har_bench.training.engine import Trainer
from har_bench.training.schedules import StepSchedule

GROUPS = [[0, 1, 2], [3, 4, 5]]


def batch(n: int = 32, c: int = 7, t: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, c, t, generator=g), torch.randint(0, 5, (n,), generator=g)


def bound(mean=None, std=None, seed: int = 0, **kw) -> Augment:
    mean = torch.zeros(7) if mean is None else mean
    std = torch.ones(7) if std is None else std
    return Augment(**kw).bind(5, GROUPS, mean, std, seed=seed)


@pytest.mark.parametrize("name", [t for t in TRANSFORMS if t not in ("mixup", "cutmix")])
def test_each_transform_keeps_shape_and_labels_and_is_seeded(name):
    magnitude = 30.0 if name == "rotation" else 0.2
    x, y = batch()
    a1, y1 = bound(p=1.0, seed=3, **{name: magnitude})(x, y)
    a2, _ = bound(p=1.0, seed=3, **{name: magnitude})(x, y)
    a3, _ = bound(p=1.0, seed=4, **{name: magnitude})(x, y)
    assert a1.shape == x.shape and torch.equal(y1, y)
    assert torch.equal(a1, a2)  # same seed, same draws
    assert not torch.equal(a1, a3) and not torch.equal(a1, x)
    assert torch.isfinite(a1).all()


def test_p_zero_changes_nothing():
    x, y = batch()
    out, _ = bound(p=0.0, jitter=0.5, scale=0.5, time_warp=0.3, rotation=90, crop=0.5)(x, y)
    torch.testing.assert_close(out, x)


def test_rotation_keeps_each_triples_norm_in_physical_units():
    x, y = batch()
    mean, std = torch.linspace(-1, 2, 7), torch.linspace(0.5, 3, 7)
    out, _ = bound(mean, std, p=1.0, rotation=180)(x, y)
    raw_in = x * std[None, :, None] + mean[None, :, None]
    raw_out = out * std[None, :, None] + mean[None, :, None]
    for g in GROUPS:
        torch.testing.assert_close(raw_out[:, g].norm(dim=1), raw_in[:, g].norm(dim=1))
    torch.testing.assert_close(raw_out[:, 6], raw_in[:, 6])  # a channel in no triple
    # One rotation per window for all its triples: the angle between them is kept.
    cos_in = (raw_in[:, 0:3] * raw_in[:, 3:6]).sum(1)
    cos_out = (raw_out[:, 0:3] * raw_out[:, 3:6]).sum(1)
    torch.testing.assert_close(cos_out, cos_in, rtol=1e-4, atol=1e-4)


def test_random_rotations_are_rotations():
    r = random_rotations(50, 180, torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        r @ r.transpose(1, 2), torch.eye(3).expand(50, 3, 3), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(50))


@pytest.mark.parametrize("kind", [{"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}])
def test_mixing_gives_soft_targets_that_sum_to_one(kind):
    x, y = batch()
    out, target = bound(**kind)(x, y)
    assert out.shape == x.shape and target.shape == (len(y), 5)
    torch.testing.assert_close(target.sum(1), torch.ones(len(y)))
    assert (target >= 0).all() and not torch.equal(out, x)


def test_bad_magnitude_names_the_key():
    with pytest.raises(ValueError, match=r"augment.jitter=-0.1 is invalid"):
        Augment(jitter=-0.1)
    with pytest.raises(ValueError, match=r"augment.p=2 is invalid"):
        Augment(p=2)


def lr_trace(schedule: StepSchedule, steps_per_epoch: int) -> tuple[list[float], object]:
    """The learning rate before each optimizer step of the whole schedule (base lr 1)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = schedule(opt, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(schedule.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs, sched


def test_warmup_cosine_schedule_per_step():
    lrs, sched = lr_trace(StepSchedule(epochs=4, warmup_epochs=1, start_factor=0.0), 10)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[25] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert lrs[-1] < 0.01 and sched.total_steps == 40


def test_one_cycle_peaks_after_warmup():
    lrs, _ = lr_trace(StepSchedule(kind="one_cycle", epochs=4, warmup_epochs=1), 10)
    assert max(range(40), key=lrs.__getitem__) == 10 and lrs[10] == pytest.approx(1.0)


def test_warmup_is_capped_at_half_the_schedule():
    assert StepSchedule(epochs=1, warmup_epochs=1).warmup == 0.5
    assert StepSchedule(epochs=10, warmup_epochs=2).warmup == 2
    lrs, _ = lr_trace(StepSchedule(epochs=1, warmup_epochs=1, start_factor=0.0), 10)
    # peak after 5 of the 10 steps, then the cosine decays again
    assert max(range(10), key=lrs.__getitem__) == 5 and lrs[-1] < lrs[5]


def test_schedule_errors_name_the_key():
    with pytest.raises(ValueError, match="scheduler.warmup_epochs=-1"):
        StepSchedule(epochs=5, warmup_epochs=-1)
    with pytest.raises(ValueError, match="scheduler.kind='linear'"):
        StepSchedule(kind="linear")
    with pytest.raises(ValueError, match="scheduler.warmup_epochs='abc' is invalid"):
        StepSchedule(epochs=5, warmup_epochs="abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scheduler.min_factor=True is invalid: expected 0..1"):
        StepSchedule(epochs=5, min_factor=True)


def test_ema_weights_are_the_ones_validated_and_kept():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(64, 3, 16, generator=g), torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    trainer = Trainer(max_epochs=3, batch_size=16, progress=False, device="cpu", ema_decay=0.5)
    fit = trainer.fit(model, X, y, X, y, optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.5))
    assert fit.weights == "ema"
    # The kept weights are an average, not the trained model's own, and the validation
    # figure of the best epoch is theirs.
    assert not torch.equal(fit.best_state["1.weight"], model.state_dict()["1.weight"])
    averaged = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    averaged.load_state_dict(fit.best_state)
    best_row = fit.history[fit.best_epoch - 1]
    assert trainer.evaluate(averaged, X, y)["macro_f1"] == best_row["val_macro_f1"]


@pytest.mark.parametrize("validated", [True, False])
def test_ema_batchnorm_statistics_are_measured_on_the_averaged_weights(validated):
    from torch.optim.swa_utils import update_bn

    from har_bench.training.ema import calibration_windows

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(600, 3, 16, generator=g), torch.randint(0, 3, (600,), generator=g)

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv1d(3, 8, 3), nn.BatchNorm1d(8), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
            nn.Flatten(), nn.Linear(8, 3),
        )  # fmt: skip

    trainer = Trainer(max_epochs=2, batch_size=32, progress=False, device="cpu", ema_decay=0.9)
    n_val = len(X) if validated else 0  # without validation, measured once after the last epoch
    fit = trainer.fit(net(), X, y, X[:n_val], y[:n_val], lambda p: torch.optim.SGD(p, lr=0.5))
    kept = net()
    kept.load_state_dict(fit.best_state)
    measured = net()
    measured.load_state_dict(fit.best_state)
    update_bn(X[calibration_windows(len(X))].split(trainer.eval_batch_size), measured)
    assert torch.allclose(kept[1].running_mean, measured[1].running_mean, atol=1e-6)
    assert torch.allclose(kept[1].running_var, measured[1].running_var, atol=1e-5)
    if validated:
        best_row = fit.history[fit.best_epoch - 1]
        assert trainer.evaluate(kept, X, y)["macro_f1"] == best_row["val_macro_f1"]


def test_calibration_windows_are_spread_and_capped():
    from har_bench.training.ema import calibration_windows

    idx = calibration_windows(10_000, limit=100)
    assert len(idx) == 100 and idx[0] == 0 and idx[-1] == 9_999
    assert calibration_windows(5).tolist() == [0, 1, 2, 3, 4]


def test_datasets_declare_their_xyz_triples():
    from har_bench.data.base import xyz_triples

    names = ["body_acc_x", "body_acc_y", "body_acc_z", "gyro_x", "gyro_y", "gyro_z", "hr"]
    assert xyz_triples(names) == [[0, 1, 2], [3, 4, 5]]
    assert xyz_triples(["accel_x", "accel_y", "dim_0"]) == []  # an incomplete sensor
    assert xyz_triples(["dim_0", "dim_1", "dim_2"]) == []


def test_epochs_without_a_validation_part_say_so(caplog):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(32, 3, 16, generator=g), torch.randint(0, 3, (32,), generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    trainer = Trainer(max_epochs=2, batch_size=16, progress=False, device="cpu")
    with caplog.at_level("INFO", logger="har_bench.training.engine"):
        fit = trainer.fit(model, X, y, X[:0], y[:0], lambda p: torch.optim.SGD(p, lr=0.1))
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 2 and all("no validation" in m and "nan" not in m for m in epochs)
    assert fit.best_epoch == 2  # nothing to select on: the last epoch's weights


@pytest.mark.parametrize(
    ("n_val", "patience", "refit", "by_loop", "warned"),
    [
        (8, 5, False, True, True),  # early stopping on 8 windows
        (8, 5, True, True, True),  # early stopping picks the refit's epoch count on 8 windows
        (8, None, False, True, True),  # the best epoch on 8 windows is tested
        (8, None, True, True, False),  # a fixed schedule refit on train + val selects nothing
        (8, None, False, False, False),  # a fitted estimator (MiniRocket) picks no epoch
        (SMALL_VALIDATION - 1, 5, False, True, True),
        (SMALL_VALIDATION, 5, False, True, False),  # enough windows
    ],
)
def test_small_validation_is_warned_about_only_when_it_selects(
    n_val, patience, refit, by_loop, warned, caplog
):
    trainer = Trainer(patience=patience, progress=False, device="cpu")
    training = Training(trainer, torch.optim.SGD, None, seed=0, refit=refit)
    data = SimpleNamespace(val=SimpleNamespace(y=torch.zeros(n_val)))
    with caplog.at_level("WARNING", logger="har_bench.experiment"):
        check_selection(training, data, by_loop)  # type: ignore[arg-type]
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"only {n_val} windows" in m for m in messages) == warned


def budget_training(max_steps: int | None, accumulate: int = 1) -> Training:
    trainer = Trainer(
        max_epochs=10,
        batch_size=16,
        accumulate_grad_batches=accumulate,
        progress=False,
        device="cpu",
    )
    schedule = StepSchedule(epochs=10, warmup_epochs=2)
    return Training(trainer, torch.optim.SGD, schedule, seed=0, max_steps=max_steps)


@pytest.mark.parametrize(
    ("max_steps", "accumulate", "per_epoch", "epochs"),
    [
        (20, 1, 7, 3),  # 100 windows in batches of 16: 7 steps an epoch, 3 epochs reach 20
        (21, 1, 7, 3),
        (22, 1, 7, 4),
        (20, 2, 4, 5),  # two batches per step: 4 steps an epoch
        (70, 1, 7, 10),  # the budget is not reached: the configured schedule
        (1000, 1, 7, 10),
    ],
)
def test_step_budget_sets_the_epochs_and_shortens_the_schedule(
    max_steps, accumulate, per_epoch, epochs
):
    training = budget_training(max_steps, accumulate)
    budgeted, record = apply_step_budget(training, 100)
    assert record == {
        "max_steps": max_steps,
        "steps_per_epoch": per_epoch,
        "max_epochs": 10,
        "epochs": epochs,
    }
    assert budgeted.trainer.max_epochs == epochs
    schedule = budgeted.scheduler_factory
    assert schedule.epochs == epochs
    # The warm-up keeps its share (a fifth) of the schedule.
    assert schedule.warmup_epochs == pytest.approx(2 * epochs / 10)
    lr_schedule = schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), per_epoch)
    assert lr_schedule.total_steps == epochs * per_epoch


def test_no_step_budget_changes_nothing():
    training = budget_training(None)
    assert apply_step_budget(training, 100) == (training, None)
