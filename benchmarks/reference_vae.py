"""A plain PyTorch Gaussian VAE, written the textbook way, as the yardstick for `vae-train`.

Per-feature standardisation (training mean and std plus a tiny epsilon; `std_floor` > 0 applies the product's
floor instead, for like-for-like runs), a diagonal Gaussian decoder whose variance is `var_floor + softplus`
(standardised units), the product's default model size. No KL warm-up, no gradient clipping, no free bits, no
soft bounds. Adam and early stopping on validation ELBO with the best weights kept. Optionally trained on
dequantised rows: uniform noise over the bin [x, x + w), drawn afresh for every minibatch. Its ELBO_K, IWAE_K and
anomaly scores are computed here, independently of `training/`, in raw-space nats.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)
STD_EPS = 1e-6  # added to every feature's std: constant features stay finite, nothing else changes
CHUNK_DRAWS = 1 << 14  # rows x K per forward pass when scoring


class ReferenceVAE(nn.Module):
    def __init__(self, d_in: int, d_latent: int, hidden: int, var_floor: float) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * d_latent)
        )
        self.dec = nn.Sequential(
            nn.Linear(d_latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * d_in)
        )
        self.d_in, self.d_latent, self.var_floor = d_in, d_latent, var_floor

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.enc(x).chunk(2, -1)
        return mu, log_var

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, raw = self.dec(z).chunk(2, -1)
        return m, torch.log(self.var_floor + F.softplus(raw))

    def log_px(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        m, lv = self.decode(z)
        return (-0.5 * (LOG_2PI + lv + (x - m) ** 2 / lv.exp())).sum(-1)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """One-sample ELBO with closed-form KL, the training objective: (B, D) -> (B,)."""
        mu, lv = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * lv).exp()
        kl = 0.5 * (lv.exp() + mu**2 - 1 - lv).sum(-1)
        return self.log_px(x, z) - kl

    @torch.no_grad()
    def bounds(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, D) standardised, eps (K, B, d) -> ELBO_K = mean_k log p(x|z_k) - KL and IWAE_K, each (B,)."""
        mu, lv = self.encode(x)
        std = (0.5 * lv).exp()
        z = mu + eps * std  # (K, B, d)
        log_px = self.log_px(x.expand(eps.shape[0], -1, -1), z)  # (K, B)
        kl = 0.5 * (lv.exp() + mu**2 - 1 - lv).sum(-1)
        log_q = (-0.5 * (LOG_2PI + eps**2) - torch.log(std)).sum(-1)
        log_w = log_px + (-0.5 * (LOG_2PI + z**2)).sum(-1) - log_q
        return log_px.mean(0) - kl, torch.logsumexp(log_w, 0) - math.log(eps.shape[0])

    @torch.no_grad()
    def iwae(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.bounds(x, torch.randn(k, *x.shape[:-1], self.d_latent))[1]


@dataclass
class FittedReference:
    """A trained reference VAE with its standardisation; every number it returns is in raw-space nats."""

    model: ReferenceVAE
    mean: np.ndarray
    std: np.ndarray
    epochs: int
    best_epoch: int
    seconds: float

    @property
    def log_jacobian(self) -> float:  # raw-space density = standardised density * |d x_std / d x|
        return -float(np.log(self.std).sum())

    def standardise(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32))

    def _bounds(self, x: np.ndarray, eps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        # eps (K, N, d); rows in chunks so that rows x K stays under CHUNK_DRAWS
        self.model.eval()
        xs, rows = self.standardise(x), max(1, CHUNK_DRAWS // eps.shape[0])
        parts = [self.model.bounds(xs[i : i + rows], eps[:, i : i + rows]) for i in range(0, len(xs), rows)]
        elbo = torch.cat([p[0] for p in parts]).double().numpy() + self.log_jacobian
        iwae = torch.cat([p[1] for p in parts]).double().numpy() + self.log_jacobian
        return elbo, iwae

    def scores(self, x: np.ndarray, k: int = 16, seed: int = 0, statistic: str = "elbo") -> np.ndarray:
        """Anomaly score per row: -ELBO_K over one fixed set of K noise draws shared by every row, or -IWAE_K."""
        eps = torch.randn(k, 1, self.model.d_latent, generator=torch.Generator().manual_seed(seed))
        elbo, iwae = self._bounds(x, eps.expand(k, len(x), -1))
        return -(elbo if statistic == "elbo" else iwae)

    def log_likelihood(self, x: np.ndarray, k: int = 256, seed: int = 0) -> np.ndarray:
        """IWAE_K estimate of log p(x) per row, with independent draws for every row."""
        eps = torch.randn(k, len(x), self.model.d_latent, generator=torch.Generator().manual_seed(seed))
        return self._bounds(x, eps)[1]

    def elbo(self, x: np.ndarray, k: int = 1, seed: int = 0) -> np.ndarray:
        eps = torch.randn(k, len(x), self.model.d_latent, generator=torch.Generator().manual_seed(seed))
        return self._bounds(x, eps)[0]


def reference_epoch(
    model: ReferenceVAE,
    opt: torch.optim.Optimizer,
    xt: torch.Tensor,
    xv: torch.Tensor,
    noise: torch.Tensor | None,
    batch: int,
) -> float:
    """One epoch of the textbook loop over standardised rows (plus noise * U(0, 1) per minibatch when given);
    returns the validation ELBO."""
    model.train()
    for idx in torch.randperm(len(xt)).split(batch):
        xb = xt[idx] + noise * torch.rand(len(idx), xt.shape[1]) if noise is not None else xt[idx]
        loss = -model.elbo(xb).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return float(model.elbo(xv).mean().item())


def fit_reference(
    x_train: np.ndarray,
    x_val: np.ndarray,
    *,
    std_floor: float = 0.0,
    var_floor: float = 1e-3,
    dequantise: float = 0.0,
    latent: int = 8,
    hidden: int = 256,
    epochs: int = 500,
    patience: int = 50,
    batch: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> FittedReference:
    """Fit on raw rows (plus U(0, w) noise per minibatch when dequantise = w > 0: the bin [x, x + w)).

    std_floor 0: each feature's own std + STD_EPS; > 0: the product's floor, a fraction of the mean std."""
    torch.manual_seed(seed)  # a script, not library code: the global seed is fine here
    x_train, x_val = np.asarray(x_train, dtype=np.float64), np.asarray(x_val, dtype=np.float64)
    mean = x_train.mean(0)
    std = np.sqrt(x_train.var(0) + dequantise**2 / 12)  # the noise adds w^2/12 to every feature's variance
    std = np.maximum(std, std_floor * std.mean()) if std_floor > 0 else std + STD_EPS
    if dequantise > 0:  # validation rows get one fixed draw, so the early-stopping ELBO is comparable
        x_val = x_val + dequantise * np.random.default_rng(seed).random(x_val.shape)
    xt, xv = (torch.from_numpy(((a - mean) / std).astype(np.float32)) for a in (x_train, x_val))
    noise = torch.from_numpy((dequantise / std).astype(np.float32))  # one bin in standardised units
    model = ReferenceVAE(xt.shape[1], latent, hidden, var_floor)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, best_epoch, started = -math.inf, copy.deepcopy(model.state_dict()), 0, time.perf_counter()
    epoch = 0
    for epoch in range(1, epochs + 1):
        val = reference_epoch(model, opt, xt, xv, noise if dequantise > 0 else None, batch)
        if val > best:
            best, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch
        elif epoch - best_epoch >= patience:
            break
    seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    model.eval()
    return FittedReference(model, mean, std, epoch, best_epoch, seconds)
