"""The prior after training: a Gaussian mixture fitted to the aggregate posterior, kept when validation says so.

For a fixed encoder and decoder the ELBO's prior term, E_x E_q(z|x)[log p(z)], is largest when p(z) is the
aggregate posterior q(z) = E_x q(z|x) (Hoffman & Johnson 2016; Tomczak & Welling 2018). The model trains against
N(0, I); then M-component mixtures are fitted by EM to draws z ~ q(z|x) over training rows, for M = 1, 2, 4, ...
up to `--prior-components` (and at most one component per 2d of the rows it is fitted to: at most FIT_ROWS, less
those --trim leaves out), and the candidate with the best validation ELBO_K (on at most VALIDATION_ROWS rows) wins,
N(0, I) included: a mixture is kept only when it beats N(0, I) on rows the fit never saw by more than --min-delta.
Larger mixtures stop being tried after STOP_AFTER_WORSE in a row bring no gain, or when one cannot be fitted. Every
candidate is scored with the same validation noise (common random numbers), so the comparison is not a draw of luck.

ELBO and IWAE stay lower bounds on log p(x) of the model with the new prior; only the KL loses its closed form
(training/losses.py estimates it from the same K draws).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from contract import MixturePrior
from training import gaussian as G
from training.config import TrainConfig
from training.loop import evaluate_elbo
from training.losses import score_terms, trimmed_count, trimmed_rows
from training.model import GaussianVAE
from training.rows import Rows

log = logging.getLogger(__name__)

VALIDATION_ROWS = 10_000  # validation rows the candidates are compared on (a seeded sample when there are more)
FIT_ROWS = 4096  # training rows whose posteriors the mixture is fitted to (a seeded sample when there are more)
FIT_DRAWS = 5_000  # draws z ~ q(z|x) over those rows: up to 10 per row
REG_COVAR = 1e-4  # added to each component's covariance diagonal (latent units, where posterior sds are ~0.1)
EM_ITERATIONS = 100
EM_TOLERANCE = 1e-3  # nats of mean log-likelihood per draw (scikit-learn's default)
TRIM_SAMPLES = 16  # K of the ELBO_K that ranks training rows for --trim
STOP_AFTER_WORSE = 2  # stop trying larger mixtures after this many in a row fail to beat the best


def candidate_sizes(max_components: int, rows: int, latent_dim: int) -> list[int]:
    """1, 2, 4, ... up to max_components and to one component per 2d of the rows fitted to (at least 1)."""
    cap = max(1, min(max_components, rows // (2 * latent_dim)))
    return [2**i for i in range(int(math.log2(cap)) + 1)]


@torch.no_grad()
def posterior_draws(model: GaussianVAE, x_train: Rows, seed: int, trim: float = 0.0) -> Tensor:
    """z ~ q(z|x) over a seeded sample of at most FIT_ROWS training rows, dequantised as training saw them, less the
    `trim` share of them with the lowest ELBO (the rows --trim kept out of training: the prior models the rows the
    model fits, not the anomalies among them): (n_draws, d) float64 on the model's device."""
    model.eval()
    gen = torch.Generator(device=model.data_mean.device).manual_seed(seed)
    n, d = x_train.shape[0], model.config.latent_dim
    picked = torch.randperm(n, generator=gen, device=gen.device)[:FIT_ROWS].sort().values
    x = x_train[picked]
    if model.dequantize_training:
        x = model.dequantize(x, gen)
    if trim > 0:
        eps = torch.randn(x.shape[0], TRIM_SAMPLES, d, generator=gen, device=x.device)
        x = x[trimmed_rows(score_terms(model, x, eps).elbo, trim)]
    per_row = max(1, min(10, FIT_DRAWS // x.shape[0]))
    post = model.encode(x)
    eps = torch.randn(x.shape[0], per_row, d, generator=gen, device=x.device)
    return post.sample(eps).reshape(-1, d).double()


def _seed_means(z: Tensor, components: int, gen: torch.Generator) -> Tensor:
    # k-means++ seeding (Arthur & Vassilvitskii 2007): each next mean a draw picked with probability ∝ its squared
    # distance to the nearest mean so far;  z (n, d) -> (M, d)
    first = int(torch.randint(z.shape[0], (1,), generator=gen, device=gen.device).item())
    means = z[first : first + 1]
    nearest = (z - means).square().sum(-1)  # (n,)
    for _ in range(components - 1):
        pick = int(torch.multinomial(nearest + 1e-12, 1, generator=gen).item())
        means = torch.cat([means, z[pick : pick + 1]])
        nearest = torch.minimum(nearest, (z - z[pick]).square().sum(-1))
    return means


def fit_mixture(z: Tensor, components: int, seed: int) -> MixturePrior:
    """Maximum likelihood by EM (Dempster et al. 1977) of a full-covariance Gaussian mixture to draws z (n, d), in
    float64: k-means++ means, the draws' covariance for every component, equal weights; then up to EM_ITERATIONS
    steps, stopping when the mean log-likelihood gains less than EM_TOLERANCE nats."""
    n, d = z.shape
    gen = torch.Generator(device=z.device).manual_seed(seed)
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    means = _seed_means(z, components, gen)  # (M, d)
    scale_tril = torch.linalg.cholesky(torch.cov(z.T).reshape(d, d) + REG_COVAR * eye).expand(components, d, d)
    log_weights = torch.full((components,), -math.log(components), dtype=z.dtype, device=z.device)
    previous = -math.inf
    for _ in range(EM_ITERATIONS):
        # E step: responsibilities r_nm = p(m | z_n)  (n, M)
        log_joint = G.log_normal_components(z, log_weights, means, G.precision_factor(scale_tril))
        log_lik = torch.logsumexp(log_joint, -1, keepdim=True)  # (n, 1)
        resp = torch.exp(log_joint - log_lik)
        # M step: N_m = Σ_n r_nm, μ_m = Σ_n r_nm z_n / N_m, Σ_m = Σ_n r_nm (z_n - μ_m)(z_n - μ_m)ᵀ / N_m + reg I
        counts = resp.sum(0).clamp(min=1e-10)  # (M,)
        means = (resp.T @ z) / counts[:, None]
        diff = z[:, None, :] - means  # (n, M, d)
        cov = torch.einsum("nm,nmd,nme->mde", resp, diff, diff) / counts[:, None, None] + REG_COVAR * eye
        scale_tril = torch.linalg.cholesky(cov)
        log_weights = torch.log(counts / n)
        mean_log_lik = float(log_lik.mean().item())
        if mean_log_lik - previous < EM_TOLERANCE:
            break
        previous = mean_log_lik
    keep = counts >= d + 1  # a component holding fewer draws than a covariance needs would be a spike; dropped
    weights = torch.exp(log_weights[keep])
    return MixturePrior(
        weights=(weights / weights.sum()).tolist(),
        means=means[keep].tolist(),
        scale_tril=scale_tril[keep].tolist(),
    )


def choose_prior(model: GaussianVAE, x_train: Rows, x_val: Rows, cfg: TrainConfig) -> MixturePrior | None:
    """Fit mixtures of growing size and return the one with the best validation ELBO_K (K = cfg.score_samples), or
    None when N(0, I) is at least as good; model.prior is left as it was found (N(0, I))."""
    gen = torch.Generator(device=model.data_mean.device)

    def validation_elbo() -> float:
        gen.manual_seed(cfg.seed)  # the same dequantisation and noise for every candidate
        return evaluate_elbo(model, x_val, cfg.score_samples, gen)[0]

    standard = validation_elbo()
    selection, best, best_elbo, worse = {"0": standard}, None, standard, 0
    z = posterior_draws(model, x_train, cfg.seed, cfg.trim)
    fitted_rows = min(x_train.shape[0], FIT_ROWS)
    fitted_rows -= trimmed_count(fitted_rows, cfg.trim)  # the rows whose codes the mixture sees
    try:
        for m in candidate_sizes(cfg.prior_components, fitted_rows, model.config.latent_dim):
            try:
                spec = fit_mixture(z, m, cfg.seed)
            except (torch.linalg.LinAlgError, ValueError) as exc:  # a degenerate fit: keep the best so far
                log.warning("the %d-component prior did not fit (%s); larger ones are not tried", m, exc)
                break
            model.set_prior(spec)
            selection[str(m)] = elbo = validation_elbo()
            if elbo > best_elbo + cfg.min_delta:
                best, best_elbo, worse = spec.model_copy(update={"fitted_as": m}), elbo, 0
            else:
                worse += 1
                if worse >= STOP_AFTER_WORSE:
                    break
    finally:
        model.set_prior(None)
    return None if best is None else best.model_copy(update={"selection": selection})
