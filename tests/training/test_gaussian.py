"""The Gaussian maths against torch.distributions and an independent numpy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from training import gaussian as G


def _random_posterior(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(b, d, generator=gen, dtype=torch.float64)
    a = torch.randn(b, d, d, generator=gen, dtype=torch.float64)
    raw_b = torch.randn(b, d, generator=gen, dtype=torch.float64)
    scale_tril, _ = G.full_scale_tril(a, raw_b, 1e-3)
    return mean, scale_tril


def _numpy_kl_to_standard(mean: np.ndarray, cov: np.ndarray) -> float:
    d = mean.shape[0]
    _, logdet = np.linalg.slogdet(cov)
    return 0.5 * (np.trace(cov) + mean @ mean - d - logdet)


def test_diagonal_kl_matches_torch_distributions_and_numpy() -> None:
    gen = torch.Generator().manual_seed(1)
    mean = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    log_var = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    ours = G.kl_diag_to_standard(mean, log_var).sum(-1)
    oracle = kl_divergence(Normal(mean, torch.exp(0.5 * log_var)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(ours, oracle)
    for i in range(6):
        expected = _numpy_kl_to_standard(mean[i].numpy(), np.diag(np.exp(log_var[i].numpy())))
        assert ours[i].item() == pytest.approx(expected, rel=1e-10)


def test_full_kl_matches_torch_distributions_and_numpy() -> None:
    mean, scale_tril = _random_posterior(7, 4, seed=2)
    ours = G.kl_tril_to_standard(mean, scale_tril)
    prior = MultivariateNormal(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    oracle = kl_divergence(MultivariateNormal(mean, scale_tril=scale_tril), prior)
    torch.testing.assert_close(ours, oracle)
    for i in range(7):
        cov = (scale_tril[i] @ scale_tril[i].T).numpy()
        assert ours[i].item() == pytest.approx(_numpy_kl_to_standard(mean[i].numpy(), cov), rel=1e-9)


def test_full_kl_of_a_diagonal_factor_equals_diagonal_kl() -> None:
    gen = torch.Generator().manual_seed(3)
    mean = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    log_var = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        G.kl_tril_to_standard(mean, G.diag_scale_tril(log_var)), G.kl_diag_to_standard(mean, log_var).sum(-1)
    )


def test_closed_form_kl_matches_monte_carlo_estimate() -> None:
    mean, scale_tril = _random_posterior(1, 3, seed=4)
    gen = torch.Generator().manual_seed(5)
    eps = torch.randn(1, 200_000, 3, generator=gen, dtype=torch.float64)
    z = G.reparameterize(mean, scale_tril, eps)
    log_q = G.log_q_from_eps(eps, torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)))
    mc = (log_q - G.log_standard_normal(z)).mean().item()
    assert mc == pytest.approx(G.kl_tril_to_standard(mean, scale_tril).item(), abs=0.02)


def test_full_scale_tril_is_lower_triangular_with_diagonal_above_floor() -> None:
    gen = torch.Generator().manual_seed(6)
    scale_tril, log_diag = G.full_scale_tril(torch.randn(5, 4, 4, generator=gen), -30 * torch.ones(5, 4), 1e-3)
    assert torch.all(torch.triu(scale_tril, 1) == 0)
    diag = torch.diagonal(scale_tril, dim1=-2, dim2=-1)
    assert torch.all(diag >= 1e-3)
    torch.testing.assert_close(log_diag, torch.log(diag))


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_log_q_by_change_of_variables_matches_multivariate_normal(kind: str) -> None:
    mean, scale_tril = _random_posterior(5, 4, seed=7)
    if kind == "diagonal":
        log_var = torch.randn(5, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
        scale_tril = G.diag_scale_tril(log_var)
    eps = torch.randn(5, 6, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    z = G.reparameterize(mean, scale_tril, eps)
    ours = G.log_q_from_eps(eps, torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)))
    oracle = MultivariateNormal(mean.unsqueeze(1), scale_tril=scale_tril.unsqueeze(1)).log_prob(z)
    torch.testing.assert_close(ours, oracle)


def test_diagonal_reparameterisation_equals_the_matrix_form() -> None:
    gen = torch.Generator().manual_seed(10)
    mean, log_var = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    eps = torch.randn(3, 5, 4, generator=gen)
    torch.testing.assert_close(
        G.reparameterize_diag(mean, log_var, eps), G.reparameterize(mean, G.diag_scale_tril(log_var), eps)
    )


def test_log_normal_matches_torch_normal() -> None:
    gen = torch.Generator().manual_seed(11)
    x, mean, log_var = (torch.randn(4, 7, generator=gen, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(G.log_normal(x, mean, log_var), Normal(mean, torch.exp(0.5 * log_var)).log_prob(x))


def test_log_standard_normal_matches_numpy() -> None:
    z = np.random.default_rng(12).normal(size=(3, 5))
    expected = (-0.5 * np.log(2 * np.pi) - 0.5 * z**2).sum(-1)
    np.testing.assert_allclose(G.log_standard_normal(torch.from_numpy(z)).numpy(), expected, rtol=1e-12)


def test_log_mean_exp_matches_logsumexp_minus_log_k_even_for_huge_values() -> None:
    log_w = torch.tensor([[1000.0, 1001.0, 999.0], [-1e4, -1e4 + 1, -1e4 + 2]], dtype=torch.float64)
    expected = torch.logsumexp(log_w, -1) - math.log(3)
    torch.testing.assert_close(G.log_mean_exp(log_w), expected)


@settings(deadline=None, max_examples=40)
@given(k=st.integers(1, 16), b=st.integers(1, 8), scale=st.floats(0.1, 10))
def test_iwae_bound_is_never_below_mean_log_weight(k: int, b: int, scale: float) -> None:
    log_w = torch.randn(b, k, generator=torch.Generator().manual_seed(k * 100 + b), dtype=torch.float64) * scale
    assert torch.all(G.log_mean_exp(log_w) >= log_w.mean(-1) - 1e-9)  # Jensen: IWAE_K >= ELBO


def test_iwae_with_one_sample_is_the_log_weight() -> None:
    log_w = torch.randn(5, 1, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    torch.testing.assert_close(G.log_mean_exp(log_w), log_w[:, 0])


def test_soft_clamp_stays_inside_bounds_and_is_near_identity_inside() -> None:
    t = torch.tensor([-1e6, -50.0, 0.0, 1.0, 50.0, 1e6], dtype=torch.float64)
    out = G.soft_clamp(t, -12.0, 8.0)
    # Composing the two soft bounds can overshoot by softplus(hi - lo) - (hi - lo) ~ 2e-9: negligible, still finite.
    assert torch.all(out >= -12.0 - 1e-6) and torch.all(out <= 8.0 + 1e-6)
    assert out[2].item() == pytest.approx(0.0, abs=1e-3) and out[3].item() == pytest.approx(1.0, abs=1e-3)


def test_aggregate_kl_of_standard_moments_is_zero() -> None:
    kl = G.gaussian_kl_to_standard_from_moments(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    assert kl.item() == pytest.approx(0.0, abs=1e-12)


def _random_mixture(m: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    log_weights = torch.log_softmax(torch.randn(m, generator=gen, dtype=torch.float64), 0)
    means = 2.0 * torch.randn(m, d, generator=gen, dtype=torch.float64)
    _, scale_tril = _random_posterior(m, d, seed + 1)
    return log_weights, means, scale_tril


def test_mixture_log_density_matches_torch_distributions_and_numpy() -> None:
    from torch.distributions import Categorical, MixtureSameFamily

    from contract import MixturePrior
    from tests.reference_math import log_mixture

    log_weights, means, scale_tril = _random_mixture(5, 3, seed=4)
    z = torch.randn(7, 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = G.log_mixture_normal(z, log_weights, means, G.precision_factor(scale_tril))  # (7, 2)
    oracle = MixtureSameFamily(Categorical(logits=log_weights), MultivariateNormal(means, scale_tril=scale_tril))
    torch.testing.assert_close(ours, oracle.log_prob(z))
    prior = MixturePrior(weights=log_weights.exp().tolist(), means=means.tolist(), scale_tril=scale_tril.tolist())
    np.testing.assert_allclose(ours.numpy(), log_mixture(z.numpy(), prior), rtol=1e-9)


def test_precision_factor_inverts_the_covariance() -> None:
    _, scale_tril = _random_posterior(4, 5, seed=6)
    p = G.precision_factor(scale_tril)
    cov = scale_tril @ scale_tril.transpose(-1, -2)
    torch.testing.assert_close(p @ p.transpose(-1, -2), torch.linalg.inv(cov))
    torch.testing.assert_close(p, p.triu())  # upper triangular: log det from its diagonal
