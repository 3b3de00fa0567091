"""The drift tests of contract/drift.py: their numbers against scipy and plain numpy, and their false-alarm rates
and power by simulation (fixed seeds), the reference resampled in every trial so its own sampling error counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from contract import anomaly, drift


@pytest.mark.parametrize("dof", [1, 2, 5, 19, 60])
@pytest.mark.parametrize("quantile", [0.001, 0.1, 0.5, 0.9, 0.999999])
def test_chi_square_tail_is_scipys(dof: int, quantile: float) -> None:
    x = float(stats.chi2.ppf(quantile, dof))
    assert drift.chi_square_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-15)


def test_chi_square_homogeneity_is_scipys_contingency_test() -> None:
    rng = np.random.default_rng(0)
    window, reference = rng.integers(20, 200, 20), rng.integers(20, 200, 20)
    ours = drift.chi_square_homogeneity(window, reference)
    theirs = stats.chi2_contingency(np.stack([window, reference]), correction=False)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-10)
    assert ours.dof == theirs.dof
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-8)


def test_sparse_bins_are_merged_until_each_expects_five_rows() -> None:
    window, reference = np.array([0, 1, 0, 50, 60, 0, 1]), np.array([1, 0, 2, 500, 480, 1, 0])
    result = drift.chi_square_homogeneity(window, reference)
    assert result.dof == 1  # two bins left: [0..3] and [4..6]
    assert drift.chi_square_homogeneity(np.zeros(5), reference[:5]).p_value == 1.0


@pytest.mark.parametrize("m, a, b", [(50, 2.0, 98.0), (400, 4.0, 357.0), (3000, 31.0, 2971.0)])
def test_beta_binomial_two_sided_p_value_is_scipys(m: int, a: float, b: float) -> None:
    pmf = stats.betabinom.pmf(np.arange(m + 1), m, a, b)
    for flagged in (0, 1, int(m * a / (a + b)), int(3 * m * a / (a + b)) + 2, m):
        expected = pmf[pmf <= pmf[flagged] * (1 + 1e-9)].sum()
        assert drift.beta_binomial_two_sided(flagged, m, a, b) == pytest.approx(min(1.0, expected), rel=1e-7)


def test_score_buckets_follow_prometheus_le_and_refine_the_equal_count_bins() -> None:
    rng = np.random.default_rng(1)
    reference = np.sort(rng.gamma(3.0, 2.0, 3000))
    bins = drift.ScoreBins.of(reference)
    scores = np.concatenate([rng.gamma(3.0, 2.0, 500), bins.edges[:5]])  # values on an edge count as <= it
    counts = bins.counts(scores)
    cumulative = [int((scores <= e).sum()) for e in bins.edges] + [scores.size]
    assert np.cumsum(counts).tolist() == cumulative
    assert bins.reference_counts.sum() == reference.size
    per_test_bin = np.bincount(bins.test_bin, weights=bins.reference_counts)
    assert per_test_bin.size == drift.DRIFT_BINS
    assert np.allclose(per_test_bin, reference.size / drift.DRIFT_BINS, atol=1)  # equal-count bins
    assert set(np.round(np.quantile(reference, drift.TAIL_QUANTILES, method="inverted_cdf"), 9)) <= set(
        np.round(bins.edges, 9)
    )


def test_p_value_buckets_count_each_p_value_once_by_le() -> None:
    p = np.array([0.001, 0.0011, 0.05, 0.5, 1.0, 1.0])
    counts = drift.p_value_counts(p)
    assert counts.sum() == p.size
    cumulative = np.cumsum(counts)
    assert [int(cumulative[drift.P_VALUE_BUCKETS.index(e)]) for e in (0.001, 0.005, 0.05, 0.5, 1.0)] == [1, 2, 3, 4, 6]


def test_feature_shift_is_the_difference_of_means_in_standard_errors() -> None:
    rng = np.random.default_rng(2)
    ref, win = rng.normal(1.0, 0.5, (800, 3)), rng.normal([1.0, 1.2, 0.8], 0.6, (300, 3))
    z = drift.feature_shift(win.sum(0), (win**2).sum(0), 300, ref.mean(0), ref.std(0, ddof=1), 800)
    expected = (win.mean(0) - ref.mean(0)) / np.sqrt(win.var(0, ddof=1) / 300 + ref.var(0, ddof=1) / 800)
    assert z == pytest.approx(expected, rel=1e-9)


def _false_alarms(n: int, m: int, trials: int, seed: int) -> tuple[float, float]:
    """Share of trials whose window of m normal scores is flagged at 0.05 by (our two-sample test, a one-sample KS
    of the window's conformal p-values), each trial with a fresh reference of n scores."""
    rng = np.random.default_rng(seed)
    ours = ks = 0
    for _ in range(trials):
        reference = np.sort(rng.gamma(3.0, 2.0, n))
        window = rng.gamma(3.0, 2.0, m)
        bins = drift.ScoreBins.of(reference)
        ours += bins.test(bins.counts(window)).p_value < 0.05
        ks += stats.kstest(anomaly.p_values(reference, window), "uniform").pvalue < 0.05
    return ours / trials, ks / trials


@pytest.mark.parametrize("n, m", [(3000, 500), (3000, 6000), (1000, 20000)])
def test_normal_windows_alarm_at_the_level_even_when_larger_than_the_reference(n: int, m: int) -> None:
    trials = 300
    ours, ks = _false_alarms(n, m, trials, seed=n + m)
    se = np.sqrt(0.05 * 0.95 / trials)
    assert ours <= 0.05 + 3 * se
    if m >= 2 * n:  # the one-sample test the issue warns of false-alarms far more often here
        assert ks > 0.05 + 3 * se


@pytest.mark.parametrize("n, q, m", [(360, 0.99, 300), (3000, 0.99, 6000), (3000, 0.95, 20000)])
def test_the_flagged_share_test_alarms_at_its_level_with_the_thresholds_uncertainty(n: int, q: float, m: int) -> None:
    rng = np.random.default_rng(n + m)
    trials, plain_alarms, ours_alarms = 1000, 0, 0
    for _ in range(trials):
        reference = np.sort(rng.normal(size=n))
        threshold = anomaly.threshold_at(reference, q)
        flagged = int((rng.normal(size=m) > threshold).sum())
        ours_alarms += drift.flagged_share_test(flagged, m, n, q) < 0.05
        plain_alarms += stats.binomtest(flagged, m, drift.expected_flagged_share(n, q)).pvalue < 0.05
    se = np.sqrt(0.05 * 0.95 / trials)
    assert ours_alarms / trials <= 0.05 + 3 * se
    if m > n:  # a binomial test that takes the threshold as exact alarms too often once the window is large
        assert plain_alarms / trials > 0.05 + 3 * se


def test_a_shift_of_half_a_standard_deviation_in_the_scores_is_found_in_a_thousand_rows() -> None:
    rng = np.random.default_rng(3)
    found = 0
    for _ in range(100):
        reference = np.sort(rng.normal(size=3000))
        bins = drift.ScoreBins.of(reference)
        found += bins.test(bins.counts(rng.normal(0.5, 1.0, 1000))).p_value < 0.001
    assert found >= 95
