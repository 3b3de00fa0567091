"""Training curves: ELBO, reconstruction and KL per epoch, the KL warm-up shaded, the best epoch marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.loop import EpochMetrics
from training.report.figure import new_figure, save

PANELS = (("elbo", "ELBO"), ("reconstruction", "reconstruction log-likelihood"), ("kl", "KL"))
FENCE = 3.0  # interquartile ranges beyond the quartiles: a value further out is off the y-axis


def curve_ylim(epochs: np.ndarray, values: np.ndarray, warmup_epochs: int, keep: list[float]) -> tuple[float, float]:
    """A y-range spanning the values inside Tukey fences (FENCE interquartile ranges beyond the quartiles) of the
    epochs after warm-up (of all epochs when fewer than two follow it): early huge values fall off the axis, a smooth
    curve stays whole. The values in `keep` always stay in view. epochs (E,), values (S, E) -> (low, high)"""
    finite = np.isfinite(values)
    later = np.broadcast_to(epochs > warmup_epochs, values.shape) & finite
    basis = values[later] if later.sum() >= 2 * values.shape[0] else values[finite]
    if basis.size == 0:
        return -1.0, 1.0
    q1, q3 = np.percentile(basis, [25.0, 75.0])
    fence = FENCE * max(q3 - q1, 1e-6 * max(abs(q1), abs(q3), 1.0))
    pool = values[finite & (values >= q1 - fence) & (values <= q3 + fence)]
    kept = [v for v in keep if np.isfinite(v)]
    lo, hi = min(*pool, *kept), max(*pool, *kept)
    pad = 0.06 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
    return float(lo - pad), float(hi + pad)


def plot_curves(path: Path, history: list[EpochMetrics], best_epoch: int, warmup_epochs: int) -> None:
    epochs = np.array([m.epoch for m in history])
    best = epochs == best_epoch
    fig = new_figure(13, 3.8)
    axes = fig.subplots(1, 3)
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        values = np.array([[getattr(m, f"{split}_{key}") for m in history] for split in ("train", "val")])
        if warmup_epochs > 0 and epochs[0] <= warmup_epochs:
            end = min(warmup_epochs, epochs[-1]) + 0.5
            ax.axvspan(epochs[0] - 0.5, end, color="khaki", alpha=0.45, lw=0, label="KL warm-up")
        ax.plot(epochs, values[0], label="train", marker="." if epochs.size < 30 else None)
        ax.plot(epochs, values[1], label="validation", marker="." if epochs.size < 30 else None)
        ax.axvline(best_epoch, color="grey", ls="--", lw=0.8, label=f"best epoch ({best_epoch})")
        ax.plot(epochs[best], values[1][best], "o", color="tab:orange", mfc="none", ms=9)
        lo, hi = curve_ylim(epochs, values, warmup_epochs, values[:, -1].tolist() + values[1][best].tolist())
        ax.set_ylim(lo, hi)
        if off := int(((values < lo) | (values > hi)).sum()):
            ax.text(
                0.98,
                0.03,
                f"{off} value{'s' if off > 1 else ''} off the axis",
                transform=ax.transAxes,
                ha="right",
                fontsize=7,
            )
        ax.set(title=f"{title} (nats/example)", xlabel="epoch", xlim=(epochs[0] - 0.5, epochs[-1] + 0.5))
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8, loc="best")
    save(fig, path)
