"""The ELBO, its per-dimension KL and the IWAE bound, per example; the caller reduces.

All densities are nats per example in raw data space: the standardisation's log-Jacobian is added per feature.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from training import gaussian as G
from training.model import GaussianVAE


class ScoreTerms(NamedTuple):
    reconstruction: Tensor  # (B,)  (1/K) Σ_k log p(x|z_k)
    kl: Tensor  # (B,)  KL(q(z|x) || p(z)): closed form for N(0, I), (1/K) Σ_k log q(z_k|x) - log p(z_k) for a mixture
    kl_per_dim: Tensor  # (B, d) marginal KLs to N(0, 1), the training prior (sum to kl: diagonal kind, N(0, I))
    log_w: Tensor  # (B, K) log p(x|z_k) + log p(z_k) - log q(z_k|x)
    log_px: Tensor  # (B, K) log p(x|z_k)
    # (B, D) (1/K) Σ_k log p(x_j|z_k), each feature's marginal given z; None unless asked for (score_terms'
    # per_feature: a decorrelated model's marginals cost a D x D product that training has no use for)
    feature_ll: Tensor | None = None

    @property
    def elbo(self) -> Tensor:
        # ELBO_K = (1/K) Σ_k log p(x|z_k) - KL;  (B,)
        return self.reconstruction - self.kl

    @property
    def iwae(self) -> Tensor:
        # IWAE_K = log (1/K) Σ_k w_k (Burda et al. 2016, eq. 8);  (B,)
        return G.log_mean_exp(self.log_w)


def score_terms(model: GaussianVAE, x_std: Tensor, eps: Tensor, per_feature: bool = False) -> ScoreTerms:
    """x_std (B, D) standardised rows, eps (B, K, d) standard normal draws -> per-example terms in raw-space nats.

    p_raw(x_j | z) = p_std(x_std_j | z) / std_j: each feature's standardised log density plus its offset
    (-log std_j, and 0 nats at the value of a point-mass constant); constant columns have the fixed N(0, 1) of
    their standardised value, whatever z.

    Decorrelated, the networks model y = L⁻¹ x_std over the active features: log p(x|z) is y's density plus the
    Jacobian -Σ_j log L_jj, and feature j's term is its marginal N((L m)_j, (L diag(v) Lᵀ)_jj) given z, so the
    terms no longer add up to log p(x|z), which holds the correlations. feature_ll only with per_feature."""
    v = model.decorrelate(x_std)  # (B, D): x_std, or y in place of the active features
    post = model.encoder(model.encoder_input(x_std))
    z = post.sample(eps)  # (B, K, d)
    mean, log_var = model.decoder(z)  # (B, K, D_active)
    ll_feat = G.log_normal(v.unsqueeze(-2), model.full(mean), model.full(log_var)) + model.feature_log_offset
    ll = ll_feat.sum(-1)  # (B, K)
    if model.decorrelating:
        ll = ll - model.log_det_factor
        if per_feature:
            marginal_mean, marginal_log_var = model.marginals(mean, log_var)
            ll_feat = G.log_normal(x_std.unsqueeze(-2), model.full(marginal_mean), model.full(marginal_log_var))
            ll_feat = ll_feat + model.feature_log_offset
    log_q, log_p = post.log_prob_from_eps(eps), model.log_prior(z)  # (B, K) each
    kl = post.kl() if model.prior is None else (log_q - log_p).mean(-1)  # no closed form against a mixture
    feature_ll = ll_feat.mean(-2) if per_feature else None
    return ScoreTerms(ll.mean(-1), kl, post.kl_per_dim(), ll + log_p - log_q, ll, feature_ll)


def trimmed_count(rows: int, fraction: float) -> int:
    """floor(fraction * rows), the rows --trim leaves out of a batch of `rows` (0.29 * 100 is 28.999...: 29)."""
    return math.floor(fraction * rows + 1e-9)


def trimmed_rows(elbo: Tensor, fraction: float) -> Tensor:
    """Indices of the rows kept when the floor(fraction * B) of lowest ELBO are left out: elbo (B,) -> (B - that,),
    in row order."""
    kept = elbo.shape[0] - trimmed_count(elbo.shape[0], fraction)
    return torch.topk(elbo.detach(), kept).indices.sort().values


def trimmed(terms: ScoreTerms, fraction: float) -> ScoreTerms:
    """The minibatch without its floor(fraction * B) rows of lowest ELBO: a trimmed likelihood (the idea of least
    trimmed squares, Rousseeuw 1984), so that a few anomalies among the training rows do not pull the model onto
    themselves. Every term (B, ...) -> (B - floor(fraction * B), ...); the ranking carries no gradient."""
    if trimmed_count(terms.reconstruction.shape[0], fraction) == 0:
        return terms
    idx = trimmed_rows(terms.elbo, fraction)
    return ScoreTerms(*(None if t is None else t[idx] for t in terms))


def training_loss(terms: ScoreTerms, beta: float, free_bits: float) -> Tensor:
    """-(reconstruction - beta * KL) averaged over the batch, with optional free bits (Kingma et al. 2016, eq. 15).

    Free bits: each latent dimension's batch-mean marginal KL counts as at least `free_bits` nats, so the
    optimiser gains nothing by pushing it lower. For the full kind, the correlation part of the KL
    (KL - Σ_j marginal KL_j >= 0) is added unchanged.
    """
    if free_bits > 0:
        per_dim = terms.kl_per_dim.mean(0).clamp(min=free_bits).sum()
        kl = per_dim + (terms.kl - terms.kl_per_dim.sum(-1)).mean()
    else:
        kl = terms.kl.mean()
    return -(terms.reconstruction.mean() - beta * kl)


def iwae_loss(terms: ScoreTerms, beta: float) -> Tensor:
    """-IWAE_K averaged over the batch (Burda et al. 2016, eq. 8), with the prior-to-posterior ratio of each weight
    raised to beta during warm-up: log w_k = log p(x|z_k) + beta (log p(z_k) - log q(z_k|x)); K = 1 is the ELBO
    with a one-sample KL."""
    log_w = beta * terms.log_w + (1.0 - beta) * terms.log_px
    return -G.log_mean_exp(log_w).mean()
