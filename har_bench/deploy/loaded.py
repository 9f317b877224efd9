"""A finished run read back: its config, the weights it tested, its data and preprocessing.

The run's saved config (``.hydra/config.yaml``) is built into the same typed components a run
uses (:func:`har_bench.experiment.components.from_config`), so the data are loaded, split and
standardised by the run's own code path; the split is then checked against the run's
``split_report.json``, so a changed dataset is refused rather than silently evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from har_bench.core.calibration import Calibration, softmax
from har_bench.core.errors import UserError
from har_bench.experiment.components import from_config, with_overrides
from har_bench.experiment.prepare import PreparedData, prepare_data
from har_bench.experiment.select import merged_validation
from har_bench.experiment.spec import Choices, Experiment
from har_bench.runs import rundir
from har_bench.runs.artifacts import TestPredictions
from har_bench.training.checkpoint import load_checkpoint, load_model_state
from har_bench.training.engine import Trainer

# Config keys holding paths, which a run resolves from the directory it was started in.
PATH_KEYS = ("dataset.root", "dataset.path")
# Gaps in time that end a stretch of samples, for datasets whose config names none (seconds).
DEFAULT_MAX_GAP_S = 1.0


class RunNotReadyError(UserError):
    """The directory is not a finished run with a model to export or predict with."""


@dataclass(frozen=True)
class Preprocessing:
    """What a raw recording goes through before the model: the run's channels, window, step,
    sampling rate and per-channel standardisation (``export/preprocessing.json``)."""

    dataset: str
    channel_names: list[str]
    class_names: list[str]
    mean: list[float]
    std: list[float]
    window: int
    step: int
    step_source: str  # "dataset.step", or why another value was taken
    sampling_rate_hz: float | None  # of the run's windows (after its own resampling)
    resample_hz: float | None  # the run's dataset.resample_hz
    max_gap_s: float
    input_shape: list[int]
    dataset_config: dict[str, Any] = field(default_factory=dict)  # device, sensors, tolerance

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Preprocessing:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})

    def standardise(self, X: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1)
        return ((X - mean) / std).astype(np.float32)


def check_completed(run_dir: Path) -> dict[str, Any]:
    """The run's ``metrics.json`` when it is a completed run (of any model); a one-line
    :class:`RunNotReadyError` otherwise."""
    run_dir = Path(run_dir)
    problem = rundir.not_a_run(run_dir)
    if problem is not None:
        raise RunNotReadyError(problem)
    metrics = rundir.read_status(run_dir)
    if metrics.get("status") != "completed":
        raise RunNotReadyError(
            f"{run_dir} has no finished model: {rundir.why_unfinished(run_dir, metrics)}"
        )
    return metrics


def check_finished(run_dir: Path) -> dict[str, Any]:
    """The run's ``metrics.json`` when it is a completed run of a neural model whose tested
    weights are on disk; a one-line :class:`RunNotReadyError` otherwise."""
    run_dir = Path(run_dir)
    metrics = check_completed(run_dir)
    checkpoint = rundir.tested_checkpoint(run_dir)
    if not checkpoint.is_file():
        if metrics.get("weights") == "ensemble":
            raise RunNotReadyError(
                f"{run_dir} is an ensemble of runs (har-bench ensemble) and has no model of its "
                "own to export or predict with; use one of its members (its metrics.json "
                "lists them)"
            )
        if metrics.get("weights") == "fitted":
            raise RunNotReadyError(
                f"{run_dir}: model={metrics.get('model')} is fitted outside the training loop "
                "and has no torch weights to export or predict with; export and predict work on the "
                "neural models"
            )
        raise RunNotReadyError(
            f"{run_dir} has no {checkpoint.relative_to(run_dir)}: the tested weights are missing"
        )
    return metrics


def run_config(run_dir: Path) -> DictConfig:
    """The run's saved config, with relative data paths taken from where the run started."""
    cfg = OmegaConf.create(rundir.saved_config(run_dir))
    cwd = rundir.saved_cwd(run_dir)
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or Path(str(value)).expanduser().is_absolute():
            continue
        if cwd is not None and not Path(str(value)).exists():
            OmegaConf.update(cfg, key, str(cwd / str(value)))
    for key in ("dataset.progress", "trainer.progress"):
        if OmegaConf.select(cfg, key, default=None) is not None:
            OmegaConf.update(cfg, key, False)
    return cfg


