"""MLflow tracking of runs (``tracking=mlflow``): the settings, the run's record, the calls.

The reporter (:class:`har_bench.experiment.reporters.Mlflow`) drives one :class:`MlflowRun`
per run; the sweep callback (:mod:`har_bench.analysis.sweep`) opens and closes a multirun's
parent run, which its jobs find by a tag holding a key of the sweep directory (so it works
whichever process or machine a job runs in); ``har-bench export`` attaches its files to the run
that ``tracking.json`` in the run directory names.

Tracking never costs a run its results: MLflow is reached first with a short timeout and no
retries, and a failure then or later is one warning, after which tracking stops for that run
while the run goes on and writes its directory as usual. MLflow is imported only when tracking
is on (the ``[mlflow]`` extra), and no torch here: the sweep callback imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from har_bench.core.errors import MissingExtraError, UserError
from har_bench.core.fs import file_lock
from har_bench.runs import rundir
from har_bench.training import distributed

log = logging.getLogger(__name__)

INSTALL = "pip install 'har-bench[mlflow]'"
ROLE_TAG = "har_bench.role"  # "sweep" on a multirun's parent run, "run" on a run
RUN_DIR_TAG = "har_bench.run_dir"
SWEEP_TAG = "har_bench.sweep"  # a key of the sweep directory, on the parent and its children
SWEEP_DIR_TAG = "har_bench.sweep_dir"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: its UI nests a child under its parent
# The run directory's files sent as artifacts when a run ends (those that exist).
ARTIFACTS = (*rundir.RECORD_FILES, rundir.CONFUSION_PNG, rundir.CURVES_PNG)

# MLflow's HTTP client retries 7 times with exponential backoff, minutes per call on a server
# that is down: the first contact gets no retry and a short timeout, later calls a few quick
# retries. A value set in the environment wins.
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
CALL_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
_SQLITE = "sqlite:///"


@dataclass(frozen=True)
class MlflowTracking:
    """``configs/tracking/mlflow.yaml``: where and under which experiment runs are tracked."""

    tracking_uri: str
    experiment_name: str = "har-bench"
    # null: "<model>-<dataset>", and the job's folder for a sweep's job.
    run_name: str | None = None
    # Where a new experiment keeps its artifacts; null: the server's choice, or for a local
    # sqlite store the folder mlartifacts/ beside the database.
    artifact_location: str | None = None

    def __post_init__(self) -> None:
        for key in ("tracking_uri", "experiment_name", "run_name", "artifact_location"):
            value = getattr(self, key)
            required = key in ("tracking_uri", "experiment_name")
            if (value is None and not required) or (isinstance(value, str) and value.strip()):
                continue
            expected = "a non-empty string" if required else "null or a non-empty string"
            raise UserError(f"tracking.{key}={value!r} is invalid: expected {expected}")
        # Absolute, so that `har-bench export` run from another folder finds the same store.
        object.__setattr__(self, "tracking_uri", absolute_uri(self.tracking_uri))

    def default_artifact_location(self) -> str | None:
        if self.artifact_location is not None:
            return self.artifact_location
        db = local_database(self.tracking_uri)
        return (db.parent / "mlartifacts").as_uri() if db is not None else None


def absolute_uri(uri: str) -> str:
    """A local sqlite store's path made absolute; any other URI as it is."""
    db = local_database(uri)
    return f"{_SQLITE}{db}" if db is not None else uri


