"""Rows that are images: model samples, reconstructions and latent traversals, every grid on the data's fixed grey
range (the same grey is the same value in every image, none is stretched to its own min/max)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch

from training.model import GaussianVAE
from training.report.decoded import ModelRows, decode_mean
from training.report.figure import new_figure, save

GRID_COLUMNS = 16
SAMPLES = 32
RECONSTRUCTED = 16
TRAVERSED_UNITS = 5
TRAVERSAL = np.linspace(-3.0, 3.0, 9)  # values of the traversed unit, the others held at 0
SEPARATOR = "#dde4ec"  # the colour between tiles


def grey_limits(real: np.ndarray) -> tuple[float, float]:
    # (vmin, vmax) of every image: the raw min and max of the real rows (a unit range for a constant image)
    lo, hi = float(np.min(real)), float(np.max(real))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    # (n, H, W) -> one (rows·(H+1) - 1, columns·(W+1) - 1) image, NaN between and after the tiles
    n, h, w = images.shape
    rows = -(-n // columns)
    out = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return out


def _show(
    path: Path,
    tiles: np.ndarray,
    columns: int,
    limits: tuple[float, float],
    title: str,
    axis_labels: tuple[list[str], list[str]] | None = None,
) -> None:
    """tiles (n, H, W) in a grid of `columns`, on the grey range `limits`; axis_labels: (per line, per column)."""
    grid = mosaic(tiles, columns)
    h, w = tiles.shape[1:]
    scale = 0.11 if h <= 16 else 0.05  # inches per pixel
    fig = new_figure(max(4.0, grid.shape[1] * scale + 0.8), grid.shape[0] * scale + 0.8)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad=SEPARATOR)
    ax.imshow(grid, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
    ax.set_title(title, fontsize=9)
    if axis_labels is None:
        ax.axis("off")
    else:
        lines, cols = axis_labels
        ax.set_yticks(np.arange(len(lines)) * (h + 1) + (h - 1) / 2, lines, fontsize=8)
        ax.set_xticks(np.arange(len(cols)) * (w + 1) + (w - 1) / 2, cols, fontsize=8)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    save(fig, path)


def plot_samples_and_reconstructions(report_dir: Path, rows: ModelRows, shape: tuple[int, int]) -> list[str]:
    """samples.png: decoder means of z drawn from the model's prior; reconstructions.png: rows over the decoder
    means at their posterior means. Returns the files written."""
    limits = grey_limits(rows.real)
    samples = rows.sampled_mean[:SAMPLES].reshape(-1, *shape)
    _show(report_dir / "samples.png", samples, GRID_COLUMNS, limits, "decoder means of z drawn from the prior")
    n = min(RECONSTRUCTED, rows.real.shape[0])
    tiles = np.concatenate([rows.real[:n], rows.reconstruction[:n]]).reshape(-1, *shape)
    title = "validation rows (top) over their reconstructions from the posterior mean (bottom)"
    _show(report_dir / "reconstructions.png", tiles, n, limits, title)
    return ["samples.png", "reconstructions.png"]


def traversed_units(kl_per_dim: list[float], n: int = TRAVERSED_UNITS) -> list[int]:
    # the n latent units of largest KL, largest first
    return [int(u) for u in np.argsort(-np.asarray(kl_per_dim), kind="stable")[:n]]


@torch.no_grad()
def plot_traversals(
    path: Path, model: GaussianVAE, units: list[int], limits: tuple[float, float], shape: tuple[int, int]
) -> None:
    """One line per unit: the decoder mean as that unit runs over TRAVERSAL with every other unit at 0."""
    model.eval()
    d, steps = model.config.latent_dim, TRAVERSAL.size
    z = torch.zeros(len(units), steps, d, device=model.data_mean.device)
    values = torch.tensor(TRAVERSAL, dtype=z.dtype, device=z.device)
    for line, u in enumerate(units):
        z[line, :, u] = values
    tiles = decode_mean(model, z.reshape(-1, d)).reshape(-1, *shape)
    title = "decoder mean as one latent unit varies, the others at 0 (units of most KL first)"
    labels = ([f"z{u}" for u in units], [f"{v:g}" for v in TRAVERSAL])
    _show(path, tiles, steps, limits, title, labels)
