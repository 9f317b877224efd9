"""The data stage: load, split, check the split (writing ``split_report.json``) and standardise
into tensors; the checks of the parts against the training settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from har_bench.core.errors import UserError
from har_bench.data.base import HARData
from har_bench.data.images import channel_stats
from har_bench.data.splits import Split, assert_clean, split_report, standardise
from har_bench.experiment.pretrained import WeightsSource
from har_bench.experiment.spec import Training
from har_bench.runs import rundir
from har_bench.training.image_transforms import ImageInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    X: torch.Tensor
    y: torch.Tensor
    # The dataset's window indices of these rows, so what a model trained on can be traced back
    # to subjects (the refit's record).
    index: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def joined(cls, *parts: Part) -> Part:
        """The rows of ``parts`` one after the other."""
        return cls(
            torch.cat([p.X for p in parts]),
            torch.cat([p.y for p in parts]),
            np.concatenate([p.index for p in parts]),
        )


@dataclass
class PreparedData:
    """The dataset split into standardised tensors (statistics from the training part only).

    Images stay uint8 at their stored size; ``prepare`` turns a batch of them into the
    network's input on the device (resize, centre crop, normalisation).
    """

    data: HARData
    split: Split
    train: Part
    val: Part
    test: Part
    sample: torch.Tensor = field(repr=False)  # one standardised window [1, C, ...]
    # The per-channel standardisation (training part's statistics), for the augmentation.
    mean: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    std: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    prepare: ImageInput | None = None  # images: stored batch -> network input

    @property
    def class_names(self) -> list[str]:
        return list(self.data.class_names)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Stored windows or images as the model takes them."""
        return self.prepare(x) if self.prepare is not None else x


# Below this many validation windows, selecting an epoch on them is warned about.
SMALL_VALIDATION = 50


def prepare_data(
    load_data: Callable[[], HARData],
    make_split: Callable[[HARData], Split],
    split_name: str | None,
    run_dir: Path,
    pretrained: WeightsSource | None = None,
) -> PreparedData:
    """Load, split, check the split (writing ``split_report.json``) and standardise.

    Images are not standardised here but per batch (:func:`image_input`); with ``pretrained``
    weights their normalisation is the one the weights were trained with.
    """
    t0 = time.perf_counter()
    data = load_data()
    split = make_split(data)
    # Written before the check so a leaking split can be inspected; then it fails the run
    # (unless split=random with allow_leakage=true, which only logs and records it).
    report = split_report(data, split, name=split_name)
    rundir.write_json(run_dir / rundir.SPLIT_REPORT, report)
    assert_clean(report)
    check_split_labels(data, split, split_name)
    if data.image is not None:  # [N, C, H, W]: no samples in time
        items, shape = "images", "{} x {} x {} stored".format(*data.X.shape[1:])
    else:
        items, shape = "windows", f"{data.num_channels} channels x {data.window_length} samples"
    log.info(
        "dataset %s: %d %s, %s, %d classes; split train/val/test = %d/%d/%d %s (%.1fs)",
        data.name,
        len(data.X),
        items,
        shape,
        data.num_classes,
        len(split.train),
        len(split.val),
        len(split.test),
        items,
        time.perf_counter() - t0,
    )
    return tensors(data, split, pretrained)


def tensors(data: HARData, split: Split, pretrained: WeightsSource | None = None) -> PreparedData:
    """The split's parts as tensors, standardised with its training part's statistics (a
    cross-validation fold's own, for a fold)."""
    y_t = torch.from_numpy(data.y.astype(np.int64))
    if data.image is not None:
        prepare = image_input(data, split, pretrained)
        X_t = torch.from_numpy(data.X)  # uint8, stored size: no copy until the parts
        parts = [Part(X_t[idx], y_t[idx], idx) for idx in (split.train, split.val, split.test)]
        return PreparedData(
            data,
            split,
            *parts,
            sample=prepare(X_t[:1]),
            mean=np.asarray(prepare.mean, dtype=np.float32),
            std=np.asarray(prepare.std, dtype=np.float32),
            prepare=prepare,
        )
    X, mean, std = standardise(data.X, split.train)
    X_t = torch.from_numpy(X)
    parts = [Part(X_t[idx], y_t[idx], idx) for idx in (split.train, split.val, split.test)]
    return PreparedData(data, split, *parts, sample=X_t[:1], mean=mean, std=std)


