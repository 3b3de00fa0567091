"""report/: metrics.json and PNG plots (training curves, samples, reconstructions, latent map, score histogram, and
ROC / precision-recall curves when the data has a 0/1 label column)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from training.loop import EpochMetrics  # noqa: E402
from training.model import GaussianVAE  # noqa: E402


def write_metrics(report_dir: Path, metrics: dict[str, Any]) -> None:
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def plot_curves(path: Path, history: list[EpochMetrics], best_epoch: int) -> None:
    epochs = [m.epoch for m in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("elbo", "reconstruction", "kl"), ("ELBO", "reconstruction", "KL"), strict=True):
        ax.plot(epochs, [getattr(m, f"train_{key}") for m in history], label="train")
        ax.plot(epochs, [getattr(m, f"val_{key}") for m in history], label="validation")
        ax.axvline(best_epoch, color="grey", ls="--", lw=0.8, label="best")
        ax.set(title=f"{title} (nats/example)", xlabel="epoch")
    axes[0].legend()
    _save(fig, path)


@torch.no_grad()
def plot_images(
    report_dir: Path, model: GaussianVAE, x_std: torch.Tensor, shape: tuple[int, int], gen: torch.Generator
) -> None:
    """samples.png: decoder means of prior draws; reconstructions.png: rows (top) over decoder means (bottom)."""
    model.eval()
    d, n = model.config.latent_dim, 32
    z = torch.randn(n, d, generator=gen, device=x_std.device)
    mean, _ = model.decoder(z)
    _grid(report_dir / "samples.png", _to_raw(model, model.full(mean)), shape, "samples: decoder means of z ~ N(0, I)")
    x = x_std[:16]
    rec, _ = model.decoder(model.encoder(model.select(x)).mean)
    rec = model.full(rec)
    _grid(
        report_dir / "reconstructions.png",
        np.concatenate([_to_raw(model, x), _to_raw(model, rec)]),
        shape,
        "rows (top two lines) and reconstructions from the posterior mean (bottom two)",
    )


@torch.no_grad()
def plot_latent(path: Path, model: GaussianVAE, x_std: torch.Tensor, labels: np.ndarray | None) -> None:
    """Posterior means projected on their first two principal axes (or plotted directly when d <= 2)."""
    model.eval()
    mean = model.encoder(model.select(x_std)).mean.double().cpu().numpy()
    centred = mean - mean.mean(0)
    if mean.shape[1] > 2:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy, axis = centred @ vt[:2].T, "principal axis"  # fewer than 2 columns when there are fewer rows
    else:
        xy, axis = centred, "z"
    xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    classes = np.unique(labels) if labels is not None else []
    if labels is None or len(classes) > 20:  # too many classes for a legend: colour by class code only
        colour = {} if labels is None else {"c": np.searchsorted(classes, labels), "cmap": "viridis"}
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, **colour)
    else:
        for c in classes:
            at = labels == c
            ax.scatter(xy[at, 0], xy[at, 1], s=6, alpha=0.7, label=str(c))
        ax.legend(title="label", fontsize=7, markerscale=2, loc="best")
    ax.set(title="posterior means (validation rows)", xlabel=f"{axis} 1", ylabel=f"{axis} 2")
    _save(fig, path)


def plot_scores(path: Path, scores: np.ndarray, threshold: float, quantile: float) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(scores, bins=50, color="steelblue")
    ax.axvline(threshold, color="crimson", ls="--", label=f"threshold (q={quantile:g}) = {threshold:.1f}")
    ax.set(title="validation anomaly scores (-ELBO)", xlabel="nats", ylabel="rows")
    ax.legend()
    _save(fig, path)


def plot_roc_pr(path: Path, labelled: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float) -> None:
    """ROC and precision-recall curves of the anomaly score against 0/1 labels, per split, threshold marked."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4))
    for split, (scores, labels) in labelled.items():
        y = labels.astype(bool)
        if not 0 < y.sum() < y.size:
            continue  # one class only: no curve
        fpr, tpr, _ = roc_curve(y, scores)
        precision, recall, _ = precision_recall_curve(y, scores)
        flagged = scores > threshold
        (line,) = roc.plot(fpr, tpr, label=split)
        roc.plot((flagged & ~y).sum() / (~y).sum(), (flagged & y).sum() / y.sum(), "o", color=line.get_color())
        pr.plot(recall, precision, label=split, color=line.get_color())
        if flagged.any():
            pr.plot((flagged & y).sum() / y.sum(), (flagged & y).sum() / flagged.sum(), "o", color=line.get_color())
    roc.plot([0, 1], [0, 1], color="grey", ls=":", lw=0.8)
    roc.set(title="ROC (dot: the default threshold)", xlabel="false positive rate", ylabel="true positive rate")
    pr.set(title="precision-recall (dot: the default threshold)", xlabel="recall", ylabel="precision")
    roc.legend()
    _save(fig, path)


def _to_raw(model: GaussianVAE, x_std: torch.Tensor) -> np.ndarray:
    return (x_std * model.data_std + model.data_mean).cpu().numpy()


def _grid(path: Path, rows: np.ndarray, shape: tuple[int, int], title: str) -> None:
    cols = 16
    n_rows = int(np.ceil(len(rows) / cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(cols * 0.6, n_rows * 0.6 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(rows):
            ax.imshow(rows[i].reshape(shape), cmap="gray_r")
    fig.suptitle(title, fontsize=8)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
