"""What the plots compare, as numpy arrays in the data's raw units: validation rows, their posterior means and
reconstructions, and rows drawn from the model.

The networks model only the non-constant features (model.select / model.full); a constant column comes back as its
value. With dequantised training a lattice feature is modelled as x + h u, u ~ U[0, 1), whose mean is x + h/2, so
rows are encoded at their bins' centres and model outputs shifted back by h/2 to sit on the data's values, as the
exported graphs do (FeatureScaling.centre_shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from contract.prior import MixtureArrays, draw_latents
from training.model import GaussianVAE

SAMPLED_ROWS = 2000  # rows drawn from the model for the marginals and correlations
PLOT_ROWS = 10_000  # validation rows (at most) compared feature by feature; every row gets its posterior mean


@dataclass(frozen=True)
class ModelRows:
    real: np.ndarray  # (n, D) the first n <= PLOT_ROWS validation rows, raw units
    posterior_mean: np.ndarray  # (N, d) E_q[z|x] of every validation row evaluated
    reconstruction: np.ndarray  # (n, D) decoder mean at the posterior mean of the same n rows, raw units
    sampled: np.ndarray  # (S, D) z ~ p(z) (the model's prior), x ~ N(decoder mean, decoder variance), raw units
    sampled_mean: np.ndarray  # (S, D) the decoder means of the same z, raw units


def data_units(model: GaussianVAE, x_std: Tensor) -> np.ndarray:
    # model output, standardised (B, D) -> raw units (B, D), less the dequantisation's mean shift h/2
    scaling = model.scaling
    return np.asarray(model.off_bin_centres(x_std).double().cpu().numpy() * scaling.std + scaling.mean)


@torch.no_grad()
def decode_mean(model: GaussianVAE, z: Tensor) -> np.ndarray:
    # z (B, d) -> decoder means in raw units (B, D)
    mean, _ = model.decoded(z)
    return data_units(model, model.full(mean))


@torch.no_grad()
def model_rows(model: GaussianVAE, x_std: Tensor, real: np.ndarray, gen: torch.Generator) -> ModelRows:
    """x_std (N, D) standardised validation rows, real (n, D) the first n of them raw (n <= PLOT_ROWS); gen draws
    the model's samples."""
    model.eval()
    post_mean = model.encode(model.at_bin_centres(x_std)).mean  # (N, d), as `encode` answers
    n = real.shape[0]
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen, device=gen.device).item()))
    prior = MixtureArrays.of(None if model.prior is None else model.prior.spec)  # drawn as the service's sample draws
    z = torch.from_numpy(draw_latents(prior, SAMPLED_ROWS, model.config.latent_dim, 1.0, rng)).to(x_std.device)
    mean, log_var = model.decoder(z)  # (S, D_active) each, over the modelled components
    noise = torch.randn(mean.shape, generator=gen, device=mean.device)
    return ModelRows(
        real=np.asarray(real, dtype=np.float64),
        posterior_mean=post_mean.double().cpu().numpy(),
        reconstruction=decode_mean(model, post_mean[:n]),
        sampled=data_units(model, model.full(model.draw(mean, log_var, noise))),
        sampled_mean=data_units(model, model.full(model.correlate(mean))),
    )


def unit_variance(posterior_mean: np.ndarray) -> np.ndarray:
    # Var_x(E_q[z_u|x]) per latent unit (Burda et al. 2016, section 5.2), 0 for a single row: (N, d) -> (d,)
    if posterior_mean.shape[0] < 2:
        return np.zeros(posterior_mean.shape[1])
    return np.asarray(posterior_mean.var(0))
