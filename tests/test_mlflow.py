"""tracking=mlflow: a run, a sweep and an export read back from MLflow with MlflowClient, against
a real tracking server started here (127.0.0.1, sqlite backend) and a local sqlite store; a
server that cannot be reached costs one warning, never the run."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import SMALL, assert_one_line_error, in_process_cli

from har_bench.runs import rundir, tracking
from har_bench.runs.tracking import MlflowTracking

needs_mlflow = pytest.mark.skipif(
    not tracking.mlflow_installed(), reason=f"MLflow is not installed ({tracking.INSTALL})"
)
TWO_EPOCHS = [*(a for a in SMALL if not a.startswith("trainer.max_epochs")), "trainer.max_epochs=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _closed_uri() -> str:
    """A loopback URL nothing listens on: every request is refused at once."""
    return f"http://127.0.0.1:{_free_port()}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, sqlite backend and artifacts in a tmp dir."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    with open(root / "server.log", "w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--workers",
                "1",
            ],
            cwd=root,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the server's workers go with it at the end
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while not _answers(f"{url}/health"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"mlflow server did not start:\n{(root / 'server.log').read_text()}"
                    )
                time.sleep(0.5)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A sqlite store without a server, made once: its first use creates MLflow's tables."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow_local') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / rundir.TRACKING).read_text())["mlflow"]


def _run_dir(tmp_path: Path) -> Path:
    (metrics,) = (tmp_path / "outputs").glob(f"*/*/{rundir.METRICS}")
    return metrics.parent


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def _mlflow_warnings(run_dir: Path) -> list[str]:
    log = (run_dir / "train.log").read_text()
    return [line for line in log.splitlines() if "[WARNING]" in line and "MLflow" in line]


# -- without a server --------------------------------------------------------------------------


def test_tracking_is_off_by_default(compose_cfg):
    from har_bench.experiment.components import from_config
    from har_bench.experiment.spec import Choices

    assert not compose_cfg().get("tracking")
    assert from_config(compose_cfg(), Choices()).tracking is None


def test_tracking_settings_point_at_a_local_store_in_the_outputs_folder(compose_cfg, tmp_path):
    from har_bench.experiment.components import from_config
    from har_bench.experiment.spec import Choices

    choices = Choices.of({"model": "resnet18", "dataset": "synthetic", "hydra/launcher": "basic"})
    tracked = from_config(compose_cfg("tracking=mlflow", "model=resnet18"), choices).tracking
    assert tracked is not None
    db = tmp_path / "outputs" / "mlflow.db"
    assert tracked.settings.tracking_uri == f"sqlite:///{db}"
    assert tracked.settings.default_artifact_location() == (db.parent / "mlartifacts").as_uri()
    assert tracked.params["optimizer.lr"] == compose_cfg().optimizer.lr
    assert tracked.tags == {"model": "resnet18", "dataset": "synthetic"}


def test_a_relative_sqlite_store_is_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = MlflowTracking("sqlite:///outputs/mlflow.db")
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    assert MlflowTracking("http://host:5000").tracking_uri == "http://host:5000"


def test_missing_mlflow_is_one_error_line_before_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(*SMALL, "tracking=mlflow")
    assert_one_line_error(code, err, "tracking=mlflow", "pip install 'har-bench[mlflow]'")
    metrics = json.loads((_run_dir(tmp_path) / rundir.METRICS).read_text())
    assert metrics["status"] == "failed" and metrics["user_error"] is True
    assert not list(_run_dir(tmp_path).glob("*.csv"))  # stopped before any data was read


@needs_mlflow
def test_params_are_batched_and_cut_to_mlflows_limits(local_store, tmp_path):
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    params = {f"group.key_{i}": i for i in range(MAX_PARAMS_TAGS_PER_BATCH * 2 + 5)}
    params["dataset.notes"] = "x" * (MAX_PARAM_VAL_LENGTH + 100)
    params["dataset.mean[0]"] = 0.5  # a character MLflow does not take in a name
    run = tracking.start_run(
        MlflowTracking(local_store, experiment_name="limits"),
        tmp_path,
        params=params,
        tags={"model": "resnet18"},
        run_name="limits",
        resume=False,
    )
    assert run is not None
    logged = _client(local_store).get_run(run.run_id).data.params
    assert len(logged) == len(params)
    assert len(logged["dataset.notes"]) == MAX_PARAM_VAL_LENGTH
    assert logged["dataset.mean_0_"] == "0.5"
    assert _record(tmp_path)["run_id"] == run.run_id


@needs_mlflow
def test_a_resumed_run_reports_to_the_same_mlflow_run(local_store, tmp_path):
    settings = MlflowTracking(local_store, experiment_name="resume")
    first = tracking.start_run(
        settings, tmp_path, params={"a": 1}, tags={}, run_name="r", resume=False
    )
    assert first is not None
    first.log_metrics({"train_loss": 1.0}, step=1)
    first.end("KILLED")
    again = tracking.start_run(
        settings, tmp_path, params={"a": 2}, tags={}, run_name="r", resume=True
    )
    assert again is not None and again.run_id == first.run_id
    client = _client(local_store)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    assert client.get_run(first.run_id).data.params == {"a": "1"}  # params are logged once
    assert len(client.search_runs([client.get_experiment_by_name("resume").experiment_id])) == 1


@needs_mlflow
def test_unreachable_server_is_one_warning_without_a_stall(tmp_path, caplog):
    settings = MlflowTracking(_closed_uri())
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=tracking.__name__):
        run = tracking.start_run(
            settings, tmp_path, params={"a": 1}, tags={}, run_name="r", resume=False
        )
    assert run is None
    assert time.monotonic() - t0 < 15  # MLflow's own retries would take minutes
    (warning,) = caplog.records
    assert settings.tracking_uri in warning.getMessage()
    assert not (tmp_path / rundir.TRACKING).exists()


@needs_mlflow
def test_a_server_lost_mid_run_is_one_warning_then_silence(tmp_path, caplog):
    from mlflow import MlflowClient

    uri = _closed_uri()
    run = tracking.MlflowRun(MlflowClient(tracking_uri=uri), "0" * 32, uri)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=tracking.__name__):
        run.log_metrics({"train_loss": 1.0}, step=1)
        run.log_metrics({"train_loss": 0.5}, step=2)
        (tmp_path / "metrics.json").write_text("{}")
        run.log_run_files(tmp_path, [rundir.METRICS])
        run.end("FINISHED")
    assert time.monotonic() - t0 < 30
    assert len(caplog.records) == 1 and not run.active


@pytest.mark.slow
@needs_mlflow
def test_a_run_in_the_default_local_store(tmp_path, monkeypatch, capsys):
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(*TWO_EPOCHS, "tracking=mlflow")
    assert code == 0, err
    run_dir = _run_dir(tmp_path)
    record = _record(run_dir)
    assert record["tracking_uri"] == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    client = _client(record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert rundir.METRICS in _artifacts(client, run.info.run_id)
    assert list((tmp_path / "outputs" / "mlartifacts").rglob(rundir.METRICS))
    assert not _mlflow_warnings(run_dir)


@pytest.mark.slow
@needs_mlflow
def test_unreachable_server_run_completes_with_one_warning(tmp_path, monkeypatch, capsys):
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(*SMALL, "tracking=mlflow", f"tracking.tracking_uri={_closed_uri()}")
    assert code == 0, err
    run_dir = _run_dir(tmp_path)
    assert json.loads((run_dir / rundir.METRICS).read_text())["status"] == "completed"
    for name in tracking.ARTIFACTS:
        assert (run_dir / name).is_file(), name
    assert len(_mlflow_warnings(run_dir)) == 1
    assert not (run_dir / rundir.TRACKING).exists()


# -- against a tracking server -----------------------------------------------------------------


@pytest.mark.slow
@needs_mlflow
def test_a_run_on_a_server_then_its_export_in_the_same_mlflow_run(
    server, tmp_path, monkeypatch, capsys
):
    from har_bench.deploy.export import export_run

    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(
        *TWO_EPOCHS,
        "tracking=mlflow",
        f"tracking.tracking_uri={server}",
        "tracking.experiment_name=single",
    )
    assert code == 0, err
    run_dir = _run_dir(tmp_path)
    record = _record(run_dir)
    assert record["tracking_uri"] == server
    client = _client(server)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == client.get_experiment_by_name("single").experiment_id
    # The config as params, the group choices as tags.
    assert run.data.params["model.stem_width"] == "8"
    assert run.data.params["trainer.max_epochs"] == "2"
    assert run.data.tags["model"] == "resnet18" and run.data.tags["dataset"] == "synthetic"
    assert run.data.tags[tracking.RUN_DIR_TAG] == str(run_dir)
    # Curves per epoch; the final figures once, equal to metrics.json's.
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    metrics = json.loads((run_dir / rundir.METRICS).read_text())
    assert run.data.metrics["final/test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.metrics["final/best_epoch"] == metrics["best_epoch"]
    # The run directory's key files, metrics.json with its final status among them.
    artifacts = _artifacts(client, run.info.run_id)
    for name in (
        rundir.METRICS,
        rundir.HISTORY,
        rundir.CONFUSION_CSV,
        rundir.CONFUSION_PNG,
        rundir.SPLIT_REPORT,
        rundir.SAVED_CONFIG,
    ):
        assert name in artifacts, name
    sent = Path(client.download_artifacts(run.info.run_id, rundir.METRICS, str(tmp_path)))
    assert json.loads(sent.read_text())["status"] == "completed"

    lines: list[str] = []
    export_run(run_dir, repeats=2, calibration=16, log=lines.append)
    exported = _artifacts(client, run.info.run_id, rundir.EXPORT_DIR)
    assert f"{rundir.EXPORT_DIR}/{rundir.ONNX_FILES['fp32']}" in exported
    assert f"{rundir.EXPORT_DIR}/{rundir.EXPORT_REPORT}" in exported
    assert any(record["run_id"] in line for line in lines if line.startswith("attached"))
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no second run


@pytest.mark.slow
@needs_mlflow
def test_a_sweep_is_one_parent_run_with_a_child_per_job(server, tmp_path, monkeypatch, capsys):
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(
        "-m",
        *SMALL,
        "seed=0,1",
        "tracking=mlflow",
        f"tracking.tracking_uri={server}",
        "tracking.experiment_name=sweep",
    )
    assert code == 0, err
    client = _client(server)
    experiment = client.get_experiment_by_name("sweep").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "sweep"]
    children = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    assert {c.info.status for c in children} == {"FINISHED"}
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert parent.data.tags[tracking.SWEEP_DIR_TAG] == str(sweep_dir)
    assert "sweep_summary.csv" in _artifacts(client, parent.info.run_id)
    for child in children:
        job_dir = Path(child.data.tags[tracking.RUN_DIR_TAG])
        assert job_dir.parent == sweep_dir
        assert _record(job_dir)["parent_run_id"] == parent.info.run_id


def test_tracking_is_bookkeeping_not_part_of_the_experiment(compose_cfg):
    """A run saved before tracking existed, or run untracked, is the same experiment as a
    tracked one: resume, sweep re-runs and compare treat them as one."""
    from omegaconf import OmegaConf

    from har_bench.runs.resume import config_differences

    saved = OmegaConf.to_container(compose_cfg(), resolve=False)
    del saved["tracking"]  # as saved before the group existed
    tracked = OmegaConf.to_container(compose_cfg("tracking=mlflow"), resolve=False)
    assert config_differences(saved, tracked) == []


def test_only_rank_0_of_a_torchrun_job_tracks(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with caplog.at_level(logging.WARNING):
        run = tracking.start_run(
            MlflowTracking(_closed_uri()),
            tmp_path,
            params={},
            tags={},
            run_name="r",
            resume=False,
        )
    assert run is None and not caplog.records  # never tried: rank 0 reports the run
    assert not (tmp_path / rundir.TRACKING).exists()


@pytest.mark.slow
@needs_mlflow
def test_a_resumed_run_goes_on_in_the_same_mlflow_run(server, tmp_path, monkeypatch, capsys):
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    tracked = [
        "tracking=mlflow",
        f"tracking.tracking_uri={server}",
        "tracking.experiment_name=resumed",
    ]
    code, err = main(*TWO_EPOCHS, "scheduler=none", *tracked)  # a schedule that can grow
    assert code == 0, err
    run_dir = _run_dir(tmp_path)
    run_id = _record(run_dir)["run_id"]
    metrics = json.loads((run_dir / rundir.METRICS).read_text())
    metrics.update(status="interrupted", error="interrupted by SIGINT")  # as a Ctrl-C leaves it
    (run_dir / rundir.METRICS).write_text(json.dumps(metrics))

    code, err = main(f"trainer.resume={run_dir}", "trainer.max_epochs=3", *tracked)
    assert code == 0, err
    assert _record(run_dir)["run_id"] == run_id
    client = _client(server)
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("resumed").experiment_id
    assert len(client.search_runs([experiment])) == 1
