"""torchrun with DistributedDataParallel on CPU (gloo over 127.0.0.1): same bundle format, same decisions, exact
resume after a pre-emption, and data checks that reach the same verdict on every rank."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contract import Manifest
from runtime.bundle import load_bundle
from tests.conftest import free_port
from training.checkpoint import RUN_CHECKPOINT, load_model
from training.cli import main as cli_main
from training.data import load_table
from training.distributed import Dist

SMALL = ["--hidden", "32", "--latent-dim", "3", "--eval-samples", "16", "--score-samples", "4", "--quiet"]
SMALL += ["--refine-steps", "30"]  # rank 0 refines after the ranks' training; briefly here
SMALL += ["--decorrelate", "off"]  # one training, not both (--decorrelate auto), unless a test asks


def _torchrun(*args: str) -> list[str]:
    return _launch("-m", "training", *args)


def _launch(*program: str) -> list[str]:
    # torchrun's command line for two ranks on this machine, then what each rank runs
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        # the agent's look at its ranks: at its default 0.1 s it may stop a rank that failed a moment after another
        # before that rank prints why, and the tests read both ranks' messages
        "--monitor-interval",
        "1",
        *program,
    ]


def _stops(stderr: str) -> dict[str, int]:
    return {rank: int(epoch) for rank, epoch in re.findall(r"rank (\d) of 2 stopped after epoch (\d+)", stderr)}


def test_shards_are_disjoint_equal_sized_and_cover_every_row() -> None:
    idx = torch.arange(11)
    shards = [Dist(rank=r, world=3).shard(idx) for r in range(3)]
    assert {s.numel() for s in shards} == {4}
    assert set(torch.cat(shards).tolist()) == set(range(11))
    assert Dist().shard(idx) is idx


def test_two_process_gloo_run_matches_a_single_process_run(tmp_path: Path) -> None:
    # A fixed number of epochs (no early stop) and a decoder variance floor of 0.1: the two runs draw other noise,
    # and without the floor their ELBOs wander apart by as much as runs with different seeds do (5-10 nats on
    # this small data set), which would hide a real difference.
    args = ["--data", "builtin:digits", "--epochs", "30", "--patience", "200", "--decoder-var-floor", "0.1", *SMALL]
    args += ["--decorrelate", "on"]  # the ranks gather the covariance too
    out = tmp_path / "models"
    ddp = subprocess.Popen(
        _torchrun(*args, "--name", "ddp", "--out", str(out)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert cli_main([*args, "--name", "single", "--out", str(out)]) == 0  # meanwhile, in this process
    _, stderr = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, stderr[-2000:]
    assert _stops(stderr) == {"0": 30, "1": 30}
    two = Manifest.model_validate_json((out / "ddp" / "1" / "manifest.json").read_text())
    one = Manifest.model_validate_json((out / "single" / "1" / "manifest.json").read_text())
    assert load_bundle(out / "ddp" / "1", ["CPUExecutionProvider"]).manifest.version == 1  # the service loads it
    # Same global batch, seed and split: validation ELBO per example within 3 nats (about 5%).
    assert abs(two.diagnostics["validation"].elbo - one.diagnostics["validation"].elbo) < 3.0
    assert two.training.rows == one.training.rows
    assert not list((out / "ddp").glob(RUN_CHECKPOINT))


def test_a_pre_empted_two_process_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    digits = load_table("builtin:digits")  # as a .parquet of 18 row groups, which the two ranks copy between them
    columns = {f"p{j}": digits.x[:, j] for j in range(64)}
    pq.write_table(pa.table({**columns, "digit": digits.labels}), tmp_path / "d.parquet", row_group_size=100)
    args = ["--data", str(tmp_path / "d.parquet"), "--label-column", "digit", "--image-shape", "8x8"]
    args += ["--epochs", "40", "--warmup-epochs", "2", "--patience", "1", "--lr", "0.005"]  # an early stop
    args += ["--checkpoint-every", "1", *SMALL]
    out = tmp_path / "models"

    whole = subprocess.Popen(  # the uninterrupted run, side by side with the pre-empted one
        _torchrun(*args, "--name", "whole", "--out", str(out)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    # Pre-empted: SIGTERM to torchrun (what a scheduler sends) as soon as the first checkpoint is on disk.
    run_file = out / "cut" / RUN_CHECKPOINT
    cut = subprocess.Popen(
        _torchrun(*args, "--name", "cut", "--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not run_file.exists() and cut.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(cut.pid, signal.SIGTERM)
    cut.communicate(timeout=60)
    assert cut.returncode != 0 and run_file.is_file() and not (out / "cut" / "1").exists()
    _, stderr = whole.communicate(timeout=300)
    assert whole.returncode == 0, stderr[-2000:]
    stops = _stops(stderr)
    assert stops["0"] == stops["1"] < 40  # early stopping fired, on the same epoch on both ranks

    resumed = subprocess.run(
        _torchrun(*args, "--name", "cut", "--out", str(out), "--resume", str(run_file)), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _stops(resumed.stderr) == stops
    a = load_model(out / "whole" / "1" / "checkpoint.pt").state_dict()
    b = load_model(out / "cut" / "1" / "checkpoint.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical weights
    assert not run_file.exists()


def test_a_bad_value_in_one_ranks_share_stops_every_rank_with_the_same_message(tmp_path: Path) -> None:
    x = np.ones((40, 3), dtype=np.float32)
    x[30, 2] = np.nan  # rank 1 scans rows 20-39; rank 0 sees nothing wrong in its own share
    np.save(tmp_path / "d.npy", x)
    run = subprocess.run(
        _torchrun("--data", str(tmp_path / "d.npy"), "--out", str(tmp_path / "m"), "--quiet"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    # both ranks print it (their lines may interleave)
    message = "d.npy: 1 NaN or infinite values (or beyond float32; empty cells count as NaN); the first is in row 30"
    assert run.stderr.count(message) == 2 and run.stderr.count("'column 2'") == 2, run.stderr[-2000:]
    assert not (tmp_path / "m").exists()


def test_an_unreadable_row_group_stops_both_ranks_and_leaves_no_scratch_file(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    x = np.random.default_rng(0).standard_normal((200, 3))
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({f"f{j}": x[:, j] for j in range(3)}), path, row_group_size=50)
    at = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    raw = bytearray(path.read_bytes())
    raw[at : at + 16] = b"\xff" * 16  # row group 1's first page header: local rank 1 copies that group
    path.write_bytes(bytes(raw))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = subprocess.run(
        _torchrun("--data", str(path), "--out", str(tmp_path / "m"), "--quiet"),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert run.returncode != 0
    assert "d.parquet: cannot read row group 1" in run.stderr, run.stderr[-2000:]  # rank 1, its own message
    assert "d.parquet: rank(s) [1] could not copy its row groups" in run.stderr  # rank 0, not left waiting
    assert list(scratch.rglob("vae-train-*")) == [] and not (tmp_path / "m").exists()


def test_ranks_that_read_different_tables_stop_with_the_same_message(tmp_path: Path) -> None:
    # Two machines whose copies of the table differ, played by two ranks given two files: each rank's own copy
    # passes every check, and without the comparison they would train on a mixture of both.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 3)).astype(np.float32)
    np.save(tmp_path / "d0.npy", x)
    stale = x.copy()
    stale[59] += 1.0  # the last row differs: the rows compared reach the table's end
    np.save(tmp_path / "d1.npy", stale)
    small = " ".join(SMALL)
    command = f'exec "{sys.executable}" -m training --data "{tmp_path}/d$RANK.npy" --out "{tmp_path}/m" {small}'
    run = subprocess.run(
        _launch("--no-python", "sh", "-c", command),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    message = "rank(s) [1] read another table than rank 0 (rank 0: 60 x 3, rank 1: 60 x 3;"
    assert run.stderr.count(message) == 2, run.stderr[-2000:]
    assert not (tmp_path / "m").exists()


def _one_epoch_on_rank(rank: int, port: int, poisoned: int, grad_clip: float, results: Any) -> None:
    """One epoch of train_epoch on a rank of two (gloo on 127.0.0.1); the rank `poisoned` holds NaN rows. Puts
    (rank, what ended it) on results."""
    import datetime

    import torch.distributed as dist

    from training.config import ModelConfig, TrainConfig
    from training.errors import NonFiniteLoss
    from training.features import FeatureScaling
    from training.loop import objective, train_epoch
    from training.stages import build_model

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30)
    )
    try:
        ranks = Dist(rank, 2, rank, 2, "cpu")
        model = build_model(ModelConfig(input_dim=4, latent_dim=2, hidden=(8,)), FeatureScaling.identity(4), seed=0)
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        if rank == poisoned:
            x[:] = float("nan")
        optimizer = torch.optim.Adam(model.parameters())
        gen, noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(rank)
        cfg = TrainConfig(batch_size=16, grad_clip=grad_clip)
        train_epoch(model, optimizer, x, cfg, 1.0, gen, ranks, objective(model, ranks), noise)
        results.put((rank, "finished"))
    except NonFiniteLoss as exc:
        results.put((rank, f"NonFiniteLoss: {exc}"))
    except Exception as exc:  # noqa: BLE001 - a rank left waiting: gloo's timeout or a closed connection
        results.put((rank, f"{type(exc).__name__}: {exc}"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("grad_clip", [10.0, 0.0])  # the norm of the clipping, or one computed for the check
def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step(grad_clip: float) -> None:
    context = torch.multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=_one_epoch_on_rank, args=(r, port, 1, grad_clip, results)) for r in (0, 1)]
    for process in ranks:
        process.start()
    ended = dict(results.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
    assert ended[1].startswith("NonFiniteLoss: the training loss became nan at rows 0..7"), ended
    assert ended[0].startswith("NonFiniteLoss: the gradients became non-finite at rows 0..7"), ended
    assert "another rank's loss did" in ended[0]
