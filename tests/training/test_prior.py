"""The prior after training (training/prior.py): EM recovers a known mixture, the candidates tried, and a run keeps a
mixture only with the validation ELBO it reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from contract import MixturePrior
from contract.prior import MixtureArrays, draw_latents
from runtime.local import open_bundle
from tests.conftest import train_small
from tests.reference_math import log_mixture
from training.checkpoint import load_model
from training.config import ModelConfig
from training.data import load_table
from training.features import feature_scaling
from training.pipeline import RunResult
from training.prior import candidate_sizes, fit_mixture, posterior_draws
from training.stages import build_model

TRUTH = MixturePrior(
    weights=[0.25, 0.45, 0.3],
    means=[[-4.0, 0.0, 1.0], [3.0, 2.0, 0.0], [0.0, -5.0, -1.0]],
    scale_tril=[
        [[0.6, 0.0, 0.0], [0.2, 0.4, 0.0], [0.0, 0.1, 0.5]],
        [[1.0, 0.0, 0.0], [-0.3, 0.7, 0.0], [0.2, 0.0, 0.3]],
        [[0.4, 0.0, 0.0], [0.0, 0.9, 0.0], [0.1, -0.2, 0.6]],
    ],
)


def test_em_recovers_the_weights_and_means_of_a_known_mixture() -> None:
    z = draw_latents(MixtureArrays.of(TRUTH), 6000, 3, 1.0, np.random.default_rng(0)).astype(np.float64)
    fitted = fit_mixture(torch.from_numpy(z), 3, seed=0)
    order = [int(np.argmin(((np.asarray(fitted.means) - mu) ** 2).sum(1))) for mu in TRUTH.means]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(np.asarray(fitted.means)[order], TRUTH.means, atol=0.1)
    np.testing.assert_allclose(np.asarray(fitted.weights)[order], TRUTH.weights, atol=0.03)
    # maximum likelihood: at least as likely on its own draws as the mixture that generated them
    assert log_mixture(z, fitted).mean() >= log_mixture(z, TRUTH).mean() - 1e-3


def test_candidate_sizes_double_up_to_the_cap_and_one_component_per_2d_rows() -> None:
    assert candidate_sizes(32, 10_000, 16) == [1, 2, 4, 8, 16, 32]
    assert candidate_sizes(32, 300, 16) == [1, 2, 4, 8]  # 300 // 32 = 9
    assert candidate_sizes(5, 10_000, 4) == [1, 2, 4]
    assert candidate_sizes(32, 10, 16) == [1]


def test_with_trim_the_prior_is_fitted_to_the_codes_of_every_row_but_the_worst_fitting() -> None:
    x = load_table("builtin:digits").x[:200].copy()
    x[:10] += 40.0  # 5% of the rows far from the rest: the lowest ELBOs
    model = build_model(ModelConfig(input_dim=64, latent_dim=3, hidden=(16,)), feature_scaling(x, np.arange(200)), 0)
    x_std = model.standardize(torch.from_numpy(x))
    encoded: list[torch.Tensor] = []
    model.encoder.register_forward_hook(lambda module, args, out: encoded.append(args[0]))

    def far_rows_encoded() -> int:  # standardised, a far row lies above 3 in every feature that varies; others below
        return int((encoded[-1].max(-1).values > 3.0).sum())

    plain = posterior_draws(model, x_std, seed=0)
    assert plain.shape == (200 * 10, 3) and far_rows_encoded() == 10  # 10 draws per row: 5,000 // 200 > 10
    trimmed = posterior_draws(model, x_std, seed=0, trim=0.05)
    assert trimmed.shape == (190 * 10, 3) and far_rows_encoded() == 0


def test_a_kept_mixture_beat_the_standard_normal_on_validation_and_the_bundle_carries_it(
    diagonal_run: RunResult,
) -> None:
    prior = diagonal_run.manifest.prior
    assert prior is not None, "digits' aggregate posterior should not be N(0, I)"
    assert prior.fitted_as is not None and len(prior.weights) <= prior.fitted_as
    assert prior.selection[str(prior.fitted_as)] == max(prior.selection.values()) > prior.selection["0"]
    model = load_model(diagonal_run.bundle_dir / "checkpoint.pt")  # the checkpoint rebuilds the same prior
    assert model.prior is not None and model.prior.spec.means == prior.means
    z = torch.randn(5, prior.latent_dim, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(model.log_prior(z).double().numpy(), log_mixture(z.double().numpy(), prior), rtol=1e-5)


@pytest.mark.timeout(300)
def test_prior_standard_keeps_n01_and_a_manifest_written_before_priors_is_served_with_n01(tmp_path: Path) -> None:
    run = train_small(tmp_path, "standard", prior="standard", epochs=3, warmup_epochs=1)
    assert run.manifest is not None and run.manifest.prior is None
    assert load_model(run.bundle_dir / "checkpoint.pt").prior is None
    # a manifest of the format before priors (v2) has no "prior" key at all: it loads, and samples from N(0, I)
    path = run.bundle_dir / "manifest.json"
    old = json.loads(path.read_text())
    del old["prior"], old["preprocessing"]["bin_centres"]
    old["format_version"] = 2
    path.write_text(json.dumps(old))
    answer = open_bundle(run.bundle_dir, device="cpu").sample(n=6, temperature=0.5, seed=3, return_latents=True)
    expected = 0.5 * np.random.default_rng(3).standard_normal((6, run.manifest.latent_dim), dtype=np.float32)
    np.testing.assert_array_equal(answer["latents"], expected)


def test_a_mixture_that_does_not_fit_ends_the_search_with_the_best_prior_so_far(
    diagonal_run: RunResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.prior as prior_module
    from training.config import TrainConfig
    from training.data import load_table

    model = load_model(diagonal_run.bundle_dir / "checkpoint.pt")
    model.set_prior(None)
    x = model.standardize(torch.from_numpy(load_table("builtin:digits").x))
    real_fit = prior_module.fit_mixture

    def failing_at_four(z: torch.Tensor, components: int, seed: int) -> MixturePrior:
        if components >= 4:
            raise torch.linalg.LinAlgError("not positive-definite")
        return real_fit(z, components, seed)

    monkeypatch.setattr(prior_module, "fit_mixture", failing_at_four)
    chosen = prior_module.choose_prior(model, x[:1500], x[1500:], TrainConfig(score_samples=4))
    assert chosen is not None and len(chosen.weights) <= 2
    assert set(chosen.selection) == {"0", "1", "2"}
    assert model.prior is None  # left as found


@pytest.mark.parametrize(("prior_var", "expected"), [(1.0, 0.0), (4.0, 0.5 * 2 * (0.25 + math.log(4.0) - 1.0))])
def test_the_sampled_aggregate_posterior_kl_finds_a_known_aggregates_kl(prior_var: float, expected: float) -> None:
    # posteriors N(mu_j, s² I) with mu_j ~ N(0, (1 - s²) I): their average is N(0, I); against N(0, v I) the KL is
    # d/2 (1/v + log v - 1), 0 at v = 1
    from training.evaluate import aggregate_posterior_kl_sampled

    n, d, s = 1000, 2, 0.5
    gen = torch.Generator().manual_seed(0)
    means = math.sqrt(1 - s**2) * torch.randn(n, d, generator=gen, dtype=torch.float64)
    z = means + s * torch.randn(n, d, generator=gen, dtype=torch.float64)
    factors = torch.eye(d, dtype=torch.float64).expand(n, d, d) / s  # L⁻ᵀ of L = s I

    def log_prior(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * (d * math.log(2 * math.pi * prior_var) + x.square().sum(-1) / prior_var)

    assert aggregate_posterior_kl_sampled(z, means, factors, log_prior) == pytest.approx(expected, abs=0.06)
