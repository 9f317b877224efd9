"""The content of a run's artifacts: history, confusion matrix, curves, environment, TensorBoard.

File names are :mod:`har_bench.runs.rundir`'s. Files are written to a temp name and renamed, so a
crash never leaves half an artifact.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from har_bench.core.calibration import PROBABILITY_PREFIX, probability_column
from har_bench.core.errors import UserError
from har_bench.core.fs import atomic_write
from har_bench.core.metrics import row_normalise
from har_bench.runs.rundir import (
    CONFUSION_CSV,
    CONFUSION_PNG,
    CURVES_PNG,
    HISTORY,
    REJECT_CURVE_CSV,
    REJECT_CURVE_PNG,
    TEST_PREDICTIONS,
)


def write_history(run_dir: Path, history: Sequence[Mapping[str, float]]) -> None:
    atomic_write(
        run_dir / HISTORY, lambda tmp: pd.DataFrame(list(history)).to_csv(tmp, index=False)
    )


def write_confusion_matrix(run_dir: Path, cm: np.ndarray, class_names: Sequence[str]) -> None:
    """Counts as CSV (true class = rows) and a row-normalised, labelled PNG."""
    df = pd.DataFrame(cm, index=list(class_names), columns=list(class_names))
    df.index.name = "true\\predicted"
    atomic_write(run_dir / CONFUSION_CSV, df.to_csv)
    fig = confusion_matrix_figure(cm, class_names)
    save_figure(fig, run_dir / CONFUSION_PNG)


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str], title: str = "") -> Any:
    plt = pyplot()
    norm = row_normalise(cm)
    k = len(class_names)
    size = max(4.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion matrix (row-normalised, n={int(cm.sum())})")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    return fig


def write_training_curves(run_dir: Path, history: Sequence[Mapping[str, float]]) -> None:
    plt = pyplot()
    df = pd.DataFrame(list(history))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        ax_loss.plot(df["epoch"], df[f"{split}_loss"], style, label=split, markersize=3)
        ax_acc.plot(df["epoch"], df[f"{split}_accuracy"], style, label=split, markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, run_dir / CURVES_PNG)


def write_reject_curve(run_dir: Path, curve: Mapping[str, Sequence[float]]) -> None:
    """Coverage and accuracy per reject threshold on the test set, as CSV and a PNG."""
    df = pd.DataFrame(dict(curve))
    atomic_write(
        run_dir / REJECT_CURVE_CSV,
        lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"),
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(df["coverage"], df["accuracy"], "-o", markersize=2)
    for p in (0.5, 0.7, 0.9):
        row = df.iloc[(df["threshold"] - p).abs().argmin()]
        ax.annotate(f"P={p:g}", (row["coverage"], row["accuracy"]), fontsize=8)
    ax.set(
        xlabel="coverage (share of test windows kept)",
        ylabel="accuracy on the kept windows",
        title="--reject P: calibrated top probability >= P kept",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, run_dir / REJECT_CURVE_PNG)


@dataclass(frozen=True)
class TestPredictions:
    """``test_predictions.csv``: one row per test window, in the order the run scored them.

    ``window`` is the window's index in the dataset as loaded (so two runs' rows can be matched
    and checked to be the same windows), ``subject`` its subject, ``true`` and ``predicted`` class
    names, then ``p_<class>``: the calibrated probabilities (softmax of the logits divided by the
    run's temperature, calibration.json), the ones ``har-bench predict`` gives.
    """

    window: np.ndarray  # [N] int
    subject: np.ndarray  # [N] int
    y_true: np.ndarray  # [N] class indices
    probs: np.ndarray  # [N, K]
    class_names: list[str]

    __test__ = False  # not a pytest test class, whatever its name
    # Written as 9 significant digits: a float32 read back is the same number.
    FLOAT_FORMAT = "%.9g"
    COLUMNS = ("window", "subject", "true", "predicted")

    def __len__(self) -> int:
        return len(self.y_true)

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def to_frame(self) -> pd.DataFrame:
        names = np.asarray(self.class_names, dtype=object)
        frame = pd.DataFrame(
            {
                "window": np.asarray(self.window, dtype=np.int64),
                "subject": np.asarray(self.subject, dtype=np.int64),
                "true": names[np.asarray(self.y_true, dtype=np.int64)],
                "predicted": names[self.y_pred],
            }
        )
        probs = pd.DataFrame(
            np.asarray(self.probs, dtype=np.float64),
            columns=[probability_column(n) for n in self.class_names],
        )
        return pd.concat([frame, probs], axis=1)

    def write(self, run_dir: Path) -> None:
        frame = self.to_frame()
        atomic_write(
            Path(run_dir) / TEST_PREDICTIONS,
            lambda tmp: frame.to_csv(tmp, index=False, float_format=self.FLOAT_FORMAT),
        )

    @classmethod
    def read(cls, run_dir: Path) -> TestPredictions:
        """The run's file; a UserError naming it when it is damaged (a missing file is the
        caller's to handle: runs from before it was written have none)."""
        path = Path(run_dir) / TEST_PREDICTIONS
        text_columns = {"true": str, "predicted": str}
        try:
            frame = pd.read_csv(path, dtype=text_columns, keep_default_na=False)
            prob_columns = [c for c in frame.columns if c.startswith(PROBABILITY_PREFIX)]
            names = [c[len(PROBABILITY_PREFIX) :] for c in prob_columns]
            missing = [c for c in cls.COLUMNS if c not in frame.columns]
            if missing or not names:
                raise ValueError(f"no column {(missing or ['p_<class>'])[0]}")
            index = {name: k for k, name in enumerate(names)}
            unknown = sorted(set(frame["true"]) - set(index))
            if unknown:
                raise ValueError(f"true class {unknown[0]!r} has no probability column")
            probs = frame[prob_columns].to_numpy(dtype=np.float64)
            if not np.isfinite(probs).all():
                raise ValueError("a probability is not a finite number")
            return cls(
                window=frame["window"].to_numpy(dtype=np.int64),
                subject=frame["subject"].to_numpy(dtype=np.int64),
                y_true=frame["true"].map(index).to_numpy(dtype=np.int64),
                probs=probs,
                class_names=names,
            )
        except (ValueError, TypeError, pd.errors.ParserError) as e:
            raise UserError(f"{path} cannot be read: {e}") from None


def pyplot() -> Any:
    # Imported on first use: matplotlib costs start-up time and needs no display here.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``fig`` atomically; ``metadata`` goes into the PNG's text chunks."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, metadata=metadata))
    finally:
        pyplot().close(fig)


def processor_name() -> str:
    """The CPU's model name (timings are only comparable on the same one): Linux's
    /proc/cpuinfo, which the standard library does not read, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    """The machine and torch build a timing was measured on."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": processor_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def environment_info(device: str) -> dict[str, Any]:
    from importlib.metadata import version

    import sklearn
    import torch

    from har_bench import __version__

    info: dict[str, Any] = {
        "har_bench": __version__,
        "python": sys.version.split()[0],
        **host_info(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit_learn": sklearn.__version__,
        "hydra": version("hydra-core"),  # by the distribution: artifacts know no Hydra
        "device": device,
        "command": sys.argv,
        "git_commit": _git_commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


class TensorBoardLogger:
    """Scalars per epoch, figures and one HParams session, all in the run's own event file.

    ``SummaryWriter.add_hparams`` writes into a new timestamped sub-run, so every run would show
    twice in TensorBoard; here the session summaries go into the run's own writer instead.
    """

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        """``purge_step``: on resume, hide the earlier event files' points from this step on,
        so an epoch logged both before the crash and after the resume shows once."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    @contextmanager
    def _naming_the_file(self) -> Iterator[None]:
        # The event writer's thread reports a failed write (a full disk) at the next flush,
        # without a file name.
        try:
            yield
        except OSError as e:
            if e.errno is None or e.filename:
                raise
            event_writer = self.writer.file_writer.event_writer
            name = getattr(event_writer, "_file_name", None) or self.writer.log_dir
            raise OSError(e.errno, e.strerror, str(name)) from e

    def log_epoch(self, row: Mapping[str, float]) -> None:
        epoch = int(row["epoch"])
        with self._naming_the_file():
            for key, value in row.items():
                if key == "epoch" or value is None or not np.isfinite(value):
                    continue
                split, _, name = key.partition("_")
                tag = f"{split}/{name}" if split in ("train", "val") else f"perf/{key}"
                self.writer.add_scalar(tag, value, epoch)
            self.writer.flush()

    def log_confusion_matrix(self, cm: np.ndarray, class_names: Sequence[str], step: int) -> None:
        figure = confusion_matrix_figure(cm, class_names)
        with self._naming_the_file():
            self.writer.add_figure("test/confusion_matrix", figure, step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """One HParams session: the config values, and ``metrics`` as ``hparams/*`` scalars."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        values = {k: _hparam_value(v) for k, v in hparams.items() if v is not None}
        # The experiment summary is left out: TensorBoard takes the first one it finds as the
        # whole experiment, so one run's keys would hide those only other runs have (an lstm's
        # next to a resnet's). Without it the plugin unites every run's session keys.
        _, session_start, session_end = hparams_summaries(values, dict(metrics))
        with self._naming_the_file():
            for summary in (session_start, session_end):
                self.writer.file_writer.add_summary(summary)
            # The metric columns of the HPARAMS tab are these scalar tags of the same run.
            for key, value in metrics.items():
                if value is not None and np.isfinite(value):
                    self.writer.add_scalar(f"hparams/{key}", float(value), 0)
            self.writer.flush()

    def close(self) -> None:
        with self._naming_the_file():
            self.writer.close()


def _hparam_value(value: Any) -> int | float | str:
    # hparams() files a bool as a number (bool is an int); as text it keeps a true/false filter.
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, int | float | str) else str(value)
