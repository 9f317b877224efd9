import copy
import math

import pytest
import torch
from torch import nn

from har_bench.core.timing import measure_latency
from har_bench.training.engine import (
    Trainer,
    resolve_device,
    resolve_precision,
)
from har_bench.training.session import DivergedError


def make_trainer(**kw) -> Trainer:
    kw = {"progress": False, "device": "cpu"} | kw
    return Trainer(**kw)


class NoBN(nn.Module):
    """A conv net without batch-norm, so micro-batching cannot change the gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(3, 8, 5, padding=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )

    def forward(self, x):
        return self.net(x)


def one_step(model, X, y, **trainer_kw):
    """Train one epoch (= one optimizer step here) with plain SGD; return the new weights."""
    trainer = make_trainer(max_epochs=1, **trainer_kw)
    trainer.fit(
        model, X, y, X[:0], y[:0], optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.5), seed=0
    )
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_grad_accumulation_4x16_equals_one_batch_of_64():
    torch.manual_seed(0)
    X, y = torch.randn(64, 3, 32), torch.randint(0, 4, (64,))
    base = NoBN()
    big = one_step(copy.deepcopy(base), X, y, batch_size=64)
    acc = one_step(copy.deepcopy(base), X, y, batch_size=16, accumulate_grad_batches=4)
    before = base.state_dict()
    for k in big:
        assert not torch.allclose(big[k], before[k])  # the step did something
        torch.testing.assert_close(acc[k], big[k], rtol=1e-5, atol=1e-6)


def test_short_last_window_is_weighted_by_samples():
    # 40 samples, micro-batches of 16 and 4 per step: one window of 16+16+8 = one batch of 40.
    torch.manual_seed(1)
    X, y = torch.randn(40, 3, 32), torch.randint(0, 4, (40,))
    base = NoBN()
    big = one_step(copy.deepcopy(base), X, y, batch_size=40)
    acc = one_step(copy.deepcopy(base), X, y, batch_size=16, accumulate_grad_batches=4)
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_trains_on_cpu():
    torch.manual_seed(0)
    X, y = torch.randn(32, 3, 32), torch.randint(0, 4, (32,))
    trainer = make_trainer(max_epochs=2, batch_size=8, precision="bf16-mixed")
    assert trainer.amp_dtype is torch.bfloat16
    fit = trainer.fit(
        NoBN(), X, y, X[:8], y[:8], optimizer_factory=lambda p: torch.optim.Adam(p, 1e-3)
    )
    assert len(fit.history) == 2 and math.isfinite(fit.history[-1]["train_loss"])


def test_a_bf16_trained_model_is_evaluated_in_fp32_on_cpu():
    # The run's test figures must be the ones `har-bench predict` (fp32) reproduces.
    torch.manual_seed(0)
    X, y = torch.randn(32, 3, 32), torch.randint(0, 4, (32,))
    trainer = make_trainer(max_epochs=1, batch_size=8, precision="bf16-mixed")
    model = NoBN()
    trainer.fit(model, X, y, X[:8], y[:8], optimizer_factory=lambda p: torch.optim.Adam(p, 1e-3))
    with torch.no_grad():
        fp32 = model.eval()(X)
    assert torch.equal(trainer.predict(model, X), fp32)
    assert trainer.eval_dtype is None and trainer.amp_dtype is torch.bfloat16


def test_precision_and_device_resolution():
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16-mixed", torch.device("cpu")) is torch.bfloat16
    assert resolve_precision("auto", torch.device("cuda")) is torch.float16
    assert resolve_precision(32, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="trainer.precision='fp8'"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="trainer.device='tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_early_stopping_and_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    X, y = torch.randn(64, 3, 32), torch.randint(0, 4, (64,))
    # Validation labels are noise, so the metric stops improving quickly.
    Xv, yv = torch.randn(32, 3, 32), torch.randint(0, 4, (32,))
    trainer = make_trainer(max_epochs=50, batch_size=16, patience=2, monitor="val_loss")
    fit = trainer.fit(
        NoBN(), X, y, Xv, yv, lambda p: torch.optim.Adam(p, 1e-2), checkpoint_dir=tmp_path
    )
    assert fit.stopped_early and len(fit.history) < 50
    assert len(fit.history) == fit.best_epoch + 2
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert best["epoch"] == fit.best_epoch
    assert best["metric"] == min(r["val_loss"] for r in fit.history)
    assert last["epoch"] == len(fit.history) and len(last["history"]) == len(fit.history)
    for k, v in best["model"].items():
        torch.testing.assert_close(v, fit.best_state[k])


@pytest.mark.parametrize("max_epochs", [2, 3])
def test_early_stopping_is_announced_only_when_it_cuts_the_schedule(max_epochs, caplog):
    torch.manual_seed(0)
    X, y = torch.randn(32, 3, 32), torch.randint(0, 4, (32,))
    trainer = make_trainer(max_epochs=max_epochs, batch_size=16, patience=1, monitor="val_loss")
    # lr 0: the validation loss never improves after the first epoch, so epoch 2 stops.
    with caplog.at_level("INFO", logger="har_bench.training.engine"):
        fit = trainer.fit(NoBN(), X, y, X, y, lambda p: torch.optim.SGD(p, lr=0.0))
    assert len(fit.history) == 2 and fit.best_epoch == 1
    announced = any("early stopping" in r.getMessage() for r in caplog.records)
    assert announced == (max_epochs == 3)


def test_limit_batches_and_batches_are_indices():
    trainer = make_trainer(batch_size=10, limit_train_batches=3)
    batches = trainer.train_batches(95, torch.Generator().manual_seed(0))
    assert len(batches) == 3 and all(len(b) == 10 for b in batches)
    full = make_trainer(batch_size=10).train_batches(95, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(full).tolist()) == list(range(95)) and len(full[-1]) == 5
    dropped = make_trainer(batch_size=10, drop_last=True).train_batches(
        95, torch.Generator().manual_seed(0)
    )
    assert len(dropped) == 9
    with pytest.raises(ValueError, match="batch_size=10 is larger than the training set"):
        make_trainer(batch_size=10, drop_last=True).train_batches(5, torch.Generator())


def test_same_seed_same_result():
    X, y = torch.randn(48, 3, 32), torch.randint(0, 4, (48,))
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        fit = make_trainer(max_epochs=2, batch_size=8).fit(
            NoBN(), X, y, X[:8], y[:8], lambda p: torch.optim.Adam(p, 1e-3), seed=7
        )
        runs.append([r["train_loss"] for r in fit.history])
    assert runs[0] == runs[1]


def test_divergence_stops_with_epoch_and_hint():
    X, y = torch.randn(16, 3, 32), torch.randint(0, 4, (16,))
    X[3] = float("nan")
    with pytest.raises(DivergedError, match="epoch 1.*lower optimizer.lr"):
        make_trainer(batch_size=16).fit(
            NoBN(), X, y, X[:0], y[:0], lambda p: torch.optim.SGD(p, 0.1)
        )


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches=0"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"patience": 0}, "patience=0"),
        ({"monitor": "test_accuracy"}, "monitor='test_accuracy'"),
        ({"limit_train_batches": 0}, "limit_train_batches=0"),
    ],
)
def test_invalid_trainer_settings(kw, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[")):
        make_trainer(**kw)


def test_latency_reports_percentiles():
    lat = measure_latency(NoBN(), torch.randn(4, 3, 32), torch.device("cpu"), repeats=5, warmup=1)
    assert 0 < lat["p50"] <= lat["p95"]


def test_compile_that_fails_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    """torch.compile fails at the first call where there is no working compiler: the step must
    train eagerly, with the same weights as without compile, and say so once."""

    class Broken(nn.Module):  # what torch.compile returns, failing at its first call
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            raise RuntimeError("no C++ compiler found\nsecond line of the compiler's output")

    def broken_compile(module, **kwargs):
        return Broken(module)

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    X, y = torch.randn(32, 3, 32), torch.randint(0, 4, (32,))
    base = NoBN()
    eager = one_step(copy.deepcopy(base), X, y, batch_size=8)
    with caplog.at_level("WARNING"):
        fallback = one_step(copy.deepcopy(base), X, y, batch_size=8, compile=True)
    for k in eager:
        torch.testing.assert_close(fallback[k], eager[k])
    warnings = [r.getMessage() for r in caplog.records if "trainer.compile" in r.getMessage()]
    assert warnings == [
        "trainer.compile: torch.compile failed (no C++ compiler found); training eagerly"
    ]


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_boolean_trainer_settings_refuse_other_values(value):
    with pytest.raises(ValueError, match=f"trainer.compile={value!r} is invalid: expected true"):
        make_trainer(compile=value)


@pytest.mark.slow
def test_compiled_training_matches_eager():
    """The compiled step is the same arithmetic: one SGD step lands on the same weights."""
    torch.manual_seed(0)
    X, y = torch.randn(32, 3, 32), torch.randint(0, 4, (32,))
    base = NoBN()
    eager = one_step(copy.deepcopy(base), X, y, batch_size=16)
    compiled = one_step(copy.deepcopy(base), X, y, batch_size=16, compile=True)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-5)


def test_fp16_mixed_with_grad_scaler_trains_on_cpu(monkeypatch):
    """The CUDA default (16-mixed: fp16 autocast + GradScaler) runs through the same loop on the
    CPU: the scaler is on and scales every loss it steps with."""
    from torch.amp import GradScaler

    scales = []
    original = GradScaler.scale

    def scale(self, outputs):
        scales.append(self.get_scale())
        return original(self, outputs)

    monkeypatch.setattr(GradScaler, "scale", scale)
    torch.manual_seed(0)
    X, y = torch.randn(32, 3, 32), torch.randint(0, 4, (32,))
    trainer = make_trainer(max_epochs=2, batch_size=8, precision="16-mixed")
    assert trainer.amp_dtype is torch.float16
    fit = trainer.fit(
        NoBN(), X, y, X[:8], y[:8], optimizer_factory=lambda p: torch.optim.Adam(p, 1e-3)
    )
    assert len(fit.history) == 2 and math.isfinite(fit.history[-1]["train_loss"])
    assert len(scales) == 8 and all(s > 1 for s in scales)  # 2 epochs x 4 steps, scaled


def test_compile_does_not_hide_the_models_own_refusal(caplog):
    """A model refusing its input (a UserError) is not a compiler failure: it is raised as it
    is, with no compile warning."""
    from har_bench.core.errors import UserError

    class Refuses(NoBN):
        def forward(self, x):
            raise UserError("model: needs at least 17 samples, got 32")

    X, y = torch.randn(16, 3, 32), torch.randint(0, 4, (16,))
    with caplog.at_level("WARNING"), pytest.raises(UserError, match="at least 17"):
        make_trainer(max_epochs=1, batch_size=8, compile=True).fit(
            Refuses(), X, y, X[:0], y[:0], lambda p: torch.optim.SGD(p, lr=0.1)
        )
    assert not [r for r in caplog.records if "trainer.compile" in r.getMessage()]
