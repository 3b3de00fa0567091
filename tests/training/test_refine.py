"""The encoder refined after training (training/refine.py): it narrows the validation gap, touches nothing but the
encoder, never keeps a worse encoder, draws its extra rows from the model's prior and from around and between the
training rows' posteriors, jitters them as stated, and runs no longer than asked."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from contract import MixturePrior
from contract.prior import MixtureArrays
from tests.conftest import FAST_MODEL, FAST_TRAIN
from training import pipeline, refine, stages
from training.checkpoint import load_model
from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from training.data import load_table
from training.features import feature_scaling
from training.loop import evaluate_elbo
from training.model import GaussianVAE, Posterior
from training.refine import (
    INPUT_NOISE,
    full_from_diagonal,
    jittered,
    latents_near,
    model_rows,
    refine_encoder,
    refine_steps,
    rows_near,
    training_covariance,
)
from training.stages import build_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[GaussianVAE, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small digits model trained as vae-train trains it, prior fitted, not refined; its training, validation and
    test rows (standardised), from the run's own split."""
    train = dataclasses.replace(FAST_TRAIN, refine_steps=0, epochs=40, patience=40)
    config = RunConfig(
        DataConfig(source="builtin:digits", test_fraction=0.2, decorrelate="off"),
        ModelConfig(**FAST_MODEL),
        train,
        "unrefined",
        tmp_path_factory.mktemp("refine"),
    )
    data = stages.load(config)
    fitted = stages.fit(config, data)
    stages.fit_prior(config, data, fitted)
    rows = [stages.standardized(fitted.model, data, idx) for idx in (data.split.train, data.split.val, data.split.test)]
    return fitted.model.eval(), *rows


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _val_elbo(model: GaussianVAE, x: torch.Tensor, seed: int = 5) -> float:
    return evaluate_elbo(model, x, 16, torch.Generator().manual_seed(seed))[0]


