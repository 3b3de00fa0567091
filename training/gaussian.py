"""Gaussian maths as pure functions (Kingma & Welling 2014; Burda et al. 2016 for IWAE).

Names and axis order follow the bundle: x (B, D), eps and z (B, K, d), mean (B, d), log_var (B, d),
scale_tril (B, d, d), log_w (B, K). Every function returns per-example values; callers reduce.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def soft_clamp(t: Tensor, lo: float | Tensor, hi: float) -> Tensor:
    # Smoothly keeps t in (lo, hi) (lo may be per feature): identity far from the bounds, gradients never zero.
    t = lo + F.softplus(t - lo)
    return hi - F.softplus(hi - t)


def log_normal(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    # log N(x; mean, e^log_var), elementwise = -½ [log 2π + log_var + (x - mean)² e^-log_var];  (..., D) -> (..., D)
    return -0.5 * (LOG_2PI + log_var + (x - mean).square() * torch.exp(-log_var))


def log_standard_normal(z: Tensor) -> Tensor:
    # log N(z; 0, I) summed over the last axis = -½ Σ_j (log 2π + z_j²);  (..., d) -> (...)
    return -0.5 * (LOG_2PI + z.square()).sum(-1)


def log_normal_components(z: Tensor, log_weights: Tensor, means: Tensor, precision_factor: Tensor) -> Tensor:
    # log π_m + log N(z; μ_m, Σ_m) for each component m, with Σ_m⁻¹ = P_m P_mᵀ (P_m = L_m⁻ᵀ, upper triangular):
    #   log N(z; μ_m, Σ_m) = -½ d log 2π + Σ_i log P_m,ii - ½ ‖(z - μ_m)ᵀ P_m‖²
    # z (..., d), log π (M,), μ (M, d), P (M, d, d) -> (..., M).  One (d, M d) matmul for every component, so the
    # exported graph stays a few dense ops.
    m, d = means.shape
    flat = precision_factor.permute(1, 0, 2).reshape(d, m * d)  # [P_1 | P_2 | ... | P_M]
    shifted = (z @ flat).reshape(*z.shape[:-1], m, d) - torch.einsum("md,mde->me", means, precision_factor)
    log_det = torch.log(torch.diagonal(precision_factor, dim1=-2, dim2=-1)).sum(-1)  # (M,)
    return log_weights + log_det - 0.5 * (d * LOG_2PI + shifted.square().sum(-1))


def log_mixture_normal(z: Tensor, log_weights: Tensor, means: Tensor, precision_factor: Tensor) -> Tensor:
    # log Σ_m π_m N(z; μ_m, Σ_m);  z (..., d) -> (...)
    return torch.logsumexp(log_normal_components(z, log_weights, means, precision_factor), -1)


def precision_factor(scale_tril: Tensor) -> Tensor:
    # P = L⁻ᵀ, so that Σ⁻¹ = (L Lᵀ)⁻¹ = P Pᵀ;  (..., d, d) -> (..., d, d) upper triangular
    eye = torch.eye(scale_tril.shape[-1], dtype=scale_tril.dtype, device=scale_tril.device).expand_as(scale_tril)
    return torch.linalg.solve_triangular(scale_tril, eye, upper=False).transpose(-1, -2)


def diag_scale_tril(log_var: Tensor) -> Tensor:
    # L = diag(exp(log_var / 2));  (B, d) -> (B, d, d)
    return torch.exp(0.5 * log_var).unsqueeze(-2) * torch.eye(log_var.shape[-1], device=log_var.device)


def full_scale_tril(a: Tensor, b: Tensor, min_diag: float) -> tuple[Tensor, Tensor]:
    # L = tril(A, -1) + diag(softplus(b) + min_diag);  A (B, d, d), b (B, d) -> L (B, d, d), log L_ii (B, d).
    # The mask multiply (not torch.tril) keeps the ONNX graph free of data-dependent ops.
    d = b.shape[-1]
    strict_lower = torch.ones(d, d, device=b.device).tril(-1)
    diag = F.softplus(b) + min_diag
    scale_tril = a * strict_lower + diag.unsqueeze(-2) * torch.eye(d, device=b.device)
    return scale_tril, torch.log(diag)


def reparameterize(mean: Tensor, scale_tril: Tensor, eps: Tensor) -> Tensor:
    # z_k = mean + L eps_k;  mean (B, d), L (B, d, d), eps (B, K, d) -> z (B, K, d)
    return mean.unsqueeze(-2) + eps @ scale_tril.transpose(-1, -2)


def reparameterize_diag(mean: Tensor, log_var: Tensor, eps: Tensor) -> Tensor:
    # z_k = mean + exp(log_var / 2) ⊙ eps_k;  (B, d), (B, d), (B, K, d) -> (B, K, d).  Same as reparameterize with a
    # diagonal L, without the d x d matmul.
    return mean.unsqueeze(-2) + torch.exp(0.5 * log_var).unsqueeze(-2) * eps


def log_q_from_eps(eps: Tensor, log_diag: Tensor) -> Tensor:
    # log q(z|x) = log N(eps; 0, I) - Σ_i log L_ii  (change of variables z = mean + L eps);
    # eps (B, K, d), log L_ii (B, d) -> (B, K)
    return log_standard_normal(eps) - log_diag.sum(-1, keepdim=True)


def kl_diag_to_standard(mean: Tensor, log_var: Tensor) -> Tensor:
    # KL(N(mean, diag e^log_var) || N(0, I)) per dimension = ½ (e^log_var + mean² - 1 - log_var);  (B, d) -> (B, d)
    return 0.5 * (torch.exp(log_var) + mean.square() - 1.0 - log_var)


def kl_tril_to_standard(mean: Tensor, scale_tril: Tensor) -> Tensor:
    # KL(N(mean, L Lᵀ) || N(0, I)) = ½ [tr Σ + meanᵀmean - d - log det Σ],  tr Σ = Σ_ij L_ij²,
    # log det Σ = 2 Σ_i log L_ii;  (B, d), (B, d, d) -> (B,)
    d = mean.shape[-1]
    log_diag = torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1))
    trace = scale_tril.square().sum((-2, -1))
    return 0.5 * (trace + mean.square().sum(-1) - d - 2.0 * log_diag.sum(-1))


def log_mean_exp(log_w: Tensor) -> Tensor:
    # log (1/K) Σ_k exp(log_w_k), stably;  (B, K) -> (B,).  Written with a mean rather than "- log K" so that K is
    # never read from a shape: an exported graph would freeze it as a constant.
    # (a peak of -inf, every weight underflowed, is clamped so the result is -inf rather than NaN)
    peak = log_w.amax(-1, keepdim=True).detach().clamp(min=torch.finfo(log_w.dtype).min)
    return peak.squeeze(-1) + torch.log(torch.exp(log_w - peak).mean(-1))


def gaussian_kl_to_standard_from_moments(mean: Tensor, cov: Tensor) -> Tensor:
    # KL(N(m, S) || N(0, I)) = ½ [tr S + mᵀm - d - log det S];  m (d,), S (d, d) -> ()
    d = mean.shape[-1]
    return 0.5 * (torch.trace(cov) + mean.square().sum() - d - torch.logdet(cov))
