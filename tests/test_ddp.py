"""Data-parallel training under torchrun: 2 CPU processes with the gloo backend."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import SMALL

from har_bench.training import distributed
from har_bench.training.engine import Trainer


def test_shards_cover_the_epoch_with_equal_batch_counts(monkeypatch):
    perm = torch.tensor([4, 0, 3, 1, 2])
    monkeypatch.setenv("WORLD_SIZE", "2")
    shards = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        shards.append(distributed.shard(perm).tolist())
    # Padded with the epoch's first index so both ranks step the same number of times.
    assert shards == [[4, 3, 2], [0, 1, 4]]
    trainer = Trainer(batch_size=2, progress=False)
    monkeypatch.setenv("RANK", "1")
    batches = trainer.train_batches(5, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [2, 1]


def test_without_torchrun_nothing_changes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    perm = torch.arange(7)
    model = torch.nn.Linear(2, 2)
    assert distributed.shard(perm) is perm
    assert distributed.wrap(model) is model
    assert distributed.report({}) is None
    assert distributed.worker_args(["a=1"]) == ["a=1"]


_AGREE = """
import json, sys, torch
from har_bench.training import distributed
loss = float("nan") if distributed.rank() == 0 else 1.0
stop = distributed.rank() == 1
print(json.dumps(distributed.agree(torch.tensor(loss), stop)))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_ranks_agree_on_divergence_and_stopping(tmp_path: Path):
    # Rank 0 alone diverges and rank 1 alone is signalled: both must see both, or the rank
    # that went on would hang in the next gradient all-reduce.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _AGREE],
            env={
                **os.environ,
                "WORLD_SIZE": "2",
                "RANK": str(r),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    for out, _ in outs:
        loss, stop = json.loads(out.strip().splitlines()[-1])
        assert loss != loss and stop is True  # NaN on both ranks; stop on both


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_torchrun_two_processes_agree_and_write_one_run_dir(tmp_path: Path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    p = subprocess.run(
        [
            *torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "har_bench.cli",
            *SMALL,
            "trainer.max_epochs=2",
            "trainer.num_threads=1",
            f"paths.output_dir={tmp_path / 'outputs'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "HAR_BENCH_DATA": str(tmp_path / "data"),
            "OMP_NUM_THREADS": "1",
            "TMPDIR": str(tmp),
        },
    )
    assert p.returncode == 0, p.stderr[-4000:]
    runs = list((tmp_path / "outputs").glob("*/*/metrics.json"))
    assert len(runs) == 1  # rank 1 wrote nothing that stays
    assert not [d for d in tmp.iterdir() if d.name.startswith("har_bench_rank")]
    metrics = json.loads(runs[0].read_text())
    assert metrics["status"] == "completed"
    ddp = metrics["ddp"]
    assert (ddp["world_size"], ddp["backend"]) == (2, "gloo")
    rank0, rank1 = ddp["per_rank"]
    assert rank0 == rank1 and ddp["ranks_agree"]
    assert rank0["test_accuracy"] == metrics["test"]["accuracy"]
    run_dir = runs[0].parent
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    shutil.rmtree(tmp, ignore_errors=True)
