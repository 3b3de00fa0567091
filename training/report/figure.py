"""Figures without pyplot: a matplotlib Figure renders to a PNG on its own, so no backend or global state is set."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

DPI = 100


def new_figure(width: float, height: float, constrained: bool = False) -> Figure:
    # constrained: laid out as it is drawn (for figures with a colorbar); save it with tight=False
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)


def save(fig: Figure, path: Path, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