class FinishedRun:
    """A completed run: ``model`` (the tested weights, eval mode, CPU), ``data`` (its windows,
    split and standardised as in the run) and ``preprocessing``; each built on first use."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir).resolve()
        self.metrics = check_finished(self.path)
        self.config = run_config(self.path)
        self.choices = Choices.of(rundir.saved_choices(self.path))
        # selection=kfold tested its chosen candidate, trained on every training case.
        self.chosen = (self.metrics.get("selection") or {}).get("chosen")
        config = self.config if self.chosen is None else with_overrides(self.config, self.chosen)
        self.experiment: Experiment = from_config(config, self.choices)

    @property
    def refit(self) -> bool:
        """The tested model was trained on train + validation."""
        return self.metrics.get("tested") == "refit"

    @property
    def trainer(self) -> Trainer:
        """The run's trainer, on the CPU in fp32 and without evaluation limits."""
        return dataclasses.replace(
            self.experiment.training.trainer,
            device="cpu",
            precision="32",
            limit_eval_batches=None,
            progress=False,
        )

    def load_model(self, num_channels: int, num_classes: int) -> nn.Module:
        """The run's architecture with the weights it tested, in eval mode on the CPU."""
        model = self.experiment.make_model(num_channels, num_classes)
        checkpoint = rundir.tested_checkpoint(self.path)
        state = load_checkpoint(checkpoint, what=str(self.path))
        load_model_state(
            model,
            state["model"],
            f"{checkpoint} does not fit the model of the run's config ({{reason}})",
        )
        return model.eval()

    @cached_property
    def model(self) -> nn.Module:
        data = self.data.data
        return self.load_model(data.num_channels, data.num_classes)

    @cached_property
    def data(self) -> PreparedData:
        with tempfile.TemporaryDirectory() as tmp:
            make_split = self.experiment.make_split
            if self.chosen is not None:
                make_split = merged_validation(make_split)
            data = prepare_data(
                self.experiment.load_data,
                make_split,
                self.choices.split,
                Path(tmp),
                self.experiment.weights,  # pretrained weights bring their own normalisation
            )
            fresh = rundir.read_json(Path(tmp) / rundir.SPLIT_REPORT)
        check_same_split(self.path, fresh)
        return data

    def train_part(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows the tested model was trained on: train, plus validation after a refit."""
        data = self.data
        if self.refit:
            return torch.cat([data.train.X, data.val.X]), torch.cat([data.train.y, data.val.y])
        return data.train.X, data.train.y

    @cached_property
    def preprocessing(self) -> Preprocessing:
        data = self.data
        ds = self.config.dataset
        step = ds.get("step")
        if step is not None:
            step, step_source = int(step), "dataset.step"
        else:
            # Pre-cut datasets (UCI-HAR) name no step; their published windows overlap by half.
            step, step_source = data.data.window_length // 2, "half a window (pre-cut dataset)"
        extra = {k: ds.get(k) for k in ("version", "device", "sensors", "align_tolerance_ms")}
        return Preprocessing(
            dataset=data.data.name,
            channel_names=list(data.data.channel_names),
            class_names=data.class_names,
            mean=[float(v) for v in data.mean],
            std=[float(v) for v in data.std],
            window=data.data.window_length,
            step=step,
            step_source=step_source,
            sampling_rate_hz=data.data.sampling_rate_hz,
            resample_hz=ds.get("resample_hz"),
            max_gap_s=float(ds.get("max_gap_s") or DEFAULT_MAX_GAP_S),
            input_shape=list(data.sample.shape[1:]),
            dataset_config=OmegaConf.to_container(OmegaConf.create(extra), resolve=True),  # type: ignore[arg-type]
        )


def check_same_split(run_dir: Path, fresh: dict[str, Any]) -> None:
    """The parts rebuilt now must hold the subjects and window counts the run recorded."""
    saved_path = Path(run_dir) / rundir.SPLIT_REPORT
    if not saved_path.is_file():
        return
    saved = rundir.read_json(saved_path)
    for part in ("train", "val", "test"):
        a = saved.get("parts", {}).get(part, {})
        b = fresh.get("parts", {}).get(part, {})
        for key in ("windows", "subjects"):
            if a.get(key) != b.get(key):
                raise UserError(
                    f"{run_dir}: the {part} part rebuilt from the run's config differs from the "
                    f"one it recorded ({key}: {_short(a.get(key))} then, {_short(b.get(key))} "
                    "now); the dataset changed since the run"
                )


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) < 60 else text[:57] + "..."


def load_preprocessing(run_dir: Path) -> Preprocessing | None:
    """``export/preprocessing.json`` when an export (or an earlier predict) wrote it."""
    path = rundir.export_dir(run_dir) / rundir.PREPROCESSING
    if not path.is_file():
        return None
    try:
        return Preprocessing.from_json(rundir.read_json(path))
    except (OSError, ValueError, TypeError):
        return None


def save_preprocessing(run_dir: Path, prep: Preprocessing) -> Path:
    path = rundir.export_dir(run_dir) / rundir.PREPROCESSING
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_json(path, prep.to_json())
    return path


def load_calibration(run_dir: Path) -> Calibration | None:
    """The run's ``calibration.json``; None for a run trained before runs were calibrated. A
    damaged file is refused rather than silently read as temperature 1."""
    path = Path(run_dir) / rundir.CALIBRATION
    if not path.is_file():
        return None
    try:
        return Calibration.from_json(rundir.read_json(path))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise RunNotReadyError(
            f"{path} cannot be read ({e}); delete it to predict with uncalibrated probabilities"
        ) from None


def recompute_test_predictions(run_dir: Path) -> TestPredictions:
    """What ``test_predictions.csv`` holds, for a run that ran before runs saved it: its tested
    model run on its test windows, rebuilt from its config (and checked against its split
    report), with its calibration temperature (1 for a run from before calibration)."""
    run = FinishedRun(run_dir)
    data = run.data
    scored = run.trainer.evaluate(run.model, data.test.X, data.test.y, data.prepare)
    calibration = load_calibration(run.path)
    temperature = calibration.temperature if calibration is not None else 1.0
    index = np.asarray(data.test.index)
    return TestPredictions(
        window=index,
        subject=np.asarray(data.data.subjects)[index],
        y_true=np.asarray(scored["y_true"]),
        probs=softmax(scored["logits"], temperature),
        class_names=data.class_names,
    )
