"""The latent space: KL per latent unit with the active ones marked, and the posterior means on a plane."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.report.figure import new_figure, save

MAX_LEGEND_CLASSES = 20


def plot_kl_per_dim(path: Path, kl_per_dim: list[float], unit_var: np.ndarray, threshold: float) -> int:
    """Bars of the mean KL(q(z_u|x) || N(0, 1)) per unit, coloured by activity (Var_x E_q[z_u|x] > threshold);
    returns how many units are active."""
    kl, active = np.asarray(kl_per_dim, dtype=float), unit_var > threshold
    units = np.arange(kl.size)
    k, d = int(active.sum()), kl.size
    fig = new_figure(max(6.0, 0.28 * d + 1.5), 3.6)
    ax = fig.subplots()
    for where, colour, name in ((active, "tab:blue", "active"), (~active, "lightgrey", "inactive")):
        if where.any():
            ax.bar(units[where], kl[where], color=colour, edgecolor="grey", label=f"{name} ({int(where.sum())})")
    ax.legend(fontsize=8, loc="best")
    ax.set_xticks(units, [str(u) for u in units], fontsize=7 if d > 20 else 9)
    ax.set(
        title=f"KL per latent dimension: {k} of {d} active",
        xlabel=f"latent unit (active: Var_x E[z_u|x] > {threshold:g})",
        ylabel="nats per example",
    )
    save(fig, path)
    return k


def plot_latent(path: Path, posterior_mean: np.ndarray, labels: np.ndarray | None) -> None:
    """Posterior means projected on their first two principal axes (or plotted directly when d <= 2)."""
    centred = posterior_mean - posterior_mean.mean(0)
    if posterior_mean.shape[1] > 2:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy, axis = centred @ vt[:2].T, "principal axis"  # fewer than 2 columns when there are fewer rows
    else:
        xy, axis = centred, "z"
    xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    fig = new_figure(5.5, 5)
    ax = fig.subplots()
    classes = np.unique(labels) if labels is not None else np.array([])
    if labels is None or len(classes) > MAX_LEGEND_CLASSES:  # no legend: colour by class code only
        colour = {} if labels is None else {"c": np.searchsorted(classes, labels), "cmap": "viridis"}
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, **colour)
    else:
        for c in classes:
            at = labels == c
            ax.scatter(xy[at, 0], xy[at, 1], s=6, alpha=0.7, label=str(c))
        ax.legend(title="label", fontsize=7, markerscale=2, loc="best")
    ax.set(title="posterior means (validation rows)", xlabel=f"{axis} 1", ylabel=f"{axis} 2")
    save(fig, path)
