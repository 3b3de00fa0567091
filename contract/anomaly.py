"""The anomaly statistic's reference and its rules, defined once for training (which writes the reference) and
every reader (the service, and anything else scoring with a bundle), so the threshold, percentile and p-value
of a row are the same numbers wherever it is scored.

- Noise: by default every row is scored with the same block of standard-normal draws eps (K, d), drawn with
  `score_noise(K, d, DEFAULT_NOISE_SEED)` and shared by all rows (common random numbers): a row's score depends
  on the row alone, never on its batch, position or call. Training scores the validation rows the same way.
- p-value: conformal, p(s) = (1 + #{reference >= s}) / (n + 1) over the n validation scores; a normal row
  (exchangeable with the validation rows) has P(p <= a) <= a.
- percentile: 100 (1 - p(s)); a score that overflowed (any finite row the model finds beyond float range) is
  100, the most anomalous there is.
- threshold at quantile q: the ceil((n + 1) q)-th smallest reference score, so a normal row exceeds it with
  probability at most 1 - q; with too few rows for that (n < q / (1 - q)) it is the largest score, with a warning.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_NOISE_SEED = 0
REFERENCE_SAMPLE_SIZE = 10_000  # validation scores kept in the manifest (all of them up to this many)
FLOAT32_MAX = float(np.finfo(np.float32).max)
ROUGH_THRESHOLD_ROWS = 10  # fewer validation rows than this above the threshold: the summary says it is rough


def score_noise(k: int, latent_dim: int, seed: int | None = DEFAULT_NOISE_SEED) -> np.ndarray:
    """The (K, d) float32 standard-normal block every row of a score request shares (seed None: fresh entropy)."""
    return np.random.default_rng(seed).standard_normal((k, latent_dim), dtype=np.float32)


def finite_scores(score: np.ndarray) -> np.ndarray:
    """-ELBO per row with every overflow (inf, or NaN from inf - inf inside a graph: the inputs are finite) made
    FLOAT32_MAX, the largest score there is; finite scores are unchanged: (B,) -> (B,) float64."""
    score = np.asarray(score, dtype=np.float64)
    return np.where(np.isfinite(score), np.minimum(score, FLOAT32_MAX), FLOAT32_MAX)


def finite_log_densities(value: np.ndarray) -> np.ndarray:
    """An ELBO or log-likelihood per row with every overflow made -FLOAT32_MAX (the least likely there is)."""
    value = np.asarray(value, dtype=np.float64)
    return np.where(np.isfinite(value), np.maximum(value, -FLOAT32_MAX), -FLOAT32_MAX)


def conformal_rank(n: int, quantile: float) -> int:
    # 1-based rank of the order statistic used as the threshold: ceil((n + 1) q), at most n
    return min(n, math.ceil((n + 1) * quantile - 1e-12))


def threshold_at(reference: np.ndarray, quantile: float) -> float:
    """The conformal threshold at quantile q of an ascending reference: (n,) -> float."""
    return float(reference[conformal_rank(reference.size, quantile) - 1])


def p_values(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    # (1 + #{reference >= s}) / (n + 1);  ascending (n,), (B,) -> (B,)
    n = reference.size
    at_or_above = n - np.searchsorted(reference, scores, side="left")
    return (1.0 + at_or_above) / (n + 1.0)


def percentiles(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    # 100 (1 - p);  an overflowed score (FLOAT32_MAX) is 100
    return np.where(scores >= FLOAT32_MAX, 100.0, 100.0 * (1.0 - p_values(reference, scores)))


def threshold_warnings(n: int, quantile: float) -> list[str]:
    """What a user should know about a threshold at quantile q from n validation rows."""
    needed = math.ceil(quantile / (1.0 - quantile) - 1e-9)
    if n < needed:
        return [
            f"the validation split has {n} rows; a threshold at quantile {quantile} needs at least {needed}, so it "
            "is the largest validation score and flags fewer rows than asked (use more validation rows or a "
            "lower --threshold-quantile)"
        ]
    above = n - conformal_rank(n, quantile)
    if above < ROUGH_THRESHOLD_ROWS:
        return [
            f"only {above} of {n} validation rows score above the threshold at quantile {quantile}; it is a rough "
            "estimate (more validation rows make it steadier)"
        ]
    return []
