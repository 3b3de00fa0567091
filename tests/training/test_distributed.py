"""torchrun with DistributedDataParallel on CPU (gloo over 127.0.0.1): same bundle format, same decisions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from contract import Manifest
from service.registry import load_bundle
from tests.conftest import free_port
from training.distributed import Dist

ARGS = [
    "--data",
    "builtin:digits",
    "--epochs",
    "80",
    "--warmup-epochs",
    "3",
    "--patience",
    "8",
    "--hidden",
    "32",
    "--latent-dim",
    "3",
    "--eval-samples",
    "16",
    "--score-samples",
    "4",
    "--quiet",
]


def test_shards_are_disjoint_equal_sized_and_cover_every_row() -> None:
    idx = torch.arange(11)
    shards = [Dist(rank=r, world=3).shard(idx) for r in range(3)]
    assert {s.numel() for s in shards} == {4}
    assert set(torch.cat(shards).tolist()) == set(range(11))
    assert Dist().shard(idx) is idx


def test_two_process_gloo_run_matches_a_single_process_run(tmp_path: Path) -> None:
    out = tmp_path / "models"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            "-m",
            "training",
            *ARGS,
            "--name",
            "ddp",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    stops = dict(re.findall(r"rank (\d) of 2 stopped after epoch (\d+)", run.stderr))
    assert set(stops) == {"0", "1"} and stops["0"] == stops["1"]  # every rank took the same stopping decision
    subprocess.run(
        [sys.executable, "-m", "training", *ARGS, "--name", "single", "--out", str(out)], check=True, timeout=300
    )
    ddp = Manifest.model_validate_json((out / "ddp" / "1" / "manifest.json").read_text())
    single = Manifest.model_validate_json((out / "single" / "1" / "manifest.json").read_text())
    assert ddp.training.epochs_run == int(stops["0"])
    assert load_bundle(out / "ddp" / "1", ["CPUExecutionProvider"]).manifest.version == 1  # the service loads it
    # Same global batch and seed; the ranks draw other noise and see other minibatches, so the numbers differ a
    # little: within 6 nats (about 6%) of validation ELBO per example.
    assert abs(ddp.diagnostics["validation"].elbo - single.diagnostics["validation"].elbo) < 6.0
    assert not list((out / "ddp").glob("checkpoint-latest.pt"))
