"""Encoder, Decoder, the mixture prior and GaussianVAE (nn.Module). No loss and no I/O here; the maths is in
gaussian.py."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from contract import MixturePrior
from training import gaussian as G
from training.config import ENCODER_INPUT_BOUND, LOG_VAR_MAX, LOG_VAR_MIN, ModelConfig
from training.features import FeatureScaling

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
    def __init__(self, cfg: ModelConfig, features: int) -> None:
        super().__init__()
        d = cfg.latent_dim
        self.covariance = cfg.covariance
        self.latent_dim = d
        self.scale_tril_min = cfg.scale_tril_min
        # diagonal: [mean, log_var] (2d);  full: [mean, b, A] (2d + d²)
        n_out = 2 * d if cfg.covariance == "diagonal" else 2 * d + d * d
        self.net = mlp([features, *cfg.hidden, n_out], cfg.activation)

    def forward(self, x_std: Tensor) -> Posterior:
        d = self.latent_dim
        # A row far outside the data (a z-score beyond the bound) cannot overflow the network: its likelihood
        # term, computed from the unclamped row, still grows with the distance.
        h = self.net(x_std.clamp(-ENCODER_INPUT_BOUND, ENCODER_INPUT_BOUND))
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
    def __init__(self, cfg: ModelConfig, log_var_floor: Tensor) -> None:
        super().__init__()
        self.features = log_var_floor.numel()
        self.register_buffer("log_var_floor", log_var_floor.float().clone())  # (D_active,) standardised units
        self.net = mlp([cfg.latent_dim, *reversed(cfg.hidden), 2 * self.features], cfg.activation)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # z (..., d) -> mean, log_var (..., D_active) in standardised units; log_var softly >= each feature's floor
        h = self.net(z)
        mean, raw = h[..., : self.features], h[..., self.features :]
        return mean, G.soft_clamp(raw, self.log_var_floor, LOG_VAR_MAX)


class MixturePriorModule(nn.Module):
    """p(z) = Σ_m π_m N(μ_m, L_m L_mᵀ) from a manifest's MixturePrior, as buffers: fixed after training, constants of
    the exported scorer, and derived from the spec alone (the checkpoint stores the spec, not these buffers)."""

    def __init__(self, spec: MixturePrior) -> None:
        super().__init__()
        self.spec = spec
        weights = torch.tensor(spec.weights, dtype=torch.float64)
        # P_m = L_m⁻ᵀ (computed in float64 once, used in float32)
        precision_factor = G.precision_factor(torch.tensor(spec.scale_tril, dtype=torch.float64))  # (M, d, d)
        means = torch.tensor(spec.means, dtype=torch.float64)  # (M, d)
        centre = (weights / weights.sum()) @ means  # (d,)
        self.register_buffer("log_weights", torch.log(weights / weights.sum()).float(), persistent=False)
        # z - c and μ_m - c rather than z and μ_m: a tight component far from 0 keeps its float32 precision
        self.register_buffer("centre", centre.float(), persistent=False)
        self.register_buffer("centred_means", (means - centre).float(), persistent=False)
        self.register_buffer("precision_factor", precision_factor.float().contiguous(), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        # (..., d) -> (...)
        return G.log_mixture_normal(z - self.centre, self.log_weights, self.centred_means, self.precision_factor)


class GaussianVAE(nn.Module):
    """Encoder and decoder over the non-constant features, plus the training set's per-feature scaling (buffers,
    so it travels in state_dict). Constant columns get a fixed N(c, s²) in the likelihood (training/features.py).

    Decorrelated (scaling.factor set), the networks model y = L⁻¹ x_std[active] in place of x_std[active]: the
    decoder's N(m, diag v) over y is N(L m, L diag(v) Lᵀ) over the standardised features, and the joint density
    gains the Jacobian -Σ_j log L_jj (log_det_factor)."""

    def __init__(self, cfg: ModelConfig, scaling: FeatureScaling | None = None) -> None:
        super().__init__()
        self.config = cfg
        D = cfg.input_dim
        scaling = FeatureScaling.identity(D) if scaling is None else scaling
        if len(scaling.kinds) != D:
            raise ValueError(f"scaling describes {len(scaling.kinds)} features, the model {D}")
        self.scaling = scaling
        active = torch.from_numpy(scaling.active)
        if active.numel() == 0:
            raise ValueError("every feature is constant: there is nothing for the model to learn")
        self.encoder = Encoder(cfg, active.numel())
        self.decoder = Decoder(cfg, torch.from_numpy(scaling.decoder_log_var_floor(cfg.decoder_var_floor)))
        f32 = functools.partial(torch.tensor, dtype=torch.float32)
        self.register_buffer("data_mean", f32(scaling.mean))
        self.register_buffer("data_std", f32(scaling.std))
        # raw-space log density of feature j = standardised log density + offset_j: -log std_j (the Jacobian), and
        # for a point-mass constant + log(√(2π) s) as well, so that it scores exactly 0 nats at its value
        offset = -np.log(scaling.std) + np.where(scaling.point_mass, 0.5 * G.LOG_2PI + np.log(scaling.std), 0.0)
        self.decorrelating = scaling.factor is not None  # a Python bool, like `shifts`
        self.input_bound = scaling.input_bound if scaling.factor is not None else None
        # y's density in x_std units: + log |det L⁻¹| = -Σ_j log L_jj (a Python float: a constant of the graphs)
        self.log_det_factor = 0.0
        if scaling.factor is not None:
            self.log_det_factor = float(np.log(np.diag(scaling.factor)).sum())
            # L, L⁻¹ and L∘L (for the marginal variances diag(L diag(v) Lᵀ) = (L∘L) v), inverted in float64; not
            # in the state dict (derived from scaling, which the checkpoint stores)
            inverse = np.linalg.inv(scaling.factor)
            self.register_buffer("factor", f32(scaling.factor), persistent=False)
            self.register_buffer("inverse_factor", f32(inverse), persistent=False)
            self.register_buffer("factor_squared", f32(scaling.factor**2), persistent=False)
        self.register_buffer("feature_log_offset", f32(offset))
        self.register_buffer("bin_width", f32(scaling.bin_width()))  # h / std per lattice feature, else 0
        # h/2 / std per lattice feature when trained dequantised, else 0; not in the state dict (derived from scaling)
        self.register_buffer("centre_shift", f32(scaling.centre_shift() / scaling.std), persistent=False)
        self.shifts = bool(np.any(scaling.centre_shift()))  # a Python bool: the exporter traces no branch on a tensor
        self.dequantize_training = scaling.dequantize
        self.register_buffer("active", active)
        # cat([active features, constant features])[restore] is the original feature order
        constant = np.setdiff1d(np.arange(D), scaling.active)
        order = np.concatenate([scaling.active, constant])
        self.register_buffer("constant", torch.from_numpy(constant), persistent=False)
        self.register_buffer("restore", torch.from_numpy(np.argsort(order)))
        self.constants = D - active.numel()
        # N(0, I) while training; after it, possibly a mixture fitted to the aggregate posterior (training/prior.py)
        self.prior: MixturePriorModule | None = None

    def set_prior(self, spec: MixturePrior | None) -> None:
        """Use this prior from now on (None: N(0, I)), on the model's device."""
        self.prior = None if spec is None else MixturePriorModule(spec).to(self.data_mean.device)

    def log_prior(self, z: Tensor) -> Tensor:
        # log p(z): (..., d) -> (...)
        return G.log_standard_normal(z) if self.prior is None else self.prior.log_prob(z)

    def standardize(self, x: Tensor) -> Tensor:
        # (B, D) raw -> (B, D) standardised
        return (x - self.data_mean) / self.data_std

    def at_bin_centres(self, x_std: Tensor) -> Tensor:
        # rows as the scorer and encoder take them: a lattice feature's value x at its bin's centre x + h/2
        # (FeatureScaling.centre_shift), in standardised units: (B, D) -> (B, D); no graph node without a lattice
        return x_std + self.centre_shift if self.shifts else x_std

    def off_bin_centres(self, x_std: Tensor) -> Tensor:
        # the inverse: a model output on a lattice feature moved back from its bin's centre onto the data's values
        return x_std - self.centre_shift if self.shifts else x_std

    def dequantize(self, x_std: Tensor, gen: torch.Generator) -> Tensor:
        # x + h u, u ~ U[0, 1), per lattice feature (the bin [x, x + h)), in standardised units: (B, D) -> (B, D)
        if not bool(self.bin_width.any()):
            return x_std
        u = torch.rand(x_std.shape, generator=gen, device=x_std.device)
        return x_std + self.bin_width * u

    def select(self, x_std: Tensor) -> Tensor:
        # the active features: (..., D) -> (..., D_active)
        return x_std if self.constants == 0 else x_std.index_select(-1, self.active)

    def full(self, active: Tensor, rows: Tensor | None = None) -> Tensor:
        # values over the active features with the constants' beside them in the original order: zeros (the
        # standardised mean and log-variance of a constant's fixed N(c, s²)), or the constants of `rows` (..., D)
        # (..., D_active) -> (..., D)
        if self.constants == 0:
            return active
        if rows is None:
            constants = active.new_zeros(*active.shape[:-1], self.constants)
        else:
            constants = rows.index_select(-1, self.constant)
        return torch.cat([active, constants], -1).index_select(-1, self.restore)

    def decorrelate(self, x_std: Tensor) -> Tensor:
        # the rows the likelihood models: the active features replaced by y = L⁻¹ x_std[active], the constants as
        # they are; the identity, and no graph node, without a factor.  (..., D) -> (..., D)
        if not self.decorrelating:
            return x_std
        return self.full(self.select(x_std) @ self.inverse_factor.T, x_std)

    def correlate(self, y: Tensor) -> Tensor:
        # the inverse over the active features: standardised values x_std[active] = L y.  (..., D_active) -> same
        return y @ self.factor.T if self.decorrelating else y

    def encoder_input(self, x_std: Tensor) -> Tensor:
        # what the encoder takes of standardised rows: (..., D) -> (..., D_active). Decorrelated, y is clamped at
        # scaling.input_bound (1.5 √n, beyond every training row's value): L⁻¹ amplifies a deviation (by 1 / L_jj, 10
        # and more for a feature its neighbours predict), and an encoder driven far past its data opened the decoder's
        # variance so wide that a larger deviation scored lower; clamped, z stops moving and the score keeps growing
        active = self.select(self.decorrelate(x_std))
        if self.input_bound is None:
            return active
        return active.clamp(-self.input_bound, self.input_bound)

    def encode(self, x_std: Tensor) -> Posterior:
        # q(z|x) of standardised rows (..., D) (dequantised or at their bins' centres, as the caller has them)
        return self.encoder(self.encoder_input(x_std))

    def decoded(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # p(x_std[active] | z)'s marginals: (..., d) -> mean, log-variance (..., D_active) each
        return self.marginals(*self.decoder(z))

    def marginals(self, mean: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor]:
        # each standardised feature's marginal of the decoder's N(m, diag v) over the modelled components: mean L m,
        # log-variance log diag(L diag(v) Lᵀ) = log (L∘L) v; (m, log v) themselves without a factor
        if not self.decorrelating:
            return mean, log_var
        return self.correlate(mean), torch.log(torch.exp(log_var) @ self.factor_squared.T)

    def draw(self, mean: Tensor, log_var: Tensor, noise: Tensor) -> Tensor:
        # a draw from the decoder's Gaussian of (mean, log_var) over y (as `decoder` returns them), in standardised
        # units: L (m + exp(log_var / 2) noise);  (..., D_active) each -> (..., D_active)
        return self.correlate(mean + torch.exp(0.5 * log_var) * noise)
