"""The diagnostics' warnings: one rule per kind on the named thresholds, worded once, each triggered only past its
threshold; evaluation stores them with the diagnostics they judge."""

from __future__ import annotations

from typing import Any

import pytest

from contract import Diagnostics
from training.diagnostic_warnings import (
    DECODER_VARIANCE_RATIO,
    GAP_NATS,
    GAP_RELATIVE,
    MIN_DIAGNOSTIC_ROWS,
    diagnostic_warnings,
    with_warnings,
)

HEALTHY = Diagnostics(
    rows=500,
    elbo=-100.0,
    reconstruction=-90.0,
    kl=10.0,
    iwae=-98.0,
    iwae_samples=64,
    gap=2.0,
    kl_per_dim=[1.0, 0.8, 0.5, 0.2],
    active_units=4,
    active_unit_threshold=0.01,
    aggregate_posterior_kl=0.3,
    decoder_variance_mean=0.5,
    data_variance_mean=1.0,
    dequantized_iwae=-98.0,
)
GAP_EDGE = GAP_RELATIVE * abs(HEALTHY.iwae) + GAP_NATS  # the largest gap that is not flagged
VARIANCE_EDGE = DECODER_VARIANCE_RATIO * HEALTHY.data_variance_mean


def _kinds(**update: Any) -> list[str]:
    return [w.kind for w in diagnostic_warnings(HEALTHY.model_copy(update=update))]


def test_healthy_diagnostics_warn_nothing() -> None:
    assert diagnostic_warnings(HEALTHY) == []


@pytest.mark.parametrize(
    ("kind", "at_threshold", "past_threshold"),
    [
        ("few_rows", {"rows": MIN_DIAGNOSTIC_ROWS}, {"rows": MIN_DIAGNOSTIC_ROWS - 1}),
        ("inactive_units", {"active_units": 4}, {"active_units": 3}),
        ("gap", {"gap": GAP_EDGE}, {"gap": GAP_EDGE + 0.01}),
        ("decoder_variance", {"decoder_variance_mean": VARIANCE_EDGE}, {"decoder_variance_mean": VARIANCE_EDGE * 1.01}),
    ],
)
def test_each_warning_is_triggered_only_past_its_threshold(
    kind: str, at_threshold: dict[str, Any], past_threshold: dict[str, Any]
) -> None:
    assert _kinds(**at_threshold) == []
    assert _kinds(**past_threshold) == [kind]


def test_the_gap_threshold_grows_with_the_likelihood_size() -> None:
    assert _kinds(gap=5.0) == []  # 5 nats on a |IWAE| of 98: under a tenth of it
    assert _kinds(iwae=-20.0, gap=5.0) == ["gap"]  # 5 nats on a |IWAE| of 20: a quarter of it
    assert _kinds(iwae=0.0, gap=0.9) == []  # a likelihood near 0 does not flag a fraction of a nat


def test_each_warning_says_what_it_saw_and_what_to_do() -> None:
    loose = HEALTHY.model_copy(update={"rows": 1, "active_units": 1, "gap": 1234.5, "decoder_variance_mean": 25.0})
    messages = {w.kind: w.message for w in diagnostic_warnings(loose)}
    assert list(messages) == ["few_rows", "inactive_units", "gap", "decoder_variance"]  # the order a reader takes
    assert messages["few_rows"].startswith(f"the diagnostics rest on 1 row, fewer than {MIN_DIAGNOSTIC_ROWS}:")
    assert "--val-fraction" in messages["few_rows"]
    assert messages["inactive_units"] == (
        "3 of 4 latent units are inactive (posterior collapse on them); a smaller --latent-dim gives the same model "
        "for less"
    )
    assert messages["gap"].startswith("the variational gap IWAE - ELBO is 1.23e+03 nats:")
    assert "--covariance full" in messages["gap"]
    assert messages["decoder_variance"].startswith("the decoder variance (25) is over 10x the data's (1):")


def test_with_warnings_stores_the_warnings_beside_the_numbers_they_judge() -> None:
    stored = with_warnings(HEALTHY.model_copy(update={"active_units": 2}))
    assert [w.kind for w in stored.warnings] == ["inactive_units"]
    assert stored.model_copy(update={"warnings": []}) == HEALTHY.model_copy(update={"active_units": 2})
    assert with_warnings(stored) == stored  # computed from the numbers, never added to what was there
