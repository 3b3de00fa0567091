"""The report folder: the plots a data scientist reads, drawn from the right numbers, linked from index.html, and
written without a warning on awkward data (no labels, constant columns, many features, a one-row validation split)."""

from __future__ import annotations

import re
import warnings
from dataclasses import replace
from html import unescape
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from contract import Diagnostics
from training import stages
from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from training.data import Table
from training.diagnostic_warnings import diagnostic_warnings
from training.evaluate import ACTIVE_UNIT_THRESHOLD, diagnostics
from training.features import FeatureScaling, feature_scaling
from training.report import write_report
from training.report.columns import correlation, plot_feature_errors
from training.report.curves import curve_ylim
from training.report.decoded import ModelRows, model_rows, unit_variance
from training.report.images import grey_limits, mosaic, traversed_units
from training.report.latent import plot_kl_per_dim
from training.report.page import PLOTS
from training.report.scores import clip_edge, plot_scores, rows_beyond

QUICK_TRAIN = {"epochs": 2, "warmup_epochs": 1, "eval_samples": 8, "score_samples": 4, "seed": 0}
TABLE_PLOTS = {"curves.png", "kl_per_dim.png", "latent.png", "scores.png", "feature_errors.png", "marginals.png"}


class Run(NamedTuple):
    config: RunConfig
    data: stages.LoadedData
    fitted: stages.Fitted
    evaluation: stages.Evaluation


def _quick_run(repository: Path, source: str, table: Table | None = None, latent_dim: int = 3) -> Run:
    config = RunConfig(
        data=DataConfig(source=source, seed=0, decorrelate="off"),
        model=ModelConfig(latent_dim=latent_dim, hidden=(16,)),
        train=TrainConfig(**QUICK_TRAIN),
        name="report-test",
        repository=repository,
        checkpoint_every=0,
    )
    data = stages.load(config) if table is None else stages.load_from_table(config, table)
    fitted = stages.fit(config, data)
    return Run(config, data, fitted, stages.evaluate(config, data, fitted))


def _write_without_warnings(report_dir: Path, run: Run) -> set[str]:
    report_dir.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib, numpy and sklearn warnings all fail the test
        write_report(report_dir, *run, version=1)
    return {p.name for p in report_dir.glob("*.png")}


def _index_images(report_dir: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', (report_dir / "index.html").read_text())


def _wide_table(rows: int, features: int, constant: list[int]) -> Table:
    # correlated columns (two latent factors), some of them constant; no labels
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, 2)) @ rng.normal(size=(2, features)) + 0.3 * rng.normal(size=(rows, features))
    x[:, constant] = 7.0
    return Table(x.astype(np.float32), None, [f"f{j}" for j in range(features)])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _quick_run(tmp_path_factory.mktemp("digits"), "builtin:digits", latent_dim=4)


def test_report_on_unlabelled_wide_data_with_constant_columns_warns_nothing(tmp_path: Path) -> None:
    run = _quick_run(tmp_path / "models", "wide", _wide_table(120, 40, constant=[3, 17]))
    written = _write_without_warnings(tmp_path / "report", run)
    assert written == TABLE_PLOTS | {"correlations.png"}  # no labels: no roc_pr.png; no image grids
    assert "AUROC" not in (tmp_path / "report" / "index.html").read_text()


