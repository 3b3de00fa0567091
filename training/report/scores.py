"""The anomaly score: its histogram (clipped on the right, split by label when there are 0/1 labels) and the ROC and
precision-recall curves against the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.report.figure import new_figure, save

CLIP_QUANTILE = 0.99  # of each group's scores: the histogram's right edge
BINS = 50
THRESHOLD_REACH = 0.25  # of the histogram's width: a threshold that far beyond the clip edge widens the axis to it


def clip_edge(groups: list[np.ndarray]) -> float:
    # the histogram's right edge: the largest per-group CLIP_QUANTILE, so every group's bulk shows
    return max(float(np.quantile(g, CLIP_QUANTILE)) for g in groups if g.size)


def histogram_range(groups: list[np.ndarray], threshold: float) -> tuple[float, float]:
    # from the lowest score to the clip edge, stretched to a threshold that lies just beyond it
    lo, hi = min(float(g.min()) for g in groups if g.size), clip_edge(groups)
    if hi < threshold <= hi + THRESHOLD_REACH * (hi - lo):
        hi = threshold
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def rows_beyond(scores: np.ndarray, edge: float) -> int:
    return int((scores > edge).sum())


def plot_scores(
    path: Path, scores: np.ndarray, threshold: float, quantile: float, labels: np.ndarray | None
) -> dict[str, int]:
    """Histogram of validation scores up to a high quantile; rows beyond it are counted in the legend. With labels,
    normal and anomalous rows are two overlaid histograms, each scaled to unit area. Returns the rows beyond the
    axis per group ("rows", or "normal" and "anomalous")."""
    split = labels is not None
    named = [("rows", scores)] if labels is None else [("normal", scores[~labels]), ("anomalous", scores[labels])]
    named = [(name, s) for name, s in named if s.size]
    lo, hi = histogram_range([s for _, s in named], threshold)
    bins = np.linspace(lo, hi, BINS + 1)
    fig = new_figure(7, 3.8)
    ax = fig.subplots()
    for (name, s), colour in zip(named, ("steelblue", "crimson"), strict=False):
        inside = s[s <= hi]
        note = f"{name} (n={s.size}, {rows_beyond(s, hi)} beyond the axis)"
        alpha = 0.55 if split else 1.0
        ax.hist(inside, bins=bins, density=split and inside.size > 0, alpha=alpha, color=colour, label=note)
    line = f"threshold (q={quantile:g}) = {threshold:.4g}"
    if threshold <= hi:
        ax.axvline(threshold, color="black", ls="--", label=line)
    else:  # a heavy tail put the threshold off the axis: point at it from the right edge
        ax.plot([hi], [0], ">", color="black", ms=9, clip_on=False, label=f"{line}, beyond the axis")
    ylabel = "density (each group)" if split else "rows"
    ax.set(title=f"validation anomaly scores (-ELBO), cut at {hi:.4g}", xlabel="nats", ylabel=ylabel, xlim=(lo, hi))
    ax.legend(fontsize=8, loc="best")
    save(fig, path)
    return {name: rows_beyond(s, hi) for name, s in named}


def plot_roc_pr(path: Path, labelled: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float) -> None:
    """ROC and precision-recall curves of the anomaly score against 0/1 labels, per split, threshold marked."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig = new_figure(10, 4)
    roc, pr = fig.subplots(1, 2)
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
    if roc.get_legend_handles_labels()[0]:
        roc.legend()
    save(fig, path)