def image_input(data: HARData, split: Split, pretrained: WeightsSource | None) -> ImageInput:
    """The per-batch input transform of an image dataset. Its normalisation, by priority:
    ``dataset.mean``/``std``; the pretrained weights' (ImageNet's for torchvision's); the
    training images' own statistics."""
    spec = data.image
    assert spec is not None
    if spec.mean is not None and spec.std is not None:
        mean, std, source = spec.mean, spec.std, "dataset"
    elif pretrained is not None:
        mean, std, source = pretrained.normalisation()
    else:
        m, s = channel_stats(data.X, split.train)
        mean, std, source = tuple(m), tuple(s), "train"
    if len(mean) != data.num_channels:
        raise UserError(
            f"the image normalisation ({source}) has {len(mean)} channels, the images "
            f"{data.num_channels}"
        )
    prepare = ImageInput(spec.size, mean, std, spec.crop_ratio, source)
    log.info(
        "images: stored uint8 %s, network input %s (crop_ratio %g), normalised with %s mean/std",
        "x".join(map(str, data.X.shape[2:])),
        "x".join(map(str, spec.size)),
        spec.crop_ratio,
        source,
    )
    return prepare


def check_split_labels(data: HARData, split: Split, split_name: str | None = None) -> None:
    """Training and test parts must have windows, and every test class must occur in training."""
    parts = {
        part: np.asarray(idx, dtype=np.int64)
        for part, idx in (("train", split.train), ("val", split.val), ("test", split.test))
    }
    sizes = {part: len(idx) for part, idx in parts.items()}
    name = f"split={split_name}" if split_name else "split"
    for part in ("train", "test"):
        if sizes[part] == 0:
            raise UserError(
                f"{name}: the {part} part has no windows (train/val/test = "
                f"{sizes['train']}/{sizes['val']}/{sizes['test']} windows); check the split's "
                "subjects or fractions against the dataset"
            )
    train_classes = set(np.unique(data.y[parts["train"]]).tolist())
    for part in ("test", "val"):
        idx = parts[part]
        unseen = sorted(set(np.unique(data.y[idx]).tolist()) - train_classes)
        if not unseen:
            continue
        names = [data.class_names[k] for k in unseen]
        if part == "test":
            raise UserError(
                f"{name}: test labels {names} never occur in the training "
                f"part ({len(train_classes)} of {data.num_classes} classes there), so no model "
                "can learn them; choose other test subjects or a dataset with those classes "
                "in training"
            )
        log.warning("validation labels %s never occur in the training part", names)


def check_selection(training: Training, data: PreparedData, trained_by_loop: bool) -> None:
    """Early stopping and a refit select on the validation part: without one (a split with
    ``val_fraction=0``) they are refused rather than silently doing nothing. A best epoch picked
    on a handful of validation windows is warned about (a model fitted outside the training
    loop picks none)."""
    n_val = len(data.val.y)
    if 0 < n_val < SMALL_VALIDATION and trained_by_loop and training.selects_on_validation:
        log.warning(
            "the validation part has only %d windows: its accuracy moves in steps of %.3f, so "
            "a best epoch picked on it is mostly noise; prefer a fixed schedule "
            "(trainer.patience=null) with trainer.refit=true",
            n_val,
            1 / n_val,
        )
    if n_val:
        return
    for wanted, setting, off in (
        (training.trainer.patience is not None, f"trainer.patience={training.trainer.patience}",
         "trainer.patience=null"),
        (training.refit, "trainer.refit=true", "trainer.refit=false"),
    ):  # fmt: skip
        if wanted:
            raise UserError(
                f"{setting} needs a validation part, but the split has none "
                f"(split.val_fraction=0): set split.val_fraction=0.2 or {off}"
            )
