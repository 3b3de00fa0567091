"""Small and awkward tables never break a run: tiny splits publish a bundle the service loads, or stop early."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract import Manifest
from runtime.bundle import load_bundle
from training.cli import main

QUICK = [
    "--decorrelate",  # one training, not both (--decorrelate auto): this test is about something else
    "off",
    "--epochs",
    "4",
    "--warmup-epochs",
    "1",
    "--refine-steps",
    "12",
    "--hidden",
    "8",
    "--latent-dim",
    "2",
    "--eval-samples",
    "8",
]


def _csv(path: Path, x: np.ndarray, header: str, label: np.ndarray | None = None) -> Path:
    rows = [",".join(f"{v:.4f}" for v in row) + ("" if label is None else f",{label[i]}") for i, row in enumerate(x)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _published(out: Path, name: str) -> Manifest:
    bundle = out / name / "1"
    load_bundle(bundle, ["CPUExecutionProvider"])  # verifies the manifest, hashes, shapes and a warm-up run
    return Manifest.model_validate_json((bundle / "manifest.json").read_text())


@pytest.mark.parametrize("rows", [10, 12])
def test_a_table_of_a_dozen_rows_trains_and_publishes_a_loadable_bundle(
    tmp_path: Path, rows: int, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.random.default_rng(rows).normal(size=(rows, 3))
    data = _csv(tmp_path / "tiny.csv", x, "a,b,c")
    assert main(["--data", str(data), "--out", str(tmp_path / "m"), *QUICK]) == 0
    manifest = _published(tmp_path / "m", "tiny")
    assert manifest.training.rows["validation"] == 1
    assert manifest.diagnostics["validation"].aggregate_posterior_kl is None  # one row: no covariance
    assert manifest.anomaly.warnings and "needs at least 99" in manifest.anomaly.warnings[0]
    assert "warning: the validation split has 1 rows" in capsys.readouterr().out


def test_a_test_fraction_of_zero_trains_on_every_row_but_validation(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(40, 3))
    data = _csv(tmp_path / "all.csv", x, "a,b,c")
    assert main(["--data", str(data), "--out", str(tmp_path / "m"), "--test-fraction", "0", "--quiet", *QUICK]) == 0
    manifest = _published(tmp_path / "m", "all")
    assert manifest.training.rows == {"train": 36, "validation": 4, "test": 0}
    assert list(manifest.diagnostics) == ["validation"]


def test_a_table_whose_every_column_is_constant_stops_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _csv(tmp_path / "flat.csv", np.ones((30, 2)), "a,b")
    assert main(["--data", str(data), "--out", str(tmp_path / "m"), "--quiet", *QUICK]) == 2
    assert "every feature is constant" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_zero_one_label_column_gives_auroc_average_precision_and_precision_recall(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(300, 4))
    outliers = rng.normal(size=(30, 4)) * 6.0
    x = np.concatenate([normal, outliers])
    label = np.r_[np.zeros(300, int), np.ones(30, int)]
    data = _csv(tmp_path / "lab.csv", x, "a,b,c,d,is_anomaly", label)
    args = ["--data", str(data), "--label-column", "is_anomaly", "--out", str(tmp_path / "m"), "--quiet"]
    assert main([*args, "--threshold-quantile", "0.9", *QUICK]) == 0
    manifest = _published(tmp_path / "m", "lab")
    for split in ("validation", "test"):
        labelled = manifest.diagnostics[split].labelled
        assert labelled is not None and labelled.rows == manifest.training.rows[split]
        assert labelled.anomalies > 0 and labelled.auroc is not None and labelled.auroc > 0.8
        assert labelled.average_precision is not None and labelled.recall is not None
    assert (tmp_path / "m" / "lab" / "1" / "report" / "roc_pr.png").stat().st_size > 1000


def test_a_feature_on_a_scale_past_float32s_variance_publishes_a_loadable_bundle(tmp_path: Path) -> None:
    # std ~1e20: its variance (1e40) overflowed float32 in two diagnostics, which reached the manifest as null and
    # made a run that exited 0 publish a bundle that the service and vae-score refused
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 3)) * np.array([1e20, 1.0, 1.0])
    path = tmp_path / "d.csv"
    path.write_text("\n".join(["a,b,c", *(",".join(f"{v:.6g}" for v in row) for row in x)]) + "\n")
    assert main(["--data", str(path), "--out", str(tmp_path / "m"), "--quiet", *QUICK]) == 0
    manifest = _published(tmp_path / "m", "d")
    assert manifest.diagnostics["validation"].data_variance_mean > float(np.finfo(np.float32).max)


def test_a_manifest_that_would_not_load_fails_the_run_before_publishing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from training import pipeline

    real = pipeline._manifest

    def unloadable(*args: object) -> Manifest:  # as an infinite figure would make it: null in the JSON
        return real(*args).model_copy(update={"decoder_variance_floor": float("inf")})  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "_manifest", unloadable)
    path = _csv(tmp_path / "d.csv", np.random.default_rng(0).standard_normal((30, 3)), "a,b,c")
    assert main(["--data", str(path), "--out", str(tmp_path / "m"), "--quiet", *QUICK]) == 2
    assert "manifest would not load (decoder_variance_floor: " in capsys.readouterr().err
    left = [p.name for p in (tmp_path / "m" / "d").iterdir()]
    assert [name for name in left if name != ".run.lock"] == []  # no version, no temporary folder


def test_a_zero_one_label_with_gaps_says_why_no_auroc_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    from training.stages import binary_labels

    assert binary_labels(np.array(["0", "1", "", "0"])) is None
    assert "the label column holds 0/1 but 1 rows have no label, so AUROC" in caplog.text
    caplog.clear()
    assert binary_labels(np.array([0.0, 1.0, np.nan])) is None  # a Parquet number label with a null
    assert "1 rows have no label" in caplog.text
    caplog.clear()
    assert binary_labels(np.array(["cat", "dog"])) is None  # not 0/1 at all: nothing to say
    assert list(binary_labels(np.array(["0", "1"]))) == [False, True]  # type: ignore[arg-type]
    assert caplog.text == ""