def test_report_on_a_one_row_validation_split_leaves_out_only_the_correlations(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    run = _quick_run(tmp_path / "models", "tiny", Table(x, None, ["a", "b", "c"]), latent_dim=2)
    assert run.evaluation.val_rows.size == 1
    assert _write_without_warnings(tmp_path / "report", run) == TABLE_PLOTS
    stored = run.evaluation.diagnostics["validation"].warnings
    assert {"few_rows", "inactive_units"} <= {w.kind for w in stored}
    assert _shown_warnings(tmp_path / "report") == [w.message for w in stored] + run.evaluation.reference.warnings


def _shown_warnings(report_dir: Path) -> list[str]:
    html = (report_dir / "index.html").read_text()
    return [unescape(m) for m in re.findall(r'<p class="warn">([^<]*)</p>', html)]


def _stored(run: Run, validation: Diagnostics, reference_warnings: list[str]) -> Run:
    # run with these validation diagnostics and anomaly-reference warnings, as the manifest would store them
    e = run.evaluation
    reference = e.reference.model_copy(update={"warnings": reference_warnings})
    return run._replace(
        evaluation=replace(e, diagnostics={**e.diagnostics, "validation": validation}, reference=reference)
    )


def test_index_shows_the_warnings_the_manifest_stores_as_stored(tmp_path: Path, digits_run: Run) -> None:
    v = digits_run.evaluation.diagnostics["validation"]
    loose = v.model_copy(update={"rows": 3, "gap": 1e4, "decoder_variance_mean": 100 * v.data_variance_mean})
    stored = diagnostic_warnings(loose)
    assert {"few_rows", "gap", "decoder_variance"} <= {w.kind for w in stored}
    thin = ["only 1 of 3 validation rows score above the threshold <q>; it's rough"]  # escaped on the page
    _write_without_warnings(
        tmp_path / "report", _stored(digits_run, loose.model_copy(update={"warnings": stored}), thin)
    )
    assert _shown_warnings(tmp_path / "report") == [w.message for w in stored] + thin
    # read as stored, never re-derived from the numbers: none stored, none shown
    _write_without_warnings(tmp_path / "quiet", _stored(digits_run, loose.model_copy(update={"warnings": []}), []))
    assert _shown_warnings(tmp_path / "quiet") == []


def test_index_references_exactly_the_png_files_written(tmp_path: Path, digits_run: Run) -> None:
    written = _write_without_warnings(tmp_path / "report", digits_run)
    assert {"samples.png", "reconstructions.png", "traversals.png", "correlations.png"} <= written
    linked = _index_images(tmp_path / "report")
    assert sorted(linked) == sorted(written) and len(linked) == len(set(linked))
    assert linked == [p for p in PLOTS if p in written]  # in page order, each with its heading and caption
    html = (tmp_path / "report" / "index.html").read_text()
    assert "<title>Gaussian VAE report: report-test version 1</title>" in html and "<script" not in html
    assert "http" not in html  # no external asset
    assert html.count("<figcaption>") == len(written) and "active units" in html


def test_report_with_zero_one_labels_adds_roc_and_auroc(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(200, 4)), 6.0 * rng.normal(size=(20, 4))]).astype(np.float32)
    labels = np.r_[np.zeros(200, int), np.ones(20, int)]
    run = _quick_run(tmp_path / "models", "labelled", Table(x, labels, ["a", "b", "c", "d"]))
    _, y_val = run.evaluation.labelled["validation"]
    assert 0 < y_val.sum() < y_val.size  # both classes among the validation rows of this seed
    written = _write_without_warnings(tmp_path / "report", run)
    assert written == TABLE_PLOTS | {"correlations.png", "roc_pr.png"}
    assert "AUROC" in (tmp_path / "report" / "index.html").read_text()


def _model_with_dead_units(dead: list[int]) -> torch.nn.Module:
    # an encoder whose posterior mean ignores x for the units in `dead` and varies strongly for the others
    model = stages.build_model(ModelConfig(input_dim=5, latent_dim=4, hidden=(8,)), FeatureScaling.identity(5), 0)
    last = model.encoder.net[-1]
    with torch.no_grad():
        last.weight[:4] *= 10.0
        last.weight[dead] = 0.0
        last.bias[dead] = 0.0
    return model


def test_report_marks_inactive_latent_units(tmp_path: Path) -> None:
    model = _model_with_dead_units([1, 3])
    x_std = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    rows = model_rows(model, x_std, x_std.numpy(), torch.Generator().manual_seed(1))
    variance = unit_variance(rows.posterior_mean)
    assert list(variance > ACTIVE_UNIT_THRESHOLD) == [True, False, True, False]
    kl = diagnostics(model, x_std, 4, torch.Generator().manual_seed(2))
    active = plot_kl_per_dim(tmp_path / "kl_per_dim.png", kl.kl_per_dim, variance, ACTIVE_UNIT_THRESHOLD)
    assert active == 2 == kl.active_units  # the same count as the manifest's diagnostics
    inactive = [w.message for w in kl.warnings if w.kind == "inactive_units"]  # stored with it, at evaluation
    assert inactive == [
        "2 of 4 latent units are inactive (posterior collapse on them); a smaller --latent-dim gives "
        "the same model for less"
    ]
    assert (tmp_path / "kl_per_dim.png").stat().st_size > 1000


