"""An independent numpy computation of the scorer's outputs from the encoder and decoder graphs' outputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from contract import MixturePrior


def log_normal(x: np.ndarray, mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi) + log_var + (x - mean) ** 2 / np.exp(log_var))


def decoder_factor(decoder: ort.InferenceSession, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A decorrelated bundle's p(x|z) = N(mean, F Fᵀ) read off its decoder graph alone: its draw x(eps) is affine in
    eps, so mean = x(0) and column j of F is x(e_j) - x(0). z (n, d) -> mean (n, D), F (n, D, D) float64."""
    n, big_d = z.shape[0], decoder.get_inputs()[1].shape[1]
    eps = np.concatenate([np.zeros((1, big_d)), np.eye(big_d)]).astype(np.float32)  # (D + 1, D)
    feeds = {"z": np.repeat(z, big_d + 1, 0).astype(np.float32), "eps": np.tile(eps, (n, 1))}
    x = decoder.run(["x"], feeds)[0].astype(np.float64).reshape(n, big_d + 1, big_d)
    return x[:, 0], np.swapaxes(x[:, 1:] - x[:, :1], 1, 2)


def log_normal_by_factor(x: np.ndarray, mean: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """log N(x; mean, F Fᵀ) through slogdet and a solve: x, mean (..., D), F (..., D, D) -> (...)."""
    cov = factor @ np.swapaxes(factor, -1, -2)
    diff = x - mean
    maha = (diff * np.linalg.solve(cov, diff[..., None])[..., 0]).sum(-1)
    return -0.5 * (x.shape[-1] * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1] + maha)


def log_mixture(z: np.ndarray, prior: MixturePrior) -> np.ndarray:
    """log Σ_m π_m N(z; μ_m, L_m L_mᵀ) through each component's covariance and slogdet: z (..., d) -> (...)."""
    d = z.shape[-1]
    parts = []
    for w, mu, tril in zip(prior.weights, prior.means, prior.scale_tril, strict=True):
        cov = np.asarray(tril) @ np.asarray(tril).T
        diff = z - np.asarray(mu)
        maha = np.einsum("...i,ij,...j->...", diff, np.linalg.inv(cov), diff)
        parts.append(np.log(w) - 0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1] + maha))
    stacked = np.stack(parts, -1)
    peak = stacked.max(-1, keepdims=True)
    return np.log(np.exp(stacked - peak).sum(-1)) + peak[..., 0]


def score_from_graphs(
    encoder: ort.InferenceSession,
    decoder: ort.InferenceSession,
    x: np.ndarray,
    eps: np.ndarray,
    full: bool,
    prior: MixturePrior | None = None,
) -> dict[str, np.ndarray]:
    """elbo, reconstruction, kl, log_likelihood (IWAE_K), feature_nll for rows x (B, D) and noise eps (B, K, d), under
    N(0, I) or the bundle's mixture prior."""
    b, k, d = eps.shape
    enc = encoder.run(None, {"x": x.astype(np.float32)})
    mean, log_var = enc[0].astype(np.float64), enc[1].astype(np.float64)
    if full:
        scale_tril = enc[2].astype(np.float64)
    else:
        scale_tril = np.stack([np.diag(np.exp(0.5 * lv)) for lv in log_var])
    eps64 = eps.astype(np.float64)
    z = mean[:, None, :] + np.einsum("bij,bkj->bki", scale_tril, eps64)  # z_k = mean + L eps_k
    x64 = x[:, None, :].astype(np.float64)
    decorrelated = len(decoder.get_inputs()) == 2  # its decoder takes the noise of a draw too
    feeds = {"z": z.reshape(-1, d).astype(np.float32)}
    if decorrelated:
        feeds["eps"] = np.zeros((b * k, x.shape[1]), np.float32)
    dec_mean, dec_log_var = decoder.run(["mean", "log_var"], feeds)
    # feature_nll: each feature's marginal given z
    ll_feat = log_normal(x64, dec_mean.reshape(b, k, -1), dec_log_var.reshape(b, k, -1))
    ll = ll_feat.sum(-1)  # (B, K)
    if decorrelated:  # the features are correlated given z
        mean, factor = decoder_factor(decoder, z.reshape(-1, d))
        ll = log_normal_by_factor(x64, mean.reshape(b, k, -1), factor.reshape(b, k, *factor.shape[1:]))
    log_diag = np.log(np.stack([np.diag(s) for s in scale_tril]))  # log L_ii
    log_q = (-0.5 * (np.log(2 * np.pi) + eps64**2)).sum(-1) - log_diag.sum(-1, keepdims=True)
    if prior is None:
        log_p_z = (-0.5 * (np.log(2 * np.pi) + z**2)).sum(-1)
        cov = scale_tril @ np.transpose(scale_tril, (0, 2, 1))
        kl = 0.5 * (np.trace(cov, axis1=1, axis2=2) + (mean**2).sum(-1) - d - 2 * log_diag.sum(-1))
    else:  # no closed form: the K-sample estimate of KL(q || p)
        log_p_z = log_mixture(z, prior)
        kl = (log_q - log_p_z).mean(1)
    log_w = ll + log_p_z - log_q
    peak = log_w.max(1, keepdims=True)
    iwae = np.log(np.mean(np.exp(log_w - peak), 1)) + peak[:, 0]
    return {
        "elbo": ll.mean(1) - kl,
        "reconstruction": ll.mean(1),
        "kl": kl,
        "log_likelihood": iwae,
        "feature_nll": -ll_feat.mean(1),
    }
