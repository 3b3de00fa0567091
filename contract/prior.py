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

import numpy as np

from contract.manifest import MixturePrior

F32 = np.float32


def draw_latents(
    prior: MixturePrior | None, n: int, latent_dim: int, temperature: float, rng: np.random.Generator
) -> np.ndarray:
    """n latents z (n, d) float32 from the prior, its spread scaled by temperature."""
    eps = rng.standard_normal((n, latent_dim), dtype=F32)  # (n, d)
    if prior is None:
        return (temperature * eps).astype(F32)
    weights = np.asarray(prior.weights, dtype=np.float64)
    component = rng.choice(weights.size, size=n, p=weights / weights.sum())  # (n,)
    means = np.asarray(prior.means, dtype=np.float64)  # (M, d)
    scale_tril = np.asarray(prior.scale_tril, dtype=np.float64)  # (M, d, d)
    # z_i = μ_m + t L_m eps_i, m = component_i:  (n, d)
    spread = np.einsum("nij,nj->ni", scale_tril[component], eps.astype(np.float64))
    z: np.ndarray = (means[component] + temperature * spread).astype(F32)
    return z