def test_refinement_raises_the_held_out_elbo_and_changes_nothing_but_the_encoder(
    trained: tuple[GaussianVAE, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    model, x_train, x_val, x_test = trained
    assert model.prior is not None  # the refinement draws rows from the mixture
    decoder, buffers, prior = _state(model.decoder), {k: v.clone() for k, v in model.named_buffers()}, model.prior
    encoder = _state(model.encoder)
    before = _val_elbo(model, x_test)
    cfg = dataclasses.replace(FAST_TRAIN, refine_steps=300)
    done = refine_encoder(model, x_train, x_val, cfg, *refine_steps(cfg, 10_000))
    try:
        assert done.steps == 300 and done.best_step > 0 and done.stop_reason == "--refine-steps"
        assert done.val_elbo_after > done.val_elbo_before
        # on rows neither the refinement nor its choice saw: log p(x) is fixed, so the ELBO's rise is the gap's fall
        assert _val_elbo(model, x_test) > before + 0.25  # a small model here: latent 4, 64 wide
        for k, v in _state(model.decoder).items():
            assert torch.equal(v, decoder[k]), k
        for k, v in model.named_buffers():
            assert torch.equal(v, buffers[k]), k
        assert model.prior is prior
        assert all(p.requires_grad for p in model.parameters())  # the decoder is trainable again afterwards
        assert any(not torch.equal(v, encoder[k]) for k, v in _state(model.encoder).items())
    finally:
        model.encoder.load_state_dict(encoder)


def test_an_encoder_that_validation_finds_worse_is_not_kept(
    trained: tuple[GaussianVAE, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    model, x_train, x_val, _ = trained
    encoder = _state(model.encoder)
    cfg = dataclasses.replace(FAST_TRAIN, refine_steps=20, learning_rate=10.0, grad_clip=0.0)  # steps that wreck it
    done = refine_encoder(model, x_train, x_val, cfg, 20)
    assert done.steps == 20  # every step ran, and validation turned down each of the 10 encoders it saw
    assert done.best_step == 0 and done.val_elbo_after == done.val_elbo_before
    for k, v in _state(model.encoder).items():
        assert torch.equal(v, encoder[k]), k


def test_the_models_own_rows_come_from_its_prior_through_its_decoder() -> None:
    x = np.asarray(load_table("builtin:digits").x[:300], dtype=np.float32)
    model = build_model(ModelConfig(input_dim=64, latent_dim=2, hidden=(16,)), feature_scaling(x, np.arange(300)), 0)
    far = [6.0, -6.0]
    model.set_prior(
        MixturePrior(weights=[1.0], means=[far], scale_tril=[[[1e-3, 0.0], [0.0, 1e-3]]]),
    )
    prior = MixtureArrays.of(model.prior.spec if model.prior else None)
    rows = model_rows(model, prior, 4000, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert rows.shape == (4000, 64)
    with torch.no_grad():
        mean, log_var = model.decoder(torch.tensor([far]))
    expected_mean, expected_sd = model.full(mean)[0].numpy(), model.full(torch.exp(0.5 * log_var))[0].numpy()
    active = model.active.numpy()
    # rows ~ N(decoder mean at the prior's one tight component, decoder variance) feature by feature
    drawn = rows.numpy()
    np.testing.assert_allclose(drawn[:, active].mean(0), expected_mean[active], atol=4 * expected_sd.max() / 60)
    np.testing.assert_allclose(drawn[:, active].std(0), expected_sd[active], rtol=0.08)
    constants = np.setdiff1d(np.arange(64), active)
    assert constants.size and np.all(drawn[:, constants] == 0.0)  # a constant's standardised value


def test_the_rows_near_a_training_row_follow_its_posterior_and_its_mean_through_the_decoder(
    trained: tuple[GaussianVAE, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    model, x_train, _, _ = trained
    n = 6000
    x = x_train[:1].expand(n, -1)  # one row, n times: between two copies of it, z is its posterior mean
    rows = rows_near(model, x, torch.Generator().manual_seed(0), 1, 1).numpy()
    with torch.no_grad():  # the same draws with torch.distributions, independent noise
        torch.manual_seed(1)
        post = model.encoder(model.select(x))
        z_around = torch.distributions.Normal(post.mean, torch.exp(0.5 * post.log_var)).sample()
        expected = []
        for z in (z_around, post.mean):
            mean, log_var = model.decoder(z)
            expected.append(model.full(torch.distributions.Normal(mean, torch.exp(0.5 * log_var)).sample()).numpy())
    assert rows.shape == (2 * n, x.shape[1])
    active = model.active.numpy()
    constants = np.setdiff1d(np.arange(rows.shape[1]), active)
    for got, want in zip((rows[:n], rows[n:]), expected, strict=True):
        sd = want[:, active].std(0)
        # two samples of n from one distribution: means within 5 standard errors of their difference, sds within 10%
        diff = np.abs(got[:, active].mean(0) - want[:, active].mean(0))
        np.testing.assert_array_less(diff, 5 * sd * (2 / n) ** 0.5)
        np.testing.assert_allclose(got[:, active].std(0), sd, rtol=0.1)
        assert constants.size and np.all(got[:, constants] == 0.0)  # a constant's standardised value


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_codes_near_rows_are_draws_of_each_rows_posterior_then_points_between_two_rows_means(covariance: str) -> None:
    d, n = 3, 4000
    means = torch.tensor([[0.0, 1.0, -1.0], [2.0, -1.0, 0.5]])
    tril = torch.tensor(
        [[[0.5, 0.0, 0.0], [0.2, 0.3, 0.0], [-0.1, 0.4, 0.6]], [[0.2, 0.0, 0.0], [0.0, 0.7, 0.0], [0.3, 0.1, 0.4]]]
    )
    if covariance == "diagonal":
        tril = torch.diag_embed(torch.diagonal(tril, dim1=-2, dim2=-1))
    cov = tril @ tril.transpose(-1, -2)  # (2, d, d)
    log_var = torch.log(torch.diagonal(cov, dim1=-2, dim2=-1))
    rows = torch.arange(2).repeat_interleave(n)  # row 0 n times, then row 1 n times: B = 2n
    post = Posterior(
        means[rows],
        log_var[rows],
        torch.log(torch.diagonal(tril, dim1=-2, dim2=-1))[rows],
        None if covariance == "diagonal" else tril[rows],
    )
    z = latents_near(post, torch.Generator().manual_seed(0), 3, 1).numpy()
    assert z.shape == (4 * 2 * n, d)
    around = z[: 3 * 2 * n].reshape(3, 2 * n, d)  # draw-major: draw k of row i at k·B + i
    for r in range(2):
        drawn = around[:, rows.numpy() == r].reshape(-1, d)  # 3n draws of q(z|x_r)
        np.testing.assert_allclose(drawn.mean(0), means[r].numpy(), atol=5 * 0.7 / (3 * n) ** 0.5)
        np.testing.assert_allclose(np.cov(drawn.T), cov[r].numpy(), atol=0.05)
    between = z[3 * 2 * n :]
    for r in range(2):  # z = λ·m_r + (1 - λ)·m_j: on the segment from m_r to the other mean, or m_r itself
        step = means[1 - r] - means[r]
        offset = torch.from_numpy(between[rows.numpy() == r]) - means[r]
        c = offset @ step / step.dot(step)  # how far along the segment
        torch.testing.assert_close(offset, c[:, None] * step[None, :], atol=1e-5, rtol=0)
        assert c.min() >= -1e-6 and c.max() <= 1 + 1e-6
        assert 0.2 < (c > 1e-6).float().mean() < 0.8 and c.max() > 0.9  # the other row about half the time, λ spread


def test_rows_trim_leaves_out_are_not_varied_on(
    trained: tuple[GaussianVAE, torch.Tensor, torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x_train, x_val, _ = trained
    encoder, sources = _state(model.encoder), []

    def recording(model: GaussianVAE, x: torch.Tensor, gen: torch.Generator, around: int, between: int) -> torch.Tensor:
        sources.append(len(x))
        return rows_near(model, x, gen, around, between)

    monkeypatch.setattr(refine, "rows_near", recording)
    cfg = dataclasses.replace(FAST_TRAIN, trim=0.2, batch_size=100)
    try:
        refine_encoder(model, x_train, x_val, cfg, 3)
    finally:
        model.encoder.load_state_dict(encoder)
    assert sources == [80, 80, 80]  # of each minibatch of 100, the 20 of lowest ELBO left out


def test_the_jitter_moves_modelled_features_by_input_noise_and_leaves_constants(
    trained: tuple[GaussianVAE, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    model, x_train, _, _ = trained
    x = x_train[:1].expand(20_000, -1)
    moved = (jittered(model, x, torch.Generator().manual_seed(0)) - x).numpy()
    active = model.active.numpy()
    constants = np.setdiff1d(np.arange(x.shape[1]), active)
    assert constants.size and np.all(moved[:, constants] == 0.0)
    np.testing.assert_allclose(moved[:, active].std(0), INPUT_NOISE, rtol=0.03)
    np.testing.assert_array_less(np.abs(moved[:, active].mean(0)), 5 * INPUT_NOISE / 20_000**0.5)


def test_refinement_runs_its_setting_and_no_more_than_five_trainings(tmp_path: Path) -> None:
    assert refine_steps(TrainConfig(refine_steps=12_000), 1000) == (5000, "5 times training's 1000 steps")
    assert refine_steps(TrainConfig(), 2110) == (10_000, "--refine-steps")  # digits' training, refined in full
    assert refine_steps(TrainConfig(), 1557) == (7785, "5 times training's 1557 steps")  # nine digits of ten, briefly
    assert refine_steps(TrainConfig(refine_steps=50), 1000) == (50, "--refine-steps")
    assert refine_steps(TrainConfig(refine_steps=0), 1000)[0] == 0
    train = dataclasses.replace(FAST_TRAIN, epochs=1, warmup_epochs=1, refine_steps=TrainConfig().refine_steps)
    data = DataConfig(source="builtin:digits", decorrelate="off")
    config = RunConfig(data, ModelConfig(**FAST_MODEL), train, "short", tmp_path)
    data = stages.load(config)
    fitted = stages.fit(config, data)
    stages.fit_prior(config, data, fitted)
    done = stages.refine(config, data, fitted)
    steps = math.ceil(len(data.split.train) / train.batch_size)  # one epoch's
    assert (done.steps, done.stop_reason) == (5 * steps, f"5 times training's {steps} steps")
    assert done.seconds > 0
    iwae = dataclasses.replace(config, train=dataclasses.replace(train, objective="iwae", samples=2))
    assert stages.refine(iwae, data, fitted).steps == 0  # that encoder is trained for the IWAE bound: left alone


def test_the_published_model_is_the_refined_one_and_training_itself_is_unchanged(tmp_path: Path) -> None:
    phases: list[str] = []
    train = dataclasses.replace(FAST_TRAIN, epochs=3, warmup_epochs=1)
    runs, metrics = {}, {}
    for steps in (train.refine_steps, 0):
        config = RunConfig(
            DataConfig(source="builtin:digits"),
            ModelConfig(**FAST_MODEL),
            dataclasses.replace(train, refine_steps=steps),
            f"r{steps}",
            tmp_path,
        )
        bundle = pipeline.run(config, on_phase=phases.append).bundle_dir
        runs[steps] = load_model(bundle / "checkpoint.pt")
        metrics[steps] = json.loads((bundle / "report" / "metrics.json").read_text())["refinement"]
    assert sum(p.startswith("encoder refined for ") for p in phases) == 1
    # the report records the refinement's run (3 epochs of training allow 3 x their steps: --refine-steps is the limit)
    assert metrics[0] is None
    assert metrics[train.refine_steps]["steps"] == train.refine_steps
    assert metrics[train.refine_steps]["stop_reason"] == "--refine-steps"
    assert metrics[train.refine_steps]["val_elbo_after"] >= metrics[train.refine_steps]["val_elbo_before"]
    refined, unrefined = runs[train.refine_steps], runs[0]
    for k, v in refined.decoder.state_dict().items():
        assert torch.equal(v, unrefined.decoder.state_dict()[k]), k
    assert any(not torch.equal(v, unrefined.encoder.state_dict()[k]) for k, v in refined.encoder.state_dict().items())


def test_a_diagonal_encoder_made_full_answers_as_it_did_and_then_learns_correlations(
    trained: tuple[GaussianVAE, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    diagonal, x_train, x_val, x_test = trained
    model = copy.deepcopy(diagonal)
    full_from_diagonal(model, x_train, seed=0)
    assert model.config.covariance == "full" and diagonal.config.covariance == "diagonal"
    with torch.no_grad():
        before, after = diagonal.encoder(diagonal.select(x_test)), model.encoder(model.select(x_test))
    assert after.scale_tril is not None
    assert torch.allclose(after.mean, before.mean, atol=1e-5)  # the same weights, in a wider matmul
    assert torch.equal(torch.tril(after.scale_tril, -1), torch.zeros_like(after.scale_tril))  # no correlations yet
    # on rows the fit did not see: σ_j within 1% of the diagonal encoder's on average, 10% at worst (a linear head
    # cannot follow log softplus⁻¹ exactly)
    off = (after.log_diag - 0.5 * before.log_var).abs()
    assert off.mean() < 0.01 and off.max() < 0.1
    assert abs(_val_elbo(model, x_test) - _val_elbo(diagonal, x_test)) < 0.1  # the same bound, to the noise
    for name, p in model.decoder.state_dict().items():
        assert torch.equal(p, diagonal.decoder.state_dict()[name]), name
    cfg = dataclasses.replace(FAST_TRAIN, refine_steps=200)
    done = refine_encoder(model, x_train, x_val, cfg, 200)
    assert done.val_elbo_after > done.val_elbo_before
    with torch.no_grad():
        learnt = model.encoder(model.select(x_test)).scale_tril
    assert learnt is not None and torch.tril(learnt, -1).abs().max() > 0  # the refinement moved the correlations


def test_covariance_full_trains_the_diagonal_encoder_and_publishes_the_full_one(tmp_path: Path) -> None:
    train = dataclasses.replace(FAST_TRAIN, epochs=3, warmup_epochs=1, refine_steps=60)
    models = {}
    for name, covariance, steps in (("diag", "diagonal", 60), ("full", "full", 60), ("joint", "full", 0)):
        config = RunConfig(
            DataConfig(source="builtin:digits"),
            ModelConfig(**{**FAST_MODEL, "covariance": covariance}),
            dataclasses.replace(train, refine_steps=steps),
            name,
            tmp_path,
        )
        assert training_covariance(config.model, config.train) == ("diagonal" if name == "full" else covariance)
        bundle = pipeline.run(config).bundle_dir
        assert json.loads((bundle / "manifest.json").read_text())["covariance"] == covariance
        models[name] = load_model(bundle / "checkpoint.pt")
    assert models["full"].config.covariance == "full"
    decoders = {name: m.decoder.state_dict() for name, m in models.items()}
    # the full encoder's decoder is the one trained beside the diagonal encoder, weight for weight; without the
    # refinement the full encoder trains with its decoder, which then differs
    assert all(torch.equal(v, decoders["diag"][k]) for k, v in decoders["full"].items())
    assert not all(torch.equal(v, decoders["diag"][k]) for k, v in decoders["joint"].items())
    iwae = TrainConfig(objective="iwae", samples=2)
    assert training_covariance(ModelConfig(covariance="full"), iwae) == "full"  # no refinement for that objective
