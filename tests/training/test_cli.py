"""`vae-train`: documented options, clear errors that write nothing, and a real (small) run."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from contract import Diagnostics, Manifest
from training.cli import build_parser, default_name, main, summary_table
from training.diagnostic_warnings import diagnostic_warnings

if TYPE_CHECKING:
    from training.pipeline import RunResult


def test_help_documents_every_option_with_its_default() -> None:
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
            assert any(opt in text for opt in action.option_strings)
    words = " ".join(text.split())  # argparse wraps long help lines anywhere between words
    assert "(default: 500)" in words and "(default: diagonal)" in words and "(default: 256,256)" in words
    # a --no-... switch is off unless given; an option left out means what its help says, not "None"
    for slip in ("(default: True)", "(default: False)", "(default: None)"):
        assert slip not in words, slip
    formatter = parser._get_formatter()
    for action in parser._actions:  # every valued option with a default shows one
        if action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
            assert "(default" in formatter._expand_help(action), action.dest
    assert "(default: 0.99)" in words  # --threshold-quantile: its help says "default threshold", not its default


def test_vae_scores_help_shows_no_default_a_switch_or_an_unset_option_cannot_have() -> None:
    from gaussian_vae.cli import build_parser as score_parser

    words = " ".join(score_parser().format_help().split())
    for slip in ("(default: True)", "(default: False)", "(default: None)"):
        assert slip not in words, slip


def test_python_dash_m_training_is_the_same_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True, check=True)
    assert "vae-train" in out.stdout and "--covariance" in out.stdout


@pytest.mark.parametrize(
    ("make_data", "message"),
    [
        (lambda d: d / "missing.csv", "no such file"),
        (lambda d: _csv(d, "a,b\n" + "\n".join(f"{i},x{i}" for i in range(20))), "column 'b' is not numeric"),
        (lambda d: _npy(d, np.full((20, 3), np.nan)), "60 NaN or infinite values"),
        (lambda d: _npy(d, np.ones((4, 3))), "4 rows; at least 10"),
        (lambda d: _npy(d, np.ones(30)), "expected a 2-D array"),
    ],
)
def test_bad_data_exits_2_with_a_message_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_data, message: str
) -> None:
    out = tmp_path / "models"
    code = main(["--data", str(make_data(tmp_path)), "--name", "bad", "--out", str(out), "--quiet"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_invalid_model_name_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--data", "builtin:digits", "--name", "Bad Name", "--out", str(tmp_path / "m"), "--quiet"])
    assert code == 2 and "must match" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_cuda_request_without_cuda_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["--data", "builtin:digits", "--device", "cuda", "--out", str(tmp_path / "m"), "--quiet"])
    assert code == 2 and "no CUDA device" in capsys.readouterr().err


def test_small_csv_run_writes_a_bundle_and_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((200, 2))
    x = latent @ rng.standard_normal((2, 5)) + 0.1 * rng.standard_normal((200, 5))
    lines = ["f0,f1,f2,f3,f4,label"] + [",".join(f"{v:.5f}" for v in row) + f",c{i % 2}" for i, row in enumerate(x)]
    data = _csv(tmp_path, "\n".join(lines))
    code = main(
        [
            "--data",
            str(data),
            "--label-column",
            "label",
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "8",
            "--warmup-epochs",
            "2",
            "--refine-steps",
            "30",
            "--latent-dim",
            "2",
            "--hidden",
            "16",
            "--eval-samples",
            "16",
            "--eval-rows",
            "15",
        ]
    )
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert code == 0 and "IWAE_16" in out and "active units" in out
    bundle = tmp_path / "m" / "data" / "1"
    assert f"vae-serve --repository {tmp_path / 'm'}" in out and f"vae-score {bundle} " in out  # what to do next
    phases = [line for line in err.splitlines() if line.startswith("vae-train: ")]
    announced = [p.split()[1] for p in phases]
    assert announced == ["reading", "training", "fitting", "training", "encoder", "evaluating:", "exporting"]
    manifest = Manifest.model_validate_json((tmp_path / "m" / "data" / "1" / "manifest.json").read_text())
    assert manifest.feature_names == ["f0", "f1", "f2", "f3", "f4"] and manifest.training.arguments["epochs"] == 8
    # 20 validation and 20 test rows; the final evaluation used a sample of 15 of each
    assert manifest.training.rows == {"train": 160, "validation": 20, "test": 20}
    assert manifest.diagnostics["validation"].rows == manifest.diagnostics["test"].rows == 15


def test_evaluation_rows_are_a_seeded_sample_in_split_order_when_a_split_is_larger_than_the_cap() -> None:
    from training.stages import evaluation_rows

    idx = np.random.default_rng(0).permutation(1000)
    assert evaluation_rows(idx, 0, seed=1) is idx and evaluation_rows(idx, 1000, seed=1) is idx
    sample = evaluation_rows(idx, 100, seed=1)
    np.testing.assert_array_equal(sample, evaluation_rows(idx, 100, seed=1))
    assert len(set(sample)) == 100 and set(sample) <= set(idx)
    positions = [int(np.flatnonzero(idx == v)[0]) for v in sample]
    assert positions == sorted(positions)


def test_negative_eval_rows_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", "builtin:digits", "--eval-rows", "-1", "--out", str(tmp_path / "m")]) == 2
    assert "--eval-rows must be 0 (all)" in capsys.readouterr().err


def test_default_name_is_derived_from_the_data_source() -> None:
    assert default_name("builtin:digits") == "digits"
    assert default_name("/x/My Transactions.csv") == "my-transactions"


def _csv(directory: Path, text: str) -> Path:
    path = directory / "data.csv"
    path.write_text(text)
    return path


def _npy(directory: Path, arr: np.ndarray) -> Path:
    path = directory / "data.npy"
    np.save(path, arr)
    return path


def test_the_summary_prints_the_manifest_warnings_as_stored(diagonal_run: RunResult) -> None:
    manifest = diagonal_run.manifest
    assert manifest is not None
    v = manifest.diagnostics["validation"]
    loose = v.model_copy(update={"active_units": 2, "gap": 1e4, "decoder_variance_mean": 100 * v.data_variance_mean})
    stored = diagnostic_warnings(loose)
    assert [w.kind for w in stored][-3:] == ["inactive_units", "gap", "decoder_variance"]

    def summary(validation: Diagnostics) -> list[str]:
        changed = manifest.model_copy(update={"diagnostics": {**manifest.diagnostics, "validation": validation}})
        return summary_table(changed, diagonal_run.bundle_dir).splitlines()

    lines = summary(loose.model_copy(update={"warnings": stored}))
    assert [line for line in lines if line.startswith("attention: ")] == [f"attention: {w.message}" for w in stored]
    assert [line for line in lines if line.startswith("warning: ")] == [
        f"warning: {w}" for w in manifest.anomaly.warnings
    ]
    # the words are read from the manifest, never re-derived from its numbers: none stored, none printed
    assert not any(line.startswith("attention: ") for line in summary(loose.model_copy(update={"warnings": []})))


def test_a_run_prints_the_warnings_its_manifest_stores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(0).normal(size=(12, 3))
    data = _csv(tmp_path, "a,b,c\n" + "\n".join(",".join(f"{v:.4f}" for v in row) for row in x))
    quick = [
        "--decorrelate",
        "off",
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--refine-steps",
        "6",
        "--hidden",
        "8",
        "--latent-dim",
        "2",
        "--eval-samples",
        "4",
    ]
    assert main(["--data", str(data), "--name", "thin", "--out", str(tmp_path / "m"), *quick]) == 0
    manifest = Manifest.model_validate_json((tmp_path / "m" / "thin" / "1" / "manifest.json").read_text())
    stored = manifest.diagnostics["validation"].warnings
    assert {"few_rows", "inactive_units"} <= {w.kind for w in stored}  # one validation row: no spread to be active
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if line.startswith("attention: ")] == [f"attention: {w.message}" for w in stored]