def local_database(uri: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` store (absolute), or None for any other store."""
    if not uri.startswith(_SQLITE):
        return None
    path = uri[len(_SQLITE) :]
    if path in ("", ":memory:"):
        return None
    return Path(path).expanduser().resolve()


def other_rank() -> bool:
    """A torchrun process other than rank 0: it trains into a throw-away directory and reports
    nothing (rank 0 tracks the run, and the sweep)."""
    return distributed.enabled() and distributed.rank() != 0


def require_mlflow() -> None:
    """The one error for ``tracking=mlflow`` without MLflow, before the run starts."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"tracking=mlflow needs mlflow: {INSTALL}") from None


def mlflow_installed() -> bool:
    try:
        require_mlflow()
    except MissingExtraError:
        return False
    return True


@contextlib.contextmanager
def http_settings(values: Mapping[str, str]) -> Iterator[None]:
    """MLflow's HTTP retry and timeout settings for the block, unless the user set them; the
    HTTP library's line per retry kept quiet (a failure that remains is our one warning)."""
    unset = [k for k in values if k not in os.environ]
    for key in unset:
        os.environ[key] = values[key]
    retries = logging.getLogger("urllib3.connectionpool")
    level = retries.level
    retries.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries.setLevel(level)
        for key in unset:
            os.environ.pop(key, None)


def reason(e: BaseException) -> str:
    """An exception as one short line: MLflow's messages about the network hold whole URLs and
    retry reports around the cause that matters (``[Errno 111] Connection refused``)."""
    text = " ".join(str(e).split())
    cause = re.search(r"\[Errno -?\d+\][^'\"()\]]*|(Read|Connect)TimeoutError|timed out", text)
    if cause:
        return cause.group(0).strip()
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# -- the record in the run directory -----------------------------------------------------------


def write_record(run_dir: Path, record: Mapping[str, str | None]) -> None:
    rundir.write_json(Path(run_dir) / rundir.TRACKING, {"mlflow": dict(record)})


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The MLflow run this run reported to (``tracking_uri``, ``experiment_id``, ``run_id``,
    ``parent_run_id``), or None when it was not tracked."""
    path = Path(run_dir) / rundir.TRACKING
    try:
        record = rundir.read_json(path).get("mlflow")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(record, dict) or not record.get("run_id") or not record.get("tracking_uri"):
        return None
    return record


# -- one run -----------------------------------------------------------------------------------


class MlflowRun:
    """One MLflow run: the first call that fails warns once and turns the rest into no-ops."""

    def __init__(
        self,
        client: Any,
        run_id: str,
        uri: str,
        warn: Callable[[str], None] = log.warning,
    ) -> None:
        self.client: Any = client
        self.run_id = run_id
        self.uri = uri
        self.warn = warn

    @property
    def active(self) -> bool:
        return self.client is not None

    def call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        if self.client is None:
            return None
        try:
            with http_settings(CALL_HTTP):
                return fn(self.client)
        except Exception as e:
            self.client = None
            self.warn(
                f"MLflow tracking stopped: {what} failed at {self.uri} ({reason(e)}); the run "
                "goes on and its directory keeps every result"
            )
            return None

    def log_metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(k), float(v), now, step) for k, v in values.items()]
        if metrics:
            self.call("logging metrics", lambda c: c.log_batch(self.run_id, metrics=metrics))

    def log_files(self, paths: Sequence[Path], artifact_path: str | None = None) -> int:
        """Upload the files that exist; returns how many were sent."""
        sent = 0
        for path in paths:
            if Path(path).is_file() and self.active:
                self.call(
                    f"uploading {Path(path).name}",
                    lambda c, p=path: c.log_artifact(self.run_id, str(p), artifact_path),
                )
                sent += self.active
        return sent

    def log_run_files(self, run_dir: Path, names: Sequence[str]) -> None:
        """The run directory's files ``names`` that exist, each under its own folder
        (``.hydra/config.yaml`` stays in ``.hydra/``)."""
        for name in names:
            folder = Path(name).parent.as_posix()
            self.log_files([Path(run_dir) / name], None if folder == "." else folder)

    def end(self, status: str) -> None:
        self.call("ending the run", lambda c: c.set_terminated(self.run_id, status))


def metric_key(key: str) -> str:
    """``key`` in the characters MLflow takes in a param or metric name."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    return re.sub(r"[^\w./\- ]", "_", str(key))[:MAX_ENTITY_KEY_LENGTH]


def _params(values: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    return [Param(metric_key(k), str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in values.items()]


def _tags(values: Mapping[str, Any]) -> dict[str, str]:
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    return {metric_key(k): str(v)[:MAX_TAG_VAL_LENGTH] for k, v in values.items()}


def _client_and_experiment(settings: MlflowTracking) -> tuple[Any, str]:
    """The client and the experiment's id (made if new): the first contact, kept short."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    db = local_database(settings.tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    with http_settings(PROBE_HTTP):
        client = MlflowClient(tracking_uri=settings.tracking_uri)
        experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        return client, experiment.experiment_id
    with http_settings(CALL_HTTP):
        try:
            return client, client.create_experiment(
                settings.experiment_name,
                artifact_location=settings.default_artifact_location(),
            )
        except MlflowException:  # made meanwhile by a parallel job
            experiment = client.get_experiment_by_name(settings.experiment_name)
            if experiment is None:
                raise
            return client, experiment.experiment_id


def start_run(
    settings: MlflowTracking,
    run_dir: Path,
    *,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    run_name: str,
    resume: bool,
    sweep_dir: Path | None = None,
) -> MlflowRun | None:
    """The MLflow run of ``run_dir``: a new one with ``params`` and ``tags`` (a child of the
    sweep's parent run for a sweep's job), or for a resumed run the one it reported to before.
    Recorded in ``tracking.json``. None, after one warning, when MLflow cannot be reached."""
    if other_rank():
        return None
    uri = settings.tracking_uri
    try:
        client, experiment_id = _client_and_experiment(settings)
        with http_settings(CALL_HTTP):
            previous = read_record(run_dir) if resume else None
            if previous is not None and previous["tracking_uri"] == uri:
                client.update_run(previous["run_id"], status="RUNNING")
                return MlflowRun(client, previous["run_id"], uri)
            parent = sweep_parent(client, experiment_id, sweep_dir) if sweep_dir else None
            all_tags = {**tags, ROLE_TAG: "run", RUN_DIR_TAG: str(run_dir)}
            if sweep_dir is not None and parent is not None:
                all_tags |= {
                    PARENT_TAG: parent,
                    SWEEP_TAG: sweep_key(sweep_dir),
                    SWEEP_DIR_TAG: str(sweep_dir),
                }
            run_id = client.create_run(
                experiment_id, run_name=settings.run_name or run_name, tags=_tags(all_tags)
            ).info.run_id
            write_record(
                run_dir,
                {
                    "tracking_uri": uri,
                    "experiment_id": experiment_id,
                    "run_id": run_id,
                    "parent_run_id": parent,
                },
            )
            client.log_batch(run_id, params=_params(params))  # chunked by the client
    except Exception as e:
        log.warning(
            "MLflow tracking off for this run: tracking at %s failed (%s); the run goes on and "
            "writes its directory as usual",
            uri,
            reason(e),
        )
        return None
    return MlflowRun(client, run_id, uri)


# -- sweeps ------------------------------------------------------------------------------------

_job_sweep: Path | None = None  # the sweep of the job running in this process


def enter_sweep_job(sweep_dir: Path | None) -> None:
    """Called by the sweep callback as each job starts (in the job's own process)."""
    global _job_sweep
    _job_sweep = Path(sweep_dir).resolve() if sweep_dir is not None else None


def sweep_of(run_dir: Path) -> Path | None:
    """The sweep directory ``run_dir`` is a job of, or None for a single run."""
    if _job_sweep is None:
        return None
    run_dir = Path(run_dir).resolve()
    return _job_sweep if run_dir != _job_sweep and run_dir.is_relative_to(_job_sweep) else None


def sweep_key(sweep_dir: Path) -> str:
    """The sweep's tag value: a key of its directory (a path may hold quotes, which MLflow's
    search syntax would not take)."""
    return hashlib.sha256(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:20]


def sweep_parent(
    client: Any, experiment_id: str, sweep_dir: Path, create: bool = True
) -> str | None:
    """The id of the sweep's parent run, found by its tag, made if missing (and ``create``).
    The lock keeps two parallel jobs of one machine from both making one."""
    key = sweep_key(sweep_dir)
    query = f"tags.`{SWEEP_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'sweep'"
    with file_lock(Path(sweep_dir) / "mlflow-parent"):
        found = client.search_runs([experiment_id], filter_string=query, max_results=1)
        if found:
            return str(found[0].info.run_id)
        if not create:
            return None
        tags = {ROLE_TAG: "sweep", SWEEP_TAG: key, SWEEP_DIR_TAG: str(sweep_dir)}
        run = client.create_run(experiment_id, run_name=f"sweep {Path(sweep_dir).name}", tags=tags)
        return str(run.info.run_id)


def begin_sweep(settings: MlflowTracking, sweep_dir: Path) -> None:
    """The multirun's parent run, made before any job starts (found again for a sweep re-run
    into its directory). Without MLflow nothing happens here: each job reports it."""
    if other_rank() or not mlflow_installed():
        return
    try:
        client, experiment_id = _client_and_experiment(settings)
        with http_settings(CALL_HTTP):
            parent = sweep_parent(client, experiment_id, sweep_dir)
            client.update_run(parent, status="RUNNING")
    except Exception as e:
        log.warning(
            "MLflow: no parent run for the sweep (%s at %s); each job tries on its own",
            reason(e),
            settings.tracking_uri,
        )


def end_sweep(
    settings: MlflowTracking, sweep_dir: Path, failed: bool, files: Sequence[Path] = ()
) -> None:
    """The parent run's files (the sweep summary) and its end: FAILED when a job failed."""
    if other_rank() or not mlflow_installed():
        return
    try:
        client, experiment_id = _client_and_experiment(settings)
        with http_settings(CALL_HTTP):
            parent = sweep_parent(client, experiment_id, sweep_dir, create=False)
    except Exception as e:
        log.warning("MLflow: the sweep's parent run was not ended (%s)", reason(e))
        return
    if parent is None:
        return
    run = MlflowRun(client, parent, settings.tracking_uri)
    run.log_files(files)
    run.end("FAILED" if failed else "FINISHED")


# -- after the run -----------------------------------------------------------------------------


def attach_files(
    run_dir: Path, files: Sequence[Path], artifact_path: str, say: Callable[[str], None]
) -> bool:
    """Upload ``files`` to the MLflow run that ``run_dir`` reported to, under
    ``artifact_path``; nothing for a run that was not tracked. A failure is one line through
    ``say``, never an error: the files are in the run directory either way."""
    record = read_record(run_dir)
    if record is None:
        return False
    run_id, uri = record["run_id"], record["tracking_uri"]
    if not mlflow_installed():
        say(f"note: not attached to MLflow run {run_id}: MLflow is not installed ({INSTALL})")
        return False
    from mlflow import MlflowClient

    try:
        with http_settings(PROBE_HTTP):
            client = MlflowClient(tracking_uri=uri)
            client.get_run(run_id)
    except Exception as e:
        say(f"warning: not attached to MLflow run {run_id} at {uri} ({reason(e)})")
        return False
    run = MlflowRun(client, run_id, uri, warn=lambda msg: say(f"warning: {msg}"))
    sent = run.log_files(files, artifact_path)
    if run.active:
        say(f"attached {sent} files to MLflow run {run_id} ({artifact_path}/) at {uri}")
    return run.active
