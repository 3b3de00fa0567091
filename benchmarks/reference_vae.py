"""A plain PyTorch Gaussian VAE, written the textbook way, as the yardstick for `vae-train`.

Same data, split, preprocessing (standardisation with the same std floor, the same decoder variance floor) and
model size as the product's defaults; no KL warm-up, no gradient clipping, no free bits, no soft bounds. Adam and
early stopping on validation ELBO with the best weights kept. Its IWAE is computed here, independently.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


class ReferenceVAE(nn.Module):
    def __init__(self, d_in: int, d_latent: int, hidden: int, var_floor: float) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * d_latent)
        )
        self.dec = nn.Sequential(
            nn.Linear(d_latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * d_in)
        )
        self.d_in, self.var_floor = d_in, var_floor

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
        mu, lv = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * lv).exp()
        kl = 0.5 * (lv.exp() + mu**2 - 1 - lv).sum(-1)
        return self.log_px(x, z) - kl

    @torch.no_grad()
    def iwae(self, x: torch.Tensor, k: int) -> torch.Tensor:
        mu, lv = self.encode(x)
        std = (0.5 * lv).exp()
        eps = torch.randn(k, *mu.shape)
        z = mu + eps * std  # (K, B, d)
        log_q = (-0.5 * (LOG_2PI + eps**2) - torch.log(std)).sum(-1)
        log_p_z = (-0.5 * (LOG_2PI + z**2)).sum(-1)
        log_w = self.log_px(x.expand(k, -1, -1), z) + log_p_z - log_q
        return torch.logsumexp(log_w, 0) - math.log(k)


def train_reference(
    x_train: np.ndarray,
    x_val: np.ndarray,
    x_test: np.ndarray,
    *,
    std_floor: float,
    var_floor: float,
    latent: int = 8,
    hidden: int = 256,
    epochs: int = 500,
    patience: int = 50,
    batch: int = 128,
    lr: float = 1e-3,
    iwae_k: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Fit on raw rows; return test/validation IWAE and ELBO in raw-space nats, epochs and seconds."""
    torch.manual_seed(seed)  # a script, not library code: the global seed is fine here
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.maximum(std, std_floor * std.mean())
    log_jac = -float(np.log(std).sum())  # raw-space density = standardised density * |dx_std/dx|
    xt, xv, xs = (torch.from_numpy(((a - mean) / std).astype(np.float32)) for a in (x_train, x_val, x_test))
    model = ReferenceVAE(xt.shape[1], latent, hidden, var_floor)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, best_epoch, started = -math.inf, None, 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(xt)).split(batch):
            loss = -model.elbo(xt[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = model.elbo(xv).mean().item()
        if val > best:
            best, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch
        elif epoch - best_epoch >= patience:
            break
    seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    with torch.no_grad():
        out = {f"{name}_iwae": model.iwae(x, iwae_k).mean().item() + log_jac for name, x in (("val", xv), ("test", xs))}
        out["test_elbo"] = model.elbo(xs).mean().item() + log_jac
    return {**out, "epochs": epoch, "best_epoch": best_epoch, "seconds": seconds, "epochs_per_s": epoch / seconds}
