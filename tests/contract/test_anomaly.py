"""The anomaly rules every reader of a bundle applies: conformal threshold and p-value, overflow, common noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import anomaly


def test_threshold_is_the_conformal_order_statistic() -> None:
    ref = np.arange(1.0, 200.0)  # 199 scores 1..199
    # ceil((n + 1) q)-th smallest: ceil(200 * 0.9) = 180 -> the score 180
    assert anomaly.threshold_at(ref, 0.9) == 180.0
    assert anomaly.threshold_at(ref, 0.5) == 100.0
    assert anomaly.threshold_at(ref, 0.999) == 199.0  # too few rows for q: the largest score


def test_a_normal_row_exceeds_the_threshold_at_most_one_minus_q_of_the_time() -> None:
    # Exchangeability: reference and new row from one distribution -> P(score > threshold) <= 1 - q.
    rng = np.random.default_rng(0)
    n, q, trials = 50, 0.9, 4000
    exceed, small_p = 0, 0
    for _ in range(trials):
        draws = rng.standard_normal(n + 1)
        ref, new = np.sort(draws[:n]), draws[n:]
        exceed += int(new[0] > anomaly.threshold_at(ref, q))
        small_p += int(anomaly.p_values(ref, new)[0] <= 0.1)
    assert exceed / trials <= 1 - q + 0.015
    assert small_p / trials <= 0.1 + 0.015


@settings(deadline=None, derandomize=True)
@given(
    ref=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50),
    scores=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=10),
)
def test_p_values_and_percentiles_match_their_definitions(ref: list[float], scores: list[float]) -> None:
    r, s = np.sort(np.array(ref)), np.array(scores)
    expected_p = np.array([(1 + sum(v >= x for v in ref)) / (len(ref) + 1) for x in scores])
    np.testing.assert_allclose(anomaly.p_values(r, s), expected_p)
    np.testing.assert_allclose(anomaly.percentiles(r, s), 100 * (1 - expected_p))


def test_overflowed_scores_are_finite_the_largest_and_at_percentile_100() -> None:
    raw = np.array([1.0, np.inf, np.nan, -np.inf, 1e300], dtype=np.float64)
    scores = anomaly.finite_scores(raw)
    assert np.all(np.isfinite(scores))
    assert scores[0] == 1.0 and list(scores[1:3]) == [anomaly.FLOAT32_MAX] * 2 and scores[4] == anomaly.FLOAT32_MAX
    ref = np.array([0.0, 1.0, 2.0])
    assert anomaly.percentiles(ref, scores)[1] == 100.0
    assert anomaly.percentiles(ref, np.array([5.0]))[0] == pytest.approx(75.0)  # above all 3: 1 - 1/4
    assert list(anomaly.finite_log_densities(np.array([np.nan, -np.inf, 3.0]))) == [-anomaly.FLOAT32_MAX] * 2 + [3.0]


def test_too_few_validation_rows_for_the_quantile_are_warned_about() -> None:
    (warning,) = anomaly.threshold_warnings(50, 0.99)
    assert "needs at least 99" in warning
    (rough,) = anomaly.threshold_warnings(500, 0.99)
    assert "only 4 of 500" in rough  # ceil(501 * 0.99) = 496: 4 rows above
    assert anomaly.threshold_warnings(5000, 0.99) == []


def test_score_noise_is_one_block_fixed_by_its_seed() -> None:
    a, b = anomaly.score_noise(16, 4), anomaly.score_noise(16, 4)
    assert a.shape == (16, 4) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, anomaly.score_noise(16, 4, seed=1))
    assert not np.array_equal(anomaly.score_noise(16, 4, seed=None), anomaly.score_noise(16, 4, seed=None))
    assert math.isclose(float(np.abs(anomaly.score_noise(4096, 2)).mean()), math.sqrt(2 / math.pi), rel_tol=0.05)
