"""Every command in a ```bash block of README.md and docs/*.md, run as the docs show it, so the
docs cannot drift from the code.

The rules, for whoever adds a page or a command:

* **What a command is.** Each line of a ```bash block; a line ending in ``\\`` goes on with the
  next; a ``# ...`` comment is dropped. ``NAME="..."`` on a line of its own sets a variable that
  later lines of the block use as ``$NAME``.
* **Where and in which order.** Pages in the order README.md, then docs/*.md by name; commands
  in page order, all in one temporary folder that holds a copy of docs/, links to scripts/ and
  benchmarks/, and ``../shared`` pointing at the data beside the clone (the docs read local
  data from ``../shared/data/...``). Later commands find what earlier ones wrote
  (``hydra.run.dir=runs/watch``, then ``har-bench export runs/watch``), so run the whole module.
* **Placeholders.** ``RUN_DIR`` is the newest completed run (``outputs/<date>/<time>/`` or
  ``runs/<name>/``). ``SWEEP_DIR`` is the newest sweep (``outputs/multirun/<date>/<time>/``).
  ``recording.csv`` is written before each command naming it, from its run's
  ``export/preprocessing.json`` (the run's channels at its rate); ``my_data/`` is a folder of
  recordings in the columns docs/datasets.md shows. A ``trainer.resume=`` command continues a
  run this test trains just before and marks stopped (``RUN_DIR`` there is that run).
* **Smoke size.** A training command gets :data:`SMOKE` (replacing its own values of those
  keys). A sweep (``-m``) keeps the first value of each comma list; a preset that sweeps by
  itself (``hydra.sweeper.params``) is pinned to the first value of each parameter; an Optuna
  search runs one trial. A ``trainer.resume=`` command gets the overrides of the stopped run
  instead. ``export`` times :data:`EXPORT_REPEATS` rounds and fine-tunes one epoch.
* **Exit code.** 0, or N for a command whose comment starts with ``exit N`` (a failing example
  shown on purpose, e.g. ``har-bench model=resnet999   # exit 2: ...``); a failure is one
  ``error:`` line, never a traceback.
* **Skips.** :data:`SKIPPED` maps the first words of a command (as written) to the reason: a
  cluster, a GPU, the network, a server that runs until stopped, or ``make``/``source``, which
  set up the machine this test already runs on. A command reading ``../shared/data`` skips
  when that folder is absent. Any other command that cannot run here fails: add it to
  SKIPPED with its reason, or make it runnable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, SHARED_DATA
from hydra.core.global_hydra import GlobalHydra

from har_bench import cli
from har_bench.config import compose, override_key, parse_command_line

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

SMOKE = {
    "trainer.max_epochs": "1",
    "trainer.limit_train_batches": "2",
    "trainer.limit_eval_batches": "2",
    "trainer.progress": "false",
    "efficiency.latency_repeats": "1",
}
EXPORT_REPEATS = "3"
# The run that resume commands continue: trained here, then marked as stopped.
STOPPED = ["experiment=smoke", *(f"{k}={v}" for k, v in SMOKE.items())]

NETWORK = "downloads from the network (CIFAR-10 and torchvision's ImageNet weights)"
SKIPPED: dict[str, str] = {
    "make run": "trains the full default recipe after installing .venv from the package "
    "registry; CI runs `make test`, the same install path, from a fresh clone",
    "make test": "the test suite this test is part of (CI runs it from a fresh clone)",
    "make": "installs .venv from the package registry first; the targets' own commands "
    "(pytest, ruff, the benchmarks) run in CI and tests/test_makefile.py checks the install line",
    "source": "shell setup: puts .venv/bin on the PATH; this test calls the installed package",
    "tensorboard": "starts a web server that runs until stopped",
    "torchrun": "multi-GPU training (4 processes); DDP on 2 CPU processes is tested by "
    "tests/test_ddp.py",
    ".venv/bin/mutmut": "reads the mutants of a `make mutate` run (an hour of CPU; "
    "docs/mutation.md has its scores)",
    "har-bench -m hydra/launcher=slurm": "submits to a SLURM cluster",
    "har-bench dataset=uci_har dataset.root=null": "downloads UCI-HAR (network)",
    "har-bench experiment=cifar10_resnext50_quick": NETWORK,
    "har-bench experiment=cifar10_resnext50": NETWORK + "; trains on a GPU",
    "har-bench experiment=image_folder_resnext50": "downloads torchvision's ImageNet weights "
    "(network) and reads your own image folder",
    "har-bench model=resnext50 model.layout=2d_image model.weights=imagenet": NETWORK,
    "pip install": "installs from the package registry (network)",
    "python benchmarks/throughput.py": "a timing benchmark (minutes); docs/benchmarks.md",
    "python benchmarks/batching.py": "a timing benchmark (minutes); docs/benchmarks.md",
    "python benchmarks/time_to_accuracy.py": "a timing benchmark (full trainings, about 15 "
    "minutes); docs/benchmarks.md",
}


def skipped_by(text: str) -> str | None:
    """The SKIPPED key whose words begin the command's (the longest such key)."""
    words = text.split()
    keys = [k for k in SKIPPED if words[: len(k.split())] == k.split()]
    return max(keys, key=len, default=None)


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str  # as written, continuation lines joined, comment dropped
    comment: str
    variables: tuple[tuple[str, str], ...]  # NAME="..." lines before it in its block

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def expected_exit(self) -> int:
        m = re.match(r"exit (\d+)", self.comment)
        return int(m[1]) if m else 0

    def skip_reason(self) -> str | None:
        key = skipped_by(self.text)
        if key is not None:
            return SKIPPED[key]
        if "://" in self.text:
            return "reaches a server by URL (network)"
        if "../shared/data" in self.text and not SHARED_DATA.is_dir():
            return f"reads local data from ../shared/data, absent here ({SHARED_DATA})"
        return None


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment): a ``#`` after a blank and outside quotes starts the comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