def test_sampled_rows_keep_constant_columns_at_their_value_and_raw_units() -> None:
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(10.0, 3.0, size=(300, 2)), np.full(300, 4.5)].astype(np.float32)
    scaling = feature_scaling(x, np.arange(300))
    model = stages.build_model(ModelConfig(input_dim=3, latent_dim=2, hidden=(8,)), scaling, 0)
    x_std = model.standardize(torch.from_numpy(x))
    rows = model_rows(model, x_std, x, torch.Generator().manual_seed(0))
    assert rows.sampled.shape[1] == rows.reconstruction.shape[1] == 3
    np.testing.assert_allclose(rows.sampled[:, 2], 4.5, rtol=1e-6)  # not modelled: the constant itself, no noise
    np.testing.assert_allclose(rows.reconstruction[:, 2], 4.5, rtol=1e-6)
    assert abs(np.median(rows.sampled[:, 0]) - 10.0) < 6.0  # an untrained decoder still lands near the raw mean


def test_score_histogram_counts_the_rows_beyond_its_clip_edge(tmp_path: Path) -> None:
    scores = np.r_[np.linspace(0.0, 10.0, 995), [1e3, 2e3, 5e3, 1e4, 1e5]]
    edge = clip_edge([scores])
    assert 9.0 < edge < 1e3 and rows_beyond(scores, edge) == 10
    labels = np.zeros(scores.size, bool)
    labels[-20:] = True  # the top 20 scores are anomalies, 5 of them huge
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        beyond = plot_scores(tmp_path / "scores.png", scores, 9.9, 0.99, labels)
    assert set(beyond) == {"normal", "anomalous"}
    assert beyond["normal"] == 0 and beyond["anomalous"] == 1  # each group's own 99th percentile stays in view
    assert plot_scores(tmp_path / "unlabelled.png", scores, 9.9, 0.99, None) == {"rows": 10}


def test_image_grids_use_the_data_grey_range_not_each_image_own() -> None:
    real = np.array([[0.0, 0.25, 0.5, 1.0], [0.0, 0.0, 0.0, 0.5]])
    assert grey_limits(real) == (0.0, 1.0)
    assert grey_limits(np.full((3, 4), 2.0)) == (2.0, 3.0)  # a flat image still gets a range
    grid = mosaic(real.reshape(2, 2, 2), columns=2)
    assert grid.shape == (2, 5) and np.isnan(grid[:, 2]).all()  # one separator column between the tiles
    np.testing.assert_array_equal(grid[:, :2], real[0].reshape(2, 2))


def test_traversals_take_the_units_with_the_most_kl() -> None:
    assert traversed_units([0.1, 2.0, 0.0, 1.0], 2) == [1, 3]


def test_training_curves_keep_early_huge_values_off_the_axis() -> None:
    epochs = np.arange(1, 11)
    values = np.array([[-1e5, -500, 20, 25, 28, 30, 31, 32, 33, 33.5], [-2e4, -100, 21, 26, 29, 31, 32, 33, 34, 34]])
    lo, hi = curve_ylim(epochs, values, 2, [33.5, 34.0])
    assert 0 < lo < 20 and 34 < hi < 40
    smooth = np.array([np.linspace(20.0, 30.0, 10)] * 2)
    lo, hi = curve_ylim(epochs, smooth, 0, [30.0])
    assert lo < 20 and hi > 30  # nothing is cut from a curve without outliers


def test_correlation_of_a_constant_column_is_nan_and_warns_nothing() -> None:
    x = np.random.default_rng(0).normal(size=(50, 4))
    x[:, 2] = 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = correlation(x)
    assert np.isnan(r[2]).all() and np.isnan(r[:, 2]).all()
    keep = [0, 1, 3]
    np.testing.assert_allclose(r[np.ix_(keep, keep)], np.corrcoef(x[:, keep].T), atol=1e-12)


def test_feature_errors_list_the_worst_explained_feature_first(tmp_path: Path) -> None:
    real = np.random.default_rng(0).normal(size=(100, 3)) * [1.0, 100.0, 0.01]
    reconstruction = real.copy()
    reconstruction[:, 0] = real[:, 0].mean()  # no better than the mean: RMSE / std = 1
    reconstruction[:, 1] += 10.0  # a large raw error, but small against this feature's spread
    empty = np.zeros((0, 3))
    rows = ModelRows(real, np.zeros((100, 1)), reconstruction, empty, empty)
    shown = plot_feature_errors(tmp_path / "feature_errors.png", rows, np.arange(3), ["a", "b", "c"])
    assert shown == [0, 1, 2]
