"""Draws from a bundle's prior (contract/prior.py): the old N(0, I) rule unchanged, a mixture's moments, temperature."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from contract import MixturePrior
from contract.prior import MixtureArrays, draw_latents

PRIOR = MixturePrior(
    weights=[0.2, 0.5, 0.3],
    means=[[-3.0, 0.0], [2.0, 1.0], [0.0, -4.0]],
    scale_tril=[[[0.5, 0.0], [0.2, 0.3]], [[1.0, 0.0], [-0.4, 0.6]], [[0.3, 0.0], [0.0, 0.8]]],
)
ARRAYS = MixtureArrays.of(PRIOR)


def test_without_a_prior_latents_are_the_scaled_standard_normal_draws_of_the_seed() -> None:
    z = draw_latents(None, 6, 3, 0.5, np.random.default_rng(7))
    expected = 0.5 * np.random.default_rng(7).standard_normal((6, 3), dtype=np.float32)
    np.testing.assert_array_equal(z, expected.astype(np.float32))
    assert z.dtype == np.float32


def test_mixture_draws_have_the_mixtures_mean_and_covariance() -> None:
    z = draw_latents(ARRAYS, 200_000, 2, 1.0, np.random.default_rng(0)).astype(np.float64)
    w, mu = np.asarray(PRIOR.weights), np.asarray(PRIOR.means)
    tril = np.asarray(PRIOR.scale_tril)
    mean = w @ mu
    second = np.einsum("m,mij->ij", w, tril @ tril.transpose(0, 2, 1) + np.einsum("mi,mj->mij", mu, mu))
    np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(z.T), second - np.outer(mean, mean), atol=0.05)


def test_each_component_is_drawn_as_often_as_its_weight() -> None:
    z = draw_latents(ARRAYS, 60_000, 2, 1e-6, np.random.default_rng(1))  # t -> 0: each draw sits on its mean
    nearest = np.argmin(((z[:, None, :] - np.asarray(PRIOR.means)) ** 2).sum(-1), 1)
    share = np.bincount(nearest, minlength=3) / len(z)
    np.testing.assert_allclose(share, PRIOR.weights, atol=0.01)
    np.testing.assert_allclose(z, np.asarray(PRIOR.means, np.float32)[nearest], atol=1e-5)


def test_temperature_scales_the_spread_around_each_component_mean() -> None:
    one = draw_latents(ARRAYS, 1000, 2, 1.0, np.random.default_rng(3)).astype(np.float64)
    half = draw_latents(ARRAYS, 1000, 2, 0.5, np.random.default_rng(3)).astype(np.float64)
    nearest = np.argmin(((half[:, None, :] - np.asarray(PRIOR.means)) ** 2).sum(-1), 1)
    centre = np.asarray(PRIOR.means)[nearest]  # the same seed picks the same components and eps
    np.testing.assert_allclose(half - centre, 0.5 * (one - centre), atol=1e-5)


def test_the_same_seed_gives_the_same_latents() -> None:
    a = draw_latents(ARRAYS, 50, 2, 1.0, np.random.default_rng(9))
    np.testing.assert_array_equal(a, draw_latents(ARRAYS, 50, 2, 1.0, np.random.default_rng(9)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": [0.5, 0.6, 0.3]}, "sum to 1"),
        ({"means": [[0.0, 0.0], [1.0, 1.0]]}, "same number"),
        ({"means": [[0.0], [1.0, 1.0], [2.0, 2.0]]}, "d entries"),
        ({"scale_tril": [[[0.5, 0.1], [0.2, 0.3]], *PRIOR.scale_tril[1:]]}, "lower triangular"),
        ({"scale_tril": [[[0.0, 0.0], [0.2, 0.3]], *PRIOR.scale_tril[1:]]}, "positive diagonal"),
    ],
)
def test_a_malformed_prior_is_refused_with_the_rule_it_breaks(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MixturePrior.model_validate({**PRIOR.model_dump(), **change})
