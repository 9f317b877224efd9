"""Time to accuracy on UCI-HAR: har-bench's presets against MiniRocket, side by side.

    python benchmarks/time_to_accuracy.py [--data ../shared/data/UCI_HAR] [--seeds 42]
                                          [--configs minirocket default ...] [--json PATH]
                                          [--keep DIR]

Each configuration is a real ``har-bench`` run (a subprocess, its run directory in a temporary
folder, or kept under ``--keep DIR/<configuration>/<seed>``, where a completed run is read
rather than run again) on the official subject split; per seed the configurations run one after
another, so every ratio compares runs made minutes apart on the same machine. A run's time is its
training time as `har-bench compare` counts it (both phases of a refit preset; MiniRocket's:
the transform and the ridge fit), its accuracy
the test accuracy in ``metrics.json``. Nothing here selects anything: the presets were chosen
on validation subjects before.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from har_bench.analysis.grouping import load_run
from har_bench.config import compose_container
from har_bench.runs import rundir
from har_bench.runs.resume import SAME_RUN, config_differences
from har_bench.runs.rundir import METRICS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "UCI_HAR"
# name -> overrides. "before" rows are the previous presets, spelled out so they stay runnable.
CONFIGS: dict[str, list[str]] = {
    "minirocket": ["model=minirocket"],
    "default": [],
    "default before (resnext_har_s2, 22 epochs)": ["model=resnext_har_s2"],
    "default before (resnext_har_s2, 24 epochs)": ["model=resnext_har_s2", "trainer.max_epochs=24"],
    "default before (resnext_har, 18 epochs)": ["model=resnext_har", "trainer.max_epochs=18"],
    "uci_har_best": ["experiment=uci_har_best"],
    "uci_har_best before (resnext_har_s2)": ["experiment=uci_har_best", "model=resnext_har_s2"],
    "uci_har_best before (stem stride 1, first phase on 16 subjects, then the refit)": [
        "experiment=uci_har_best",
        "model=resnext_har",
        "split.val_fraction=0.2",
        "trainer.refit=true",
    ],
}

# Run directory names under --keep.
SLUGS = {
    "minirocket": "minirocket",
    "default": "default",
    "default before (resnext_har_s2, 22 epochs)": "default_s2",
    "default before (resnext_har_s2, 24 epochs)": "default_24",
    "default before (resnext_har, 18 epochs)": "default_before",
    "uci_har_best": "uci_har_best",
    "uci_har_best before (resnext_har_s2)": "uci_har_best_s2",
    "uci_har_best before (stem stride 1, first phase on 16 subjects, then the refit)": (
        "uci_har_best_before"
    ),
}


def check_kept(name: str, run_dir: Path, overrides: list[str]) -> None:
    """A kept run stands for ``name`` only if it trained what ``overrides`` compose today (the
    test a sweep re-run applies before skipping a job): the defaults it relied on (the default
    model, a preset's epochs) may have changed since."""
    changed = config_differences(
        rundir.saved_config(run_dir), compose_container(overrides), SAME_RUN
    )
    if changed:
        sys.exit(
            f"{run_dir} holds a completed run of another configuration than {name!r} composes "
            f"now ({changed[0]}): move it aside (or pass another --keep) to run it afresh"
        )


def run(name: str, seed: int, data: Path, workdir: Path) -> dict:
    run_dir = workdir / SLUGS[name] / str(seed)
    overrides = [*CONFIGS[name], f"dataset.root={data}", f"seed={seed}", "trainer.progress=false"]
    cmd = [sys.executable, "-m", "har_bench.cli", *overrides, f"hydra.run.dir={run_dir}"]
    done = run_dir / METRICS
    if not (done.is_file() and json.loads(done.read_text()).get("status") == "completed"):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    else:
        check_kept(name, run_dir, overrides)
        proc = subprocess.CompletedProcess(cmd, 0)
    if proc.returncode != 0:
        sys.exit(f"{name} (seed {seed}) failed:\n{proc.stderr[-2000:]}")
    # compare's reading of a run: a refit preset's training time counts both phases
    values = load_run(run_dir).values
    return {
        "config": name,
        "seed": seed,
        "test_accuracy": values["accuracy"],
        "train_seconds": values["train_seconds"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="the UCI-HAR folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--json", type=Path, default=None, help="also write the runs here")
    p.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = p.parse_args()
    if not args.data.exists():
        sys.exit(f"no UCI-HAR data at {args.data}: pass --data")
    rows = []
    with tempfile.TemporaryDirectory(prefix="har-bench-tta-") as tmp:
        workdir = args.keep.resolve() if args.keep is not None else Path(tmp)
        for seed in args.seeds:
            for name in args.configs:
                rows.append(run(name, seed, args.data.resolve(), workdir))
                r = rows[-1]
                print(
                    f"seed {seed}  {name}: {100 * r['test_accuracy']:.2f}%  "
                    f"{r['train_seconds']:.1f} s",
                    flush=True,
                )
    ref = {r["seed"]: r["train_seconds"] for r in rows if r["config"] == "minirocket"}
    print("\n| configuration | seeds | test acc % | train s | x MiniRocket's time |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name in args.configs:
        mine = [r for r in rows if r["config"] == name]
        acc = [100 * r["test_accuracy"] for r in mine]
        secs = [r["train_seconds"] for r in mine]
        ratio = (
            f"{statistics.mean(r['train_seconds'] / ref[r['seed']] for r in mine):.2f}"
            if ref
            else "-"
        )
        spread = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
        print(
            f"| {name} | {','.join(str(r['seed']) for r in mine)} "
            f"| {statistics.mean(acc):.2f}{spread} | {statistics.mean(secs):.1f} | {ratio} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
