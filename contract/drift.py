"""Has the data a model scores drifted from its validation rows? The tests behind a served model's monitoring, on
counts that add up across workers (bins, sums), so whichever worker answers gives the same figures.

- Scores: a window's anomaly scores counted in bins cut at the validation reference's equal-count quantiles, against
  the reference's own counts in the same bins: Pearson's chi-square test of homogeneity of the 2 x B table, B - 1
  degrees of freedom. A two-sample test: the reference's own sampling error is in it, so a window larger than the
  reference does not false-alarm more often (a one-sample uniformity test of the window's p-values, all computed
  against the same finite reference, would: they are not independent uniforms).
- Flagged share: with the threshold T the k-th smallest of n reference scores, a row exchangeable with them exceeds
  T with probability 1 - F(T), and F(T) ~ Beta(k, n + 1 - k) over references; so m such rows hold a
  beta-binomial(m, a = n + 1 - k, b = k) count of flagged rows. Two-sided p-value: the probability of every count
  no likelier than the one seen (the threshold's own uncertainty is in it; a binomial at 1 - q would ignore it).
- Features: z_j = (mean_w - mean_r) / sqrt(var_w / m + var_r / n), the shift of the window's mean NLL of feature j
  from the validation rows' in standard errors; a feature moved when |z_j| passes the two-sided Bonferroni cut of
  the level over the D features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from contract import anomaly

DRIFT_BINS = 20  # equal-count bins of the reference: 5% each
TAIL_QUANTILES = (0.99, 0.999)  # extra histogram edges, resolving the upper tail where anomalies fall
P_VALUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MIN_EXPECTED = 5.0  # a chi-square cell expecting fewer rows is merged with its neighbour


@dataclass(frozen=True)
class ScoreBins:
    """Bucket edges (ascending) of a model's anomaly scores, placed from its validation reference: bucket i holds
    edges[i-1] < s <= edges[i] (Prometheus' `le`), the last one s > edges[-1]. `test_bin` maps each of the
    len(edges) + 1 buckets to one of the chi-square test's equal-count bins (the tail edges only refine the last)."""

    edges: np.ndarray  # (E,)
    test_bin: np.ndarray  # (E + 1,) int
    reference_counts: np.ndarray  # (E + 1,) the reference's scores per bucket

    @classmethod
    def of(cls, reference: np.ndarray, bins: int = DRIFT_BINS) -> ScoreBins:
        """From an ascending reference sample (n,)."""
        cuts = np.unique(np.quantile(reference, np.arange(1, bins) / bins, method="inverted_cdf"))
        tail = np.quantile(reference, TAIL_QUANTILES, method="inverted_cdf")
        edges = np.unique(np.concatenate([cuts, tail]))
        # a bucket's test bin: the number of equal-count cuts below its upper edge (+inf for the last)
        upper = np.append(edges, np.inf)
        test_bin = np.searchsorted(cuts, upper, side="left")
        return cls(edges, test_bin, bucket_counts(edges, reference))

    def counts(self, scores: np.ndarray) -> np.ndarray:
        return bucket_counts(self.edges, scores)

    def test(self, window_counts: np.ndarray) -> TestResult:
        """The chi-square test of a window's bucket counts (E+1,) against the reference's, on the equal-count bins."""
        bins = int(self.test_bin.max()) + 1
        window = np.bincount(self.test_bin, weights=window_counts, minlength=bins)
        reference = np.bincount(self.test_bin, weights=self.reference_counts, minlength=bins)
        return chi_square_homogeneity(window, reference)


def bucket_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many values fall in each bucket edges[i-1] < v <= edges[i] (and past the last edge): (E,), (N,) -> (E+1,)"""
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)


def p_value_counts(p: np.ndarray) -> np.ndarray:
    """Conformal p-values (0, 1] per bucket of P_VALUE_BUCKETS (le): (N,) -> (len(P_VALUE_BUCKETS),)."""
    return bucket_counts(np.asarray(P_VALUE_BUCKETS[:-1]), p)


@dataclass(frozen=True)
class TestResult:
    statistic: float
    dof: int
    p_value: float


def chi_square_homogeneity(window: np.ndarray, reference: np.ndarray) -> TestResult:
    """Pearson's chi-square test that two count vectors over the same bins come from one distribution: (B,), (B,).
    Adjacent bins are merged, in order, until each expects at least MIN_EXPECTED rows of the smaller sample."""
    window, reference = np.asarray(window, np.float64), np.asarray(reference, np.float64)
    m, n = window.sum(), reference.sum()
    if m == 0 or n == 0:
        return TestResult(0.0, 0, 1.0)
    share = (window + reference) / (m + n)  # pooled share of each bin
    merged: list[list[float]] = []  # [window, reference] per merged bin
    w, r, s = 0.0, 0.0, 0.0
    for i in range(window.size):
        w, r, s = w + window[i], r + reference[i], s + share[i]
        if s * min(m, n) >= MIN_EXPECTED:
            merged.append([w, r])
            w, r, s = 0.0, 0.0, 0.0
    if s > 0 and merged:  # what is left joins the last bin
        merged[-1][0] += w
        merged[-1][1] += r
    elif s > 0:
        merged.append([w, r])
    table = np.array(merged).T.reshape(2, -1)  # (2, B')
    if table.shape[1] < 2:
        return TestResult(0.0, 0, 1.0)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    dof = table.shape[1] - 1
    return TestResult(statistic, dof, chi_square_sf(statistic, dof))


def chi_square_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof): the regularised upper incomplete gamma Q(dof / 2, x / 2)."""
    return 1.0 if x <= 0 else _gamma_q(dof / 2.0, x / 2.0)


def _gamma_q(a: float, x: float) -> float:
    # Q(a, x) = Γ(a, x) / Γ(a): the series of P below a + 1, Lentz's continued fraction above (Numerical Recipes 6.2)
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def beta_binomial_two_sided(flagged: int, m: int, a: float, b: float) -> float:
    """Two-sided p-value of `flagged` of m under beta-binomial(m, a, b): the total probability of the counts no
    likelier than it."""
    if m == 0:
        return 1.0
    k = np.arange(m, dtype=np.float64)
    # log pmf(k + 1) - log pmf(k) = log((m - k) / (k + 1)) + log((k + a) / (m - k - 1 + b))
    steps = np.log((m - k) / (k + 1.0)) + np.log((k + a) / (m - k - 1.0 + b))
    log_pmf = np.concatenate([[0.0], np.cumsum(steps)])
    log_pmf += _log_beta(a, b + m) - _log_beta(a, b)  # log pmf(0) = log B(a, m + b) - log B(a, b)
    pmf = np.exp(log_pmf)
    return float(min(1.0, pmf[pmf <= pmf[flagged] * (1 + 1e-9)].sum()))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def flagged_share_test(flagged: int, m: int, reference_size: int, quantile: float) -> float:
    """p-value of `flagged` of m rows over the conformal threshold at `quantile` of a reference of n scores."""
    k = anomaly.conformal_rank(reference_size, quantile)
    return beta_binomial_two_sided(flagged, m, reference_size + 1.0 - k, float(k))


def expected_flagged_share(reference_size: int, quantile: float) -> float:
    """E[1 - F(T)] = (n + 1 - k) / (n + 1): the share of normal rows the conformal threshold flags."""
    k = anomaly.conformal_rank(reference_size, quantile)
    return (reference_size + 1.0 - k) / (reference_size + 1.0)


def feature_shift(
    total: np.ndarray, total_sq: np.ndarray, m: int, ref_mean: np.ndarray, ref_std: np.ndarray, n: int
) -> np.ndarray:
    """z_j of each feature's mean NLL over m window rows (from its sum and sum of squares) against the validation
    rows' mean and standard deviation over n rows: (D,) x 4 -> (D,). 0 where neither varies."""
    mean = total / m
    var = np.maximum(total_sq / m - mean**2, 0.0) * m / max(m - 1, 1)  # the window's unbiased variance
    se = np.sqrt(var / m + ref_std**2 / n)
    diff = mean - ref_mean
    z: np.ndarray = np.divide(diff, se, out=np.zeros_like(diff), where=se > 0)
    return z


def feature_cut(level: float, features: int) -> float:
    """|z| past which a feature counts as moved: the two-sided Bonferroni cut of `level` over the features."""
    return NormalDist().inv_cdf(1.0 - level / (2.0 * max(features, 1)))
