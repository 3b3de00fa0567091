"""A bundle's report/ folder: metrics.json, PNG plots and an index.html that ties them together.

writer.py decides which plots apply and writes them; decoded.py turns the model into arrays in the data's units;
curves.py, latent.py, scores.py, columns.py and images.py draw; page.py writes index.html; figure.py holds the
matplotlib Figure lifecycle (no pyplot, no global backend)."""

from training.report.writer import write_report

__all__ = ["write_report"]
