"""Per-feature views of the model against the validation rows: reconstruction error, real vs sampled marginals,
real vs sampled correlation matrices. Constant columns are left out: the networks do not model them."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from training.report.decoded import ModelRows
from training.report.figure import new_figure, save

TOP_ERRORS = 20  # features in the reconstruction-error chart
MARGINALS = 12  # features in the marginal histograms
CORRELATED = 30  # features in the correlation matrices
MARGINAL_RANGE = (0.5, 99.5)  # percentiles of real and sampled values pooled: the histogram's x-range
SAMPLED_STYLE = {"histtype": "stepfilled", "color": "tab:orange", "alpha": 0.5, "label": "sampled"}
REAL_STYLE = {"histtype": "step", "color": "black", "lw": 1.2, "label": "real"}


def widest(real: np.ndarray, modelled: np.ndarray, n: int) -> np.ndarray:
    # up to n modelled features of highest variance on the real rows, in column order: (N, D) -> (k,) indices
    spread = real[:, modelled].var(0) if real.shape[0] > 1 else np.zeros(modelled.size)
    return np.sort(modelled[np.argsort(-spread, kind="stable")[:n]])


def feature_rmse(real: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    # √ mean_n (x_nj - x̂_nj)² per feature, raw units: (N, D), (N, D) -> (D,)
    return np.asarray(np.sqrt(np.square(real - reconstruction).mean(0)))


def correlation(x: np.ndarray) -> np.ndarray:
    # Pearson correlation of the columns, NaN where a column has no spread (no division by zero): (N, F) -> (F, F)
    centred = x - x.mean(0)
    norm = np.sqrt(np.square(centred).sum(0))
    spread = norm > 1e-12 * np.maximum(np.abs(x).max(0), 1.0)
    unit = np.divide(centred, norm, out=np.zeros_like(centred), where=spread)
    r = np.clip(unit.T @ unit, -1.0, 1.0)
    r[~spread, :] = np.nan
    r[:, ~spread] = np.nan
    return r


def plot_feature_errors(path: Path, rows: ModelRows, modelled: np.ndarray, names: list[str]) -> list[int]:
    """Bars of each feature's reconstruction RMSE over its std (1: no better than predicting the feature's mean), the
    RMSE itself in raw units written beside each bar; the TOP_ERRORS worst features at the top. Returns those
    shown, worst first."""
    rmse = feature_rmse(rows.real, rows.reconstruction)[modelled]
    std = rows.real[:, modelled].std(0)
    relative = rmse / np.where(std > 0, std, 1.0)
    order = np.argsort(-relative, kind="stable")[:TOP_ERRORS][::-1]  # worst at the top
    shown = modelled[order]
    fig = new_figure(7.5, 1.3 + 0.26 * order.size)
    ax = fig.subplots()
    at = np.arange(order.size)
    ax.barh(at, relative[order], color="tab:blue")
    for y, (r, e) in enumerate(zip(relative[order], rmse[order], strict=True)):
        ax.text(r, y, f" {e:.3g}", va="center", fontsize=7)
    ax.axvline(1.0, color="grey", ls="--", lw=0.8, label="1 = as good as the feature's mean")
    ax.set_yticks(at, [_short(names[j]) for j in shown], fontsize=7 if order.size > 12 else 9)
    ax.set_xlim(0, 1.2 * max(1.0, float(relative.max(initial=0.0))))
    many = f"worst {order.size} of {modelled.size} features" if modelled.size > order.size else "every feature"
    ax.set(title=f"reconstruction RMSE / std ({many}; RMSE in raw units beside each bar)", xlabel="RMSE / std")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8, loc="lower right")
    save(fig, path)
    return [int(j) for j in shown[::-1]]


def marginal_bins(values: np.ndarray, step: float, origin: float) -> np.ndarray:
    # bin edges over robust percentiles of values; for a lattice feature (step > 0, origin one of its values) one
    # bin per lattice value, centred on it
    lo, hi = np.percentile(values, MARGINAL_RANGE)
    if hi <= lo:
        return np.linspace(lo - 0.5, hi + 0.5, 31)
    if 0 < step and (hi - lo) / step <= 60:
        first = origin + step * (np.floor((lo - origin) / step + 0.5) - 0.5)
        return first + step * np.arange(int(np.ceil((hi - first) / step)) + 1)
    return np.linspace(lo, hi, 31)


def plot_marginals(path: Path, rows: ModelRows, features: np.ndarray, names: list[str], steps: np.ndarray) -> None:
    """Histograms (unit area) of real validation rows and model samples, one panel per feature; steps (D,) are the
    features' lattice steps (0 for none)."""
    cols = min(4, features.size)
    n_rows = -(-features.size // cols)
    fig = new_figure(3.1 * cols, 2.1 * n_rows + 0.5)
    axes = fig.subplots(n_rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.03, right=0.98, bottom=0.3 / n_rows, top=1 - 0.45 / n_rows, wspace=0.12, hspace=0.5)
    for ax, j in zip(axes.flat, features, strict=False):
        pooled = np.concatenate([rows.real[:, j], rows.sampled[:, j]])
        bins = marginal_bins(pooled, float(steps[j]), float(rows.real[0, j]))
        for x, style in ((rows.sampled[:, j], SAMPLED_STYLE), (rows.real[:, j], REAL_STYLE)):
            inside = x[(x >= bins[0]) & (x <= bins[-1])]
            ax.hist(inside, bins=bins, density=inside.size > 0, **style)
        ax.set_title(names[j], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    for ax in axes.flat[features.size :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("marginals: validation rows (line) vs rows sampled from the model (filled)", fontsize=10)
    save(fig, path, tight=False)  # a fixed layout: tight_layout over a dozen panels costs more than the drawing


def plot_correlations(path: Path, rows: ModelRows, features: np.ndarray, names: list[str]) -> None:
    """The Pearson correlation matrix of real validation rows beside that of model samples, on one -1..1 scale."""
    labels = [_short(names[j]) for j in features]
    size = 5 if features.size > 20 else 7
    margin = 0.25 + 0.6 * size / 72 * max(len(n) for n in labels)  # inches for the longest tick label
    width, height = 11.0, 4.8 + margin
    fig = new_figure(width, height)
    # a fixed layout (tight or constrained layout would cost as much as the drawing)
    fig.subplots_adjust(left=margin / width, right=0.88, bottom=margin / height, top=1 - 0.7 / height, wspace=0.06)
    axes = fig.subplots(1, 2)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    for ax, (title, x) in zip(
        axes, (("validation rows", rows.real), ("sampled from the model", rows.sampled)), strict=True
    ):
        image = ax.imshow(correlation(x[:, features]), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{title} (n={x.shape[0]})", fontsize=10)
        ax.set_xticks(range(features.size), labels, rotation=90, fontsize=size)
        ax.set_yticks(range(features.size), labels if ax is axes[0] else [], fontsize=size)
    top = axes[0].get_position()
    fig.colorbar(image, cax=fig.add_axes((0.9, top.y0, 0.015, top.height)), label="Pearson correlation")
    fig.suptitle("correlations (grey: a feature without spread)", fontsize=10)
    save(fig, path, tight=False)


def _short(name: str, most: int = 24) -> str:
    return name if len(name) <= most else name[: most - 1] + "…"
