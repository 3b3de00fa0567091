"""Draws from a bundle's prior, defined once for every reader (the runtime's `sample`, and training's sample plots),
so the same seed gives the same latents wherever a model generates.

- N(0, I) (a manifest without a prior): z = t eps, eps ~ N(0, I_d).
- A Gaussian mixture (contract.MixturePrior): eps as above, then a component m ~ Categorical(π) per row, and
  z = μ_m + t L_m eps. The temperature t scales each component's spread around its mean (t = 1: the prior itself;
  t -> 0: the component means), as it scales N(0, I)'s standard deviation.

The draws come from the caller's generator in this order (eps first, then the components), so a caller that goes
on drawing (the decoder's noise) stays reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.manifest import MixturePrior

F32 = np.float32


@dataclass(frozen=True)
class MixtureArrays:
    """A MixturePrior's numbers as arrays, built once per loaded model (not per request)."""

    weights: np.ndarray  # π (M,) float64, summing to 1
    means: np.ndarray  # μ (M, d) float64
    scale_tril: np.ndarray  # L (M, d, d) float64

    @classmethod
    def of(cls, prior: MixturePrior | None) -> MixtureArrays | None:
        if prior is None:
            return None
        weights = np.asarray(prior.weights, dtype=np.float64)
        means, scale_tril = np.asarray(prior.means, dtype=np.float64), np.asarray(prior.scale_tril, dtype=np.float64)
        return cls(weights / weights.sum(), means, scale_tril)


def draw_latents(
    prior: MixtureArrays | None, n: int, latent_dim: int, temperature: float, rng: np.random.Generator
) -> np.ndarray:
    """n latents z (n, d) float32 from the prior (None: N(0, I)), its spread scaled by temperature."""
    eps = rng.standard_normal((n, latent_dim), dtype=F32)  # (n, d)
    if prior is None:
        return (temperature * eps).astype(F32)
    component = rng.choice(prior.weights.size, size=n, p=prior.weights)  # (n,)
    # z_i = μ_m + t L_m eps_i, m = component_i:  (n, d), one component at a time (no (n, d, d) stack of factors)
    z = np.empty((n, latent_dim), dtype=np.float64)
    for m in np.unique(component):
        rows = component == m
        z[rows] = prior.means[m] + temperature * (eps[rows].astype(np.float64) @ prior.scale_tril[m].T)
    return z.astype(F32)
