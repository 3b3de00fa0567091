"""Encoder, Decoder and GaussianVAE (nn.Module). No loss and no I/O here; the maths is in gaussian.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training import gaussian as G
from training.config import LOG_VAR_MAX, LOG_VAR_MIN, ModelConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    # Linear layers with the activation between them, none after the last.
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


@dataclass
class Posterior:
    """q(z|x) = N(mean, L Lᵀ). scale_tril is None for the diagonal kind (L = diag(exp(log_var / 2)))."""

    mean: Tensor  # (B, d)
    log_var: Tensor  # (B, d) log Σ_jj
    log_diag: Tensor  # (B, d) log L_jj
    scale_tril: Tensor | None  # (B, d, d) for the full kind

    def sample(self, eps: Tensor) -> Tensor:
        # (B, K, d) -> z (B, K, d)
        if self.scale_tril is None:
            return G.reparameterize_diag(self.mean, self.log_var, eps)
        return G.reparameterize(self.mean, self.scale_tril, eps)

    def log_prob_from_eps(self, eps: Tensor) -> Tensor:
        # log q(z|x) at z = mean + L eps;  (B, K, d) -> (B, K)
        return G.log_q_from_eps(eps, self.log_diag)

    def kl_per_dim(self) -> Tensor:
        # KL of each marginal q(z_j|x) to N(0, 1): ½ (Σ_jj + mean_j² - 1 - log Σ_jj);  -> (B, d).  For the diagonal
        # kind these add up to the KL; for the full kind the KL is their sum plus the correlation term.
        return G.kl_diag_to_standard(self.mean, self.log_var)

    def kl(self) -> Tensor:
        # KL(q(z|x) || N(0, I));  -> (B,)
        if self.scale_tril is None:
            return self.kl_per_dim().sum(-1)
        return G.kl_tril_to_standard(self.mean, self.scale_tril)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.latent_dim
        self.covariance = cfg.covariance
        self.latent_dim = d
        self.scale_tril_min = cfg.scale_tril_min
        # diagonal: [mean, log_var] (2d);  full: [mean, b, A] (2d + d²)
        n_out = 2 * d if cfg.covariance == "diagonal" else 2 * d + d * d
        self.net = mlp([cfg.input_dim, *cfg.hidden, n_out], cfg.activation)

    def forward(self, x_std: Tensor) -> Posterior:
        d = self.latent_dim
        h = self.net(x_std)
        mean = h[..., :d]
        if self.covariance == "diagonal":
            log_var = G.soft_clamp(h[..., d : 2 * d], LOG_VAR_MIN, LOG_VAR_MAX)
            return Posterior(mean, log_var, 0.5 * log_var, None)
        bound = math.exp(0.5 * LOG_VAR_MAX)  # |L_ij| <= e^4: Σ_jj stays finite
        b = bound - nn.functional.softplus(bound - h[..., d : 2 * d])
        a = G.soft_clamp(h[..., 2 * d :], -bound, bound).reshape(*h.shape[:-1], d, d)
        scale_tril, log_diag = G.full_scale_tril(a, b, self.scale_tril_min)
        log_var = torch.log(scale_tril.square().sum(-1))  # Σ_jj = Σ_k L_jk²
        return Posterior(mean, log_var, log_diag, scale_tril)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_dim = cfg.input_dim
        self.log_var_floor = math.log(cfg.decoder_var_floor)
        self.net = mlp([cfg.latent_dim, *reversed(cfg.hidden), 2 * cfg.input_dim], cfg.activation)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # z (..., d) -> mean, log_var (..., D) in standardised units; log_var softly >= log(decoder_var_floor)
        h = self.net(z)
        mean, raw = h[..., : self.input_dim], h[..., self.input_dim :]
        return mean, G.soft_clamp(raw, self.log_var_floor, LOG_VAR_MAX)


class GaussianVAE(nn.Module):
    """Encoder and decoder plus the training set's standardisation (buffers, so they travel in state_dict)."""

    def __init__(self, cfg: ModelConfig, data_mean: Tensor | None = None, data_std: Tensor | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        D = cfg.input_dim
        self.register_buffer("data_mean", torch.zeros(D) if data_mean is None else data_mean.float().clone())
        self.register_buffer("data_std", torch.ones(D) if data_std is None else data_std.float().clone())

    def standardize(self, x: Tensor) -> Tensor:
        # (B, D) raw -> (B, D) standardised
        return (x - self.data_mean) / self.data_std

    def log_jacobian(self) -> Tensor:
        # log |d x_std / d x| = -Σ_j log std_j: added to a standardised-space log density to get raw-space nats
        return -torch.log(self.data_std).sum()
