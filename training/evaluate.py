"""Section 2 diagnostics of a trained model on one split, and the anomaly reference for the manifest."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from contract import AnomalyReference, Diagnostics
from training import gaussian as G
from training.losses import score_terms, to_raw_space
from training.model import GaussianVAE

ACTIVE_UNIT_THRESHOLD = 0.01  # a latent dimension is active when Cov_x(E_q[z_u]) > this (Burda et al. 2016)
REFERENCE_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
REFERENCE_SAMPLE_SIZE = 1000


def _chunks(x: Tensor, samples: int, max_draws: int = 1 << 17) -> list[Tensor]:
    # Row chunks whose B * K stays below max_draws, so a large K never holds (N, K, D) at once.
    rows = max(1, max_draws // samples)
    return list(torch.split(x, rows))


@torch.no_grad()
def diagnostics(model: GaussianVAE, x_std: Tensor, samples: int, gen: torch.Generator) -> Diagnostics:
    """ELBO_K, IWAE_K, gap, KL per dimension, active units, aggregate-posterior KL and the decoder-variance check."""
    model.eval()
    d = model.config.latent_dim
    elbo, rec, kl, iwae, kl_dims, means, z_one, dec_var = [], [], [], [], [], [], [], []
    for x in _chunks(x_std, samples):
        eps = torch.randn(x.shape[0], samples, d, generator=gen, device=x.device)
        raw = to_raw_space(score_terms(model, x, eps), model)
        post = model.encoder(x)
        elbo.append(raw.elbo)
        rec.append(raw.reconstruction)
        kl.append(raw.kl)
        iwae.append(raw.iwae)
        kl_dims.append(raw.kl_per_dim)
        means.append(post.mean)
        z = post.sample(eps[:, :1])[:, 0]  # one posterior draw per row: (B, d)
        z_one.append(z)
        _, log_var = model.decoder(z)
        dec_var.append(torch.exp(log_var) * model.data_std.square())  # raw-space variance (B, D)
    cat = torch.cat
    mean_z = cat(means)  # (N, d)
    z_all = cat(z_one)
    # Aggregate posterior q(z) = E_x q(z|x), moment-matched: KL(N(m, S) || N(0, I)).
    cov = torch.cov(z_all.T.double()).reshape(d, d) + 1e-9 * torch.eye(d, dtype=torch.float64, device=z_all.device)
    agg_kl = G.gaussian_kl_to_standard_from_moments(z_all.double().mean(0), cov)
    x_raw = x_std * model.data_std + model.data_mean
    unit_var = mean_z.var(0, unbiased=False) if mean_z.shape[0] > 1 else torch.zeros(d)
    e, w = cat(elbo).mean().item(), cat(iwae).mean().item()
    return Diagnostics(
        rows=int(x_std.shape[0]),
        elbo=e,
        reconstruction=cat(rec).mean().item(),
        kl=cat(kl).mean().item(),
        iwae=w,
        iwae_samples=samples,
        gap=w - e,
        kl_per_dim=cat(kl_dims).mean(0).tolist(),
        active_units=int((unit_var > ACTIVE_UNIT_THRESHOLD).sum().item()),
        active_unit_threshold=ACTIVE_UNIT_THRESHOLD,
        aggregate_posterior_kl=float(agg_kl.item()),
        decoder_variance_mean=cat(dec_var).mean().item(),
        data_variance_mean=x_raw.var(0, unbiased=False).mean().item(),
    )


@torch.no_grad()
def anomaly_scores(model: GaussianVAE, x_std: Tensor, samples: int, gen: torch.Generator) -> np.ndarray:
    """-ELBO_K per row in raw-space nats, the statistic the service's /score ranks: (N, D) -> (N,)."""
    model.eval()
    out = []
    for x in _chunks(x_std, samples):
        eps = torch.randn(x.shape[0], samples, model.config.latent_dim, generator=gen, device=x.device)
        out.append(-to_raw_space(score_terms(model, x, eps), model).elbo)
    return torch.cat(out).double().cpu().numpy()


def anomaly_reference(scores: np.ndarray, samples: int, default_quantile: float) -> AnomalyReference:
    """Quantiles and an evenly spaced sorted sample (<= 1000 order statistics) of validation anomaly scores."""
    ordered = np.sort(scores)
    if ordered.size > REFERENCE_SAMPLE_SIZE:
        ordered = ordered[np.linspace(0, ordered.size - 1, REFERENCE_SAMPLE_SIZE).round().astype(int)]
    return AnomalyReference(
        importance_samples=samples,
        quantiles={str(q): float(np.quantile(scores, q)) for q in REFERENCE_QUANTILES},
        sample=[float(v) for v in ordered],
        default_quantile=default_quantile,
        threshold=float(np.quantile(scores, default_quantile)),
    )