VARIABLE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\S.*)$")


def commands(page: Path) -> list[Command]:
    found: list[Command] = []
    lines = page.read_text().splitlines()
    in_bash, variables, i = False, {}, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_bash, variables = (line.strip() == "```bash" and not in_bash), {}
            i += 1
            continue
        start = i
        while in_bash and line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        if not in_bash or not line.strip() or line.lstrip().startswith("#"):
            continue
        text, comment = split_comment(line.strip())
        text = " ".join(text.split())
        m = VARIABLE.match(text)
        if m and len(shlex.split(m[2])) == 1:
            variables[m[1]] = shlex.split(m[2])[0]
            continue
        name = page.relative_to(REPO).as_posix()
        found.append(Command(name, start + 1, text, comment, tuple(variables.items())))
    return found


ALL = [c for page in PAGES for c in commands(page)]


# --- the workspace and its placeholders -------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("docs")
    cwd = base / "clone"
    cwd.mkdir()
    shutil.copytree(REPO / "docs", cwd / "docs")
    for folder in ("scripts", "benchmarks"):
        (cwd / folder).symlink_to(REPO / folder)
    (base / "shared").symlink_to(SHARED_DATA.parent)
    write_recordings(cwd / "my_data")
    return cwd


def write_recordings(folder: Path) -> None:
    """Six subjects' recordings in docs/datasets.md's columns (subject, label, time, acc_*)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    frames = []
    for subject in range(1, 7):
        for k, label in enumerate(("walking", "sitting")):
            n = 400
            frames.append(
                pd.DataFrame(
                    {
                        "subject": subject,
                        "label": label,
                        "time": 100 * k + np.arange(n) / 50.0,
                        **{c: rng.normal(k, 1, n) for c in ("acc_x", "acc_y", "acc_z")},
                    }
                )
            )
    pd.concat(frames).to_csv(folder / "recordings.csv", index=False)


def newest(paths: Iterator[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime, default=None)


def completed(run_dir: Path) -> bool:
    return json.loads((run_dir / "metrics.json").read_text()).get("status") == "completed"


def last_run(cwd: Path) -> Path:
    runs = [
        p.parent
        for pattern in ("outputs/*/*/metrics.json", "runs/*/metrics.json")
        for p in cwd.glob(pattern)
        if "multirun" not in p.parts and completed(p.parent)
    ]
    found = newest(iter(runs))
    assert found is not None, "RUN_DIR: no completed run yet; a command before must train one"
    return found.relative_to(cwd)


def last_sweep(cwd: Path) -> Path:
    found = newest(cwd.glob("outputs/multirun/*/*"))
    assert found is not None, "SWEEP_DIR: no sweep yet; a command before must run one"
    return found.relative_to(cwd)


def stopped_run(cwd: Path) -> Path:
    """A completed smoke run marked as stopped by SIGINT after its last checkpoint."""
    code, err = run_in_process([*STOPPED])
    assert code == 0, err
    run_dir = newest(cwd.glob("outputs/*/*/metrics.json")).parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.update(status="interrupted", error="interrupted by SIGINT")
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir.relative_to(cwd)


def write_recording(cwd: Path, run_dir: str) -> None:
    """recording.csv for ``run_dir``: 30 s of noise in its channels at its rate."""
    prep_file = cwd / run_dir / "export" / "preprocessing.json"
    assert prep_file.is_file(), f"recording.csv: {prep_file} missing; export the run first"
    prep = json.loads(prep_file.read_text())
    rate = prep["sampling_rate_hz"] or 50.0
    n = int(30 * rate)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        rng.normal(size=(n, len(prep["channel_names"]))), columns=prep["channel_names"]
    )
    frame.insert(0, "time", np.arange(n) / rate)
    frame.to_csv(cwd / "recording.csv", index=False)


# --- shrinking a command to smoke size ----------------------------------------------------------


def first_values(override: str) -> str:
    """``key=a,b,c`` -> ``key=a`` (Hydra's own parser decides what is a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(override)
    if not parsed.is_sweep_override() or parsed.is_interval_sweep():
        return override
    try:
        first = next(iter(parsed.sweep_string_iterator()))
    except Exception:  # a range or a tagged choice of Optuna's: its sweeper handles it
        return override
    return f"{parsed.get_key_element()}={first}"


def is_sweep(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).is_sweep_override()
    except Exception:  # not an override Hydra can parse: the command reports it itself
        return False


def smoke(args: list[str]) -> list[str]:
    """A training command at smoke size (see the module's docstring)."""
    line = parse_command_line(args)
    overrides = [o for o in line.overrides if override_key(o) not in SMOKE]
    if line.multirun:
        overrides = [first_values(o) for o in overrides]
    try:  # the sweeper a preset brings (sweeps left out: only a multirun composes them)
        sweeper = compose([o for o in overrides if not is_sweep(o)], return_hydra_config=True)
        sweeper = sweeper.hydra.sweeper
    except Exception:  # a bad value shown on purpose: the command itself fails on it
        sweeper = {}
    pins: list[str] = []
    if "optuna" in str(sweeper.get("_target_", "")):
        overrides = [o for o in overrides if override_key(o) != "hydra.sweeper.n_trials"]
        pins += ["hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1"]
    else:
        given = {override_key(o) for o in overrides}
        for key, values in (sweeper.get("params") or {}).items():
            if key not in given:
                pins.append(first_values(f"{key}={values}"))
    return [*line.flags, *overrides, *pins, *(f"{k}={v}" for k, v in SMOKE.items())]


# Shell syntax (pipes, redirections, loops, several commands): such a line runs through bash.
SHELL = re.compile(r"[|<>;&]|\$\(|^(while|for|if) ")


def prepare(command: Command, cwd: Path) -> tuple[list[str] | None, str]:
    """The command's words with variables, placeholders and smoke size applied, or (None,
    text) for a line with shell syntax, which runs through bash as written."""
    text = command.text
    for name, value in command.variables:
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    text = text.removeprefix("time ")  # the shell's timer: the command is what follows
    resume = "trainer.resume=" in text
    stopped = stopped_run(cwd) if resume else None
    if "RUN_DIR" in text:
        text = text.replace("RUN_DIR", str(stopped or last_run(cwd)))
    if "SWEEP_DIR" in text:
        text = text.replace("SWEEP_DIR", str(last_sweep(cwd)))
    # The bare name only: a page may write its own outputs/.../recording.csv.
    predict = re.search(r"har-bench predict (\S+) .*--input recording\.csv\b", text)
    if predict:
        write_recording(cwd, predict[1])
    if SHELL.search(text):
        return None, text
    head = shlex.split(text)
    if head[0] != "har-bench":
        return head, text
    verb = head[1] if len(head) > 1 else None
    if verb in cli.VERBS:
        if verb == "export":
            head += ["--repeats", EXPORT_REPEATS]
            if "--finetune-epochs" in head:
                head[head.index("--finetune-epochs") + 1] = "1"
    elif resume:
        head = [*head, *STOPPED]
    elif not ({"--help", "-h", "--cfg", "-c", "--info"} & set(head)):
        head = ["har-bench", *smoke(head[1:])]
    return head, shlex.join(head)


# --- running ----------------------------------------------------------------------------------


def run_in_process(args: list[str]) -> tuple[int, str]:
    """``har-bench ARGS`` in this process (no Python start per command), stderr returned."""
    import contextlib
    import io

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    err, argv = io.StringIO(), sys.argv
    sys.argv = ["har-bench"]
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(args)
            except SystemExit as e:
                code = e.code
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    return int(code or 0), err.getvalue()


def run_in_shell(script: str, cwd: Path) -> tuple[int, str]:
    """A line through bash, with ``har-bench`` and ``python`` this test's Python."""
    shim = cwd.parent / "bin"
    shim.mkdir(exist_ok=True)
    for name, target in (
        ("har-bench", f'"{sys.executable}" -m har_bench.cli'),
        ("python", f'"{sys.executable}"'),
    ):
        (shim / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (shim / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    return done.returncode, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ALL, ids=[c.id for c in ALL])
def test_documented_command_runs(command: Command, workspace: Path, monkeypatch) -> None:
    reason = command.skip_reason()
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(workspace)
    words, script = prepare(command, workspace)
    if words is not None and words[0] == "har-bench":
        code, err = run_in_process(words[1:])
    else:  # another program, or a line with shell syntax (a pipe: `har-bench predict ... | head`)
        code, err = run_in_shell(script, workspace)
    assert code == command.expected_exit, f"{script}\nexit {code}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    if code:
        assert [line for line in err.splitlines() if line.startswith("error: ")], err


# --- fast checks of the pages themselves ---------------------------------------------------------


def test_the_docs_show_commands_and_skip_only_with_reasons():
    assert len(ALL) > 30 and {c.page for c in ALL} >= {"README.md", "docs/deployment.md"}
    for prefix in set(SKIPPED) - {"pip install"}:  # pip: docs/tracking.md, merged separately
        assert any(c.text.startswith(prefix) for c in ALL), (
            f"SKIPPED has {prefix!r}: no such command"
        )


GUIDES = [
    "datasets",
    "recipes",
    "models",
    "sweeps",
    "results",
    "deployment",
    "reliability",
    "configuration",
    "development",
    "python-api",
    "predict-streams",
    "tracking",
    "ensembles",
]


@pytest.mark.parametrize("name", GUIDES)
def test_guide_pages_list_their_sections(name: str) -> None:
    """A guide page has a table of contents between ``<!-- toc -->`` markers that lists every
    ``##`` section, in order."""
    page = REPO / "docs" / f"{name}.md"
    text = page.read_text()
    sections = re.findall(r"^## (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)
    toc = re.search(r"<!-- toc -->(.*?)<!-- /toc -->", text, flags=re.S)
    assert toc, f"{page.name}: no <!-- toc --> ... <!-- /toc --> contents"
    listed = re.findall(r"^- \[(.+?)\]\(#", toc[1], flags=re.M)
    assert listed == sections, f"{page.name}: contents {listed} != sections {sections}"


def test_readme_reads_in_five_minutes():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 250
    assert "make run" in text and "make test" in text and "make install" not in text
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / link).exists() or link in OTHER_PAGES, link


# Pages written alongside this one (the Python API, tracking, streams): linked before they land.
OTHER_PAGES = {"docs/python-api.md", "docs/tracking.md", "docs/predict-streams.md"}
