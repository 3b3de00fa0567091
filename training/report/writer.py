"""Everything in a bundle's report/ folder, from the run's stages: metrics.json, the plots and index.html."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from training.config import RunConfig
from training.evaluate import ACTIVE_UNIT_THRESHOLD
from training.report import columns, curves, images, latent, page, scores
from training.report.decoded import PLOT_ROWS, ModelRows, model_rows, unit_variance
from training.stages import Evaluation, Fitted, LoadedData, standardized, stream

PLOT_STREAM = 3  # stages.stream purpose of the report's random draws


def write_report(
    report_dir: Path, config: RunConfig, data: LoadedData, fitted: Fitted, evaluation: Evaluation, version: int
) -> None:
    """metrics.json, the plots that apply to this data (0/1 labels: ROC/PR; images: grids) and index.html."""
    _write_metrics(report_dir, evaluation, fitted)
    x_std = standardized(fitted.model, data, evaluation.val_rows)
    gen = torch.Generator(device=x_std.device).manual_seed(stream(config.train.seed, PLOT_STREAM))
    rows = model_rows(fitted.model, x_std, data.table.x[evaluation.val_rows[:PLOT_ROWS]], gen)
    plots = [
        *_plot_training(report_dir, config, data, fitted, evaluation, rows),
        *_plot_scores(report_dir, config, evaluation),
        *_plot_columns(report_dir, rows, data),
        *_plot_images(report_dir, data, fitted, evaluation, rows),
    ]
    threshold, quantile = evaluation.reference.threshold, config.train.threshold_quantile
    table = page.metric_table(evaluation.diagnostics, threshold, quantile)
    title = f"Gaussian VAE report: {config.model_name} version {version}"
    warnings = page.page_warnings(evaluation.diagnostics, evaluation.reference)
    page.write_index(report_dir, title, _notes(data, fitted), table, plots, warnings)


def _plot_training(
    report_dir: Path, config: RunConfig, data: LoadedData, fitted: Fitted, evaluation: Evaluation, rows: ModelRows
) -> list[str]:
    result = fitted.result
    curves.plot_curves(report_dir / "curves.png", result.history, result.best_epoch, config.train.warmup_epochs)
    kl_per_dim = evaluation.diagnostics["validation"].kl_per_dim
    variance = unit_variance(rows.posterior_mean)
    latent.plot_kl_per_dim(report_dir / "kl_per_dim.png", kl_per_dim, variance, ACTIVE_UNIT_THRESHOLD)
    labels = data.table.labels[evaluation.val_rows] if data.table.labels is not None else None
    latent.plot_latent(report_dir / "latent.png", rows.posterior_mean, labels)
    return ["curves.png", "kl_per_dim.png", "latent.png"]


def _plot_scores(report_dir: Path, config: RunConfig, evaluation: Evaluation) -> list[str]:
    """scores.png, split by label when there are 0/1 labels, and roc_pr.png when a split holds both classes."""
    threshold, quantile = evaluation.reference.threshold, config.train.threshold_quantile
    _, binary = evaluation.labelled.get("validation", (None, None))
    scores.plot_scores(report_dir / "scores.png", evaluation.scores, threshold, quantile, binary)
    if not any(0 < y.sum() < y.size for _, y in evaluation.labelled.values()):
        return ["scores.png"]
    scores.plot_roc_pr(report_dir / "roc_pr.png", evaluation.labelled, threshold)
    return ["scores.png", "roc_pr.png"]


def _plot_columns(report_dir: Path, rows: ModelRows, data: LoadedData) -> list[str]:
    """feature_errors.png, marginals.png and (with 3 rows or more) correlations.png."""
    names = data.table.feature_names or [f"x{j}" for j in range(rows.real.shape[1])]
    modelled = data.scaling.active
    columns.plot_feature_errors(report_dir / "feature_errors.png", rows, modelled, names)
    widest = columns.widest(rows.real, modelled, columns.MARGINALS)
    columns.plot_marginals(report_dir / "marginals.png", rows, widest, names, data.scaling.step)
    correlated = columns.widest(rows.real, modelled, columns.CORRELATED)
    if rows.real.shape[0] < 3 or correlated.size < 2:
        return ["feature_errors.png", "marginals.png"]
    columns.plot_correlations(report_dir / "correlations.png", rows, correlated, names)
    return ["feature_errors.png", "marginals.png", "correlations.png"]


def _plot_images(
    report_dir: Path, data: LoadedData, fitted: Fitted, evaluation: Evaluation, rows: ModelRows
) -> list[str]:
    """samples.png, reconstructions.png and traversals.png when rows are images."""
    if data.image_shape is None:
        return []
    written = images.plot_samples_and_reconstructions(report_dir, rows, data.image_shape)
    units = images.traversed_units(evaluation.diagnostics["validation"].kl_per_dim)
    limits = images.grey_limits(rows.real)
    images.plot_traversals(report_dir / "traversals.png", fitted.model, units, limits, data.image_shape)
    return [*written, "traversals.png"]


def _notes(data: LoadedData, fitted: Fitted) -> list[str]:
    result, split, model, refined = fitted.result, data.split, fitted.model, fitted.refinement
    return [
        f"Best epoch {result.best_epoch} of {len(result.history)} ({result.stop_reason}); rows: {split.train.size} "
        f"train, {split.val.size} validation, {split.test.size} test.",
        *([f"{refined.summary()[0].upper()}{refined.summary()[1:]}."] if refined is not None else []),
        f"{model.config.input_dim} features ({data.scaling.counts()['constant']} constant, not modelled); latent "
        f"dimension {model.config.latent_dim}, {model.config.covariance} covariance.",
    ]


def _write_metrics(report_dir: Path, evaluation: Evaluation, fitted: Fitted) -> None:
    metrics = {
        "diagnostics": {k: v.model_dump() for k, v in evaluation.diagnostics.items()},
        "best_epoch": fitted.result.best_epoch,
        "stop_reason": fitted.result.stop_reason,
        "history": [asdict(m) for m in fitted.result.history],
        # training/refine.py's run: steps, the step kept, validation ELBO before and after, why it stopped, seconds
        "refinement": None if fitted.refinement is None else asdict(fitted.refinement),
    }
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
