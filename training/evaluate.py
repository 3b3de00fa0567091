"""Section 2 diagnostics of a trained model on one split, and the anomaly reference for the manifest."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from contract import AnomalyReference, Diagnostics, LabelledMetrics, anomaly
from training import gaussian as G
from training.diagnostic_warnings import with_warnings
from training.losses import score_terms
from training.model import GaussianVAE
from training.rows import Rows

ACTIVE_UNIT_THRESHOLD = 0.01  # a latent dimension is active when Cov_x(E_q[z_u]) > this (Burda et al. 2016)
REFERENCE_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
APK_ROWS = 1000  # rows of the sampled aggregate-posterior KL: its cost grows as their square
APK_CHUNK = 128  # draws scored against every row's posterior at once


def _chunks(x: Tensor, samples: int, max_draws: int = 1 << 17) -> list[Tensor]:
    # Row chunks whose B * K stays below max_draws, so a large K never holds (N, K, D) at once.
    rows = max(1, max_draws // samples)
    return list(torch.split(x, rows))


@torch.no_grad()
def diagnostics(model: GaussianVAE, x_std: Tensor, samples: int, gen: torch.Generator) -> Diagnostics:
    """ELBO_K, IWAE_K (at the rows as the scorer takes them, lattice features at their bin centres, and dequantised),
    gap, KL per dimension, active units, aggregate-posterior KL, the decoder-variance check and, when every feature is
    on a lattice, the discrete bound in bits/dim; with the warnings they call for (training/diagnostic_warnings.py), as
    the manifest stores them."""
    model.eval()
    d = model.config.latent_dim
    elbo, rec, kl, iwae, deq, kl_dims, means, z_one, dec_var = [], [], [], [], [], [], [], [], []
    factors: list[Tensor] = []  # posterior precision factors of the first APK_ROWS rows
    for x in _chunks(x_std, samples):
        eps = torch.randn(x.shape[0], samples, d, generator=gen, device=x.device)
        centred = model.at_bin_centres(x)
        raw = score_terms(model, centred, eps)
        post = model.encode(centred)
        elbo.append(raw.elbo)
        rec.append(raw.reconstruction)
        kl.append(raw.kl)
        iwae.append(raw.iwae)
        deq.append(score_terms(model, model.dequantize(x, gen), eps).iwae)
        kl_dims.append(raw.kl_per_dim)
        means.append(post.mean)
        z = post.sample(eps[:, :1])[:, 0]  # one posterior draw per row: (B, d)
        z_one.append(z)
        if (need := APK_ROWS - sum(len(f) for f in factors)) > 0:
            scale_tril = post.scale_tril if post.scale_tril is not None else G.diag_scale_tril(post.log_var)
            factors.append(G.precision_factor(scale_tril[:need].double()))
        _, log_var = model.decoded(z)  # the marginal variance of each feature
        # raw-space variance (B, D_act), in float64: a feature on a scale past ~1e19 has a variance past float32's
        dec_var.append(torch.exp(log_var.double()) * model.select(model.data_std).double().square())
    cat = torch.cat
    mean_z = cat(means)  # (N, d)
    x_raw = model.select(x_std * model.data_std + model.data_mean)
    unit_var = mean_z.var(0, unbiased=False) if mean_z.shape[0] > 1 else torch.zeros(d)
    e, w, deq_iwae = cat(elbo).mean().item(), cat(iwae).mean().item(), cat(deq).mean().item()
    few = cat(factors)  # (n, d, d), n = min(N, APK_ROWS)
    sampled_kl = aggregate_posterior_kl_sampled(cat(z_one)[: len(few)], mean_z[: len(few)], few, model.log_prior)
    scaling = model.scaling
    bits = None
    if scaling.discrete_features():
        bits = -(deq_iwae + scaling.log_bin_volume()) / (model.config.input_dim * math.log(2.0))
    computed = Diagnostics(
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
        aggregate_posterior_kl=aggregate_posterior_kl(cat(z_one)) if model.prior is None else sampled_kl,
        aggregate_posterior_kl_sampled=sampled_kl,
        decoder_variance_mean=cat(dec_var).mean().item(),
        data_variance_mean=x_raw.double().var(0, unbiased=False).mean().item(),
        dequantized_iwae=deq_iwae,
        bits_per_dim=bits,
    )
    return with_warnings(computed)


def aggregate_posterior_kl(z: Tensor) -> float | None:
    # Aggregate posterior q(z) = E_x q(z|x), moment-matched from one draw per row: KL(N(m, S) || N(0, I)) in closed
    # form (a lower bound on KL(q(z) || N(0, I))). (N, d) -> float, None when N <= d (the sample covariance is
    # singular). A single Gaussian summarises a multi-modal q(z) badly, so against a mixture prior the diagnostics
    # report the sampled estimate below instead.
    n, d = z.shape
    if n <= d:
        return None
    z = z.double()
    cov = torch.cov(z.T).reshape(d, d) + 1e-9 * torch.eye(d, dtype=torch.float64, device=z.device)
    return float(G.gaussian_kl_to_standard_from_moments(z.mean(0), cov).item())


def aggregate_posterior_kl_sampled(
    z: Tensor, means: Tensor, factors: Tensor, log_prior: Callable[[Tensor], Tensor]
) -> float | None:
    # KL(q(z) || p(z)) of the aggregate posterior of these N rows, q(z) = (1/N) Σ_j q(z|x_j), by sampling (Hoffman &
    # Johnson 2016):  (1/N) Σ_i log q(z_i) - log p(z_i),  z_i ~ q(z|x_i).  Row i's own posterior is part of q(z): left
    # out, the estimate of q(z_i) from the other rows' narrow posteriors collapses in many dimensions. The value
    # depends on N (it is at most E KL(q(z|x) || p) and at least that minus log N), so priors compare on the same
    # rows. z, means (N, d), factors (N, d, d) the posteriors' precision factors L_j⁻ᵀ -> float; None for N < 2.
    n = z.shape[0]
    if n < 2:
        return None
    z64, means64 = z.double(), means.double()
    log_weights = torch.full((n,), -math.log(n), dtype=torch.float64, device=z.device)  # 1/N each
    log_q = []
    for start in range(0, n, APK_CHUNK):
        block = z64[start : start + APK_CHUNK]
        log_q.append(G.log_mixture_normal(block, log_weights, means64, factors))  # (b,) log q(z_i)
    log_p = log_prior(z).double()
    return float((torch.cat(log_q) - log_p).mean().item())


@torch.no_grad()
def anomaly_scores(model: GaussianVAE, x_std: Rows, samples: int, seed: int = anomaly.DEFAULT_NOISE_SEED) -> np.ndarray:
    """-ELBO_K per row in raw-space nats, the statistic the service's /score ranks, with the noise block every row
    shares (contract/anomaly.py): (N, D) -> (N,). Rows are read in chunks, so a memory-mapped split never loads."""
    return anomaly_terms(model, x_std, samples, seed)[0]


@torch.no_grad()
def anomaly_terms(
    model: GaussianVAE, x_std: Rows, samples: int, seed: int = anomaly.DEFAULT_NOISE_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """anomaly_scores, and the mean and standard deviation over the rows of each feature's NLL as the scorer gives
    it (feature_nll, an overflow counted as FLOAT32_MAX): ((N,), (D,), (D,))."""
    model.eval()
    eps = torch.from_numpy(anomaly.score_noise(samples, model.config.latent_dim, seed)).to(x_std.device)
    out = []
    total = total_sq = torch.zeros(model.config.input_dim, dtype=torch.float64, device=x_std.device)
    step = max(1, (1 << 17) // samples)
    for start in range(0, x_std.shape[0], step):
        x = model.at_bin_centres(x_std[start : start + step])
        terms = score_terms(model, x, eps.expand(x.shape[0], -1, -1), per_feature=True)
        assert terms.feature_ll is not None
        out.append(-terms.elbo)
        nll = (-terms.feature_ll).double().nan_to_num(anomaly.FLOAT32_MAX, anomaly.FLOAT32_MAX)
        total, total_sq = total + nll.sum(0), total_sq + (nll**2).sum(0)
    n = max(x_std.shape[0], 1)
    mean = total / n
    std = ((total_sq / n - mean**2).clamp(min=0) * n / max(n - 1, 1)).sqrt()
    return anomaly.finite_scores(torch.cat(out).double().cpu().numpy()), mean.cpu().numpy(), std.cpu().numpy()


def anomaly_reference(
    scores: np.ndarray,
    samples: int,
    default_quantile: float,
    feature_nll: tuple[np.ndarray, np.ndarray] | None = None,
) -> AnomalyReference:
    """Quantiles and the sorted scores (evenly spaced order statistics beyond REFERENCE_SAMPLE_SIZE) of validation
    rows, the conformal threshold at the default quantile, what a user should know about it, and each feature's
    NLL mean and standard deviation over those rows (feature_nll)."""
    ordered = np.sort(scores)
    if ordered.size > anomaly.REFERENCE_SAMPLE_SIZE:
        ordered = ordered[np.linspace(0, ordered.size - 1, anomaly.REFERENCE_SAMPLE_SIZE).round().astype(int)]
    return AnomalyReference(
        importance_samples=samples,
        rows=int(scores.size),
        quantiles={str(q): float(np.quantile(scores, q)) for q in REFERENCE_QUANTILES},
        sample=[float(v) for v in ordered],
        default_quantile=default_quantile,
        threshold=anomaly.threshold_at(ordered, default_quantile),
        warnings=anomaly.threshold_warnings(int(scores.size), default_quantile),
        feature_nll_mean=None if feature_nll is None else [float(v) for v in feature_nll[0]],
        feature_nll_std=None if feature_nll is None else [float(v) for v in feature_nll[1]],
    )


def labelled_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> LabelledMetrics:
    """AUROC, average precision and precision/recall at the threshold of scores against 0/1 labels (1 = anomaly)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = labels.astype(bool)
    flagged = scores > threshold
    both = 0 < y.sum() < y.size
    return LabelledMetrics(
        rows=int(y.size),
        anomalies=int(y.sum()),
        auroc=float(roc_auc_score(y, scores)) if both else None,
        average_precision=float(average_precision_score(y, scores)) if both else None,
        precision=float((flagged & y).sum() / flagged.sum()) if flagged.any() else None,
        recall=float((flagged & y).sum() / y.sum()) if y.any() else None,
    )
