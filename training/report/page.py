"""report/index.html: one static page (no script, no external asset) with the key metrics and every plot written."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from pathlib import Path

from contract import AnomalyReference, Diagnostics

# file -> (heading, how to read it), in page order
PLOTS: dict[str, tuple[str, str]] = {
    "curves.png": (
        "Training curves",
        "Per-epoch ELBO, reconstruction log-likelihood and KL on training and validation rows (higher ELBO is "
        "better); the shaded band is the KL warm-up, the dashed line the best epoch, and early values outside the "
        "y-range are clipped off the axis.",
    ),
    "kl_per_dim.png": (
        "KL per latent dimension",
        "Mean KL of each latent unit's posterior marginal to N(0, 1) on validation rows, whatever the prior; they add "
        "up to the reported KL only for the diagonal encoder with the N(0, I) prior (a mixture prior's KL and a full "
        "covariance's do not split by unit); grey bars are inactive units "
        "(posterior collapse: their posterior mean barely varies across rows).",
    ),
    "latent.png": (
        "Latent space",
        "Posterior means of validation rows on their first two principal axes, coloured by label when there is one.",
    ),
    "scores.png": (
        "Anomaly scores",
        "Histogram of the validation rows' anomaly score (-ELBO, nats; with 0/1 labels, normal and anomalous rows as "
        "two histograms of unit area), cut at a high quantile with the rows beyond counted in the legend; rows right "
        "of the threshold (dashed line, or a triangle at the right edge when it lies beyond the axis) are flagged.",
    ),
    "roc_pr.png": (
        "ROC and precision-recall",
        "How well the anomaly score separates rows labelled 1 from rows labelled 0; the dot is the default threshold.",
    ),
    "feature_errors.png": (
        "Reconstruction error per feature",
        "Root-mean-square error of the reconstruction from the posterior mean, in the feature's raw units; a bar "
        "longer than the black tick (the feature's std) means the model does worse than predicting the mean.",
    ),
    "marginals.png": (
        "Real vs sampled marginals",
        "For the features of highest variance, the distribution of validation rows (line) against rows sampled "
        "from the model (filled); a good model makes them overlap.",
    ),
    "correlations.png": (
        "Real vs sampled correlations",
        "Pearson correlations between features in validation rows (left) and in model samples (right), on the same "
        "-1..1 colour scale; a good model reproduces the left matrix's pattern.",
    ),
    "samples.png": ("Samples", "Decoder means of latent draws from the prior, on the data's fixed grey scale."),
    "reconstructions.png": (
        "Reconstructions",
        "Validation rows (top) and their reconstructions from the posterior mean (bottom), on the same grey scale.",
    ),
    "traversals.png": (
        "Latent traversals",
        "Each line varies one of the units with the most KL from -3 to 3 with the others at 0; a unit that "
        "changes nothing in its line carries no information.",
    ),
}


def metric_table(diagnostics: dict[str, Diagnostics], threshold: float, quantile: float) -> list[list[str]]:
    """Rows of [metric, value per split], the first row naming the splits."""
    splits = list(diagnostics)
    values = diagnostics.values()

    def row(name: str, cell: Callable[[Diagnostics], str]) -> list[str]:
        return [name, *(cell(d) for d in values)]

    table = [
        ["metric", *splits],
        row("ELBO (nats/example)", lambda d: f"{d.elbo:.4g}"),
        row("IWAE", lambda d: f"{d.iwae:.4g} (K={d.iwae_samples})"),
        row("gap IWAE - ELBO", lambda d: f"{d.gap:.4g}"),
        row("active units", lambda d: f"{d.active_units} of {len(d.kl_per_dim)}"),
        row("rows evaluated", lambda d: str(d.rows)),
    ]
    if any(d.labelled is not None for d in values):
        table.append(row("AUROC", lambda d: _number(d.labelled.auroc) if d.labelled else "n/a"))
        table.append(row("average precision", lambda d: _number(d.labelled.average_precision) if d.labelled else "n/a"))
    blank = [""] * (len(splits) - 1)
    table.append(["anomaly threshold", f"{threshold:.4g} (validation quantile {quantile:g})", *blank])
    return table


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def page_warnings(diagnostics: dict[str, Diagnostics], reference: AnomalyReference) -> list[str]:
    """The warnings the manifest stores, as stored: the validation diagnostics' (worded in
    training/diagnostic_warnings.py), then the anomaly reference's (contract/anomaly.py)."""
    return [w.message for w in diagnostics["validation"].warnings] + list(reference.warnings)


def write_index(
    report_dir: Path,
    title: str,
    notes: list[str],
    table: list[list[str]],
    plots: list[str],
    warnings: list[str],
) -> None:
    """index.html with the title, notes (one paragraph each), warnings (one highlighted paragraph each, the text as
    given), the metric table and each plot in PLOTS order."""
    assert set(plots) <= set(PLOTS), f"no heading or caption for {set(plots) - set(PLOTS)}"
    head, *body = table
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "img{max-width:100%}figcaption{color:#444;margin-bottom:1.5em}"
        ".warn{color:#8a4b00;background:#fff4e0;border-left:3px solid #e39b2d;padding:.3em .6em}</style>",
        f"</head><body><h1>{escape(title)}</h1>",
        *(f"<p>{escape(note)}</p>" for note in notes),
        *(f'<p class="warn">{escape(warning)}</p>' for warning in warnings),
        "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>",
        *("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in body),
        "</table>",
    ]
    for name in (p for p in PLOTS if p in plots):
        heading, caption = PLOTS[name]
        lines += [
            f"<h2>{escape(heading)}</h2>",
            f'<figure><img src="{escape(name)}" alt="{escape(heading)}">',
            f"<figcaption>{escape(caption)}</figcaption></figure>",
        ]
    lines.append("</body></html>")
    (report_dir / "index.html").write_text("\n".join(lines) + "\n", encoding="utf-8")
