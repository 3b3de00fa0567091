"""Optimisation behaviour: learning happens, seeds reproduce, bounds hold on a trained model, failures are loud."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import ModelConfig, TrainConfig
from training.data import load_table, split_rows
from training.errors import ConfigError, NonFiniteLoss
from training.features import FeatureScaling, feature_scaling
from training.loop import fit, kl_weight
from training.losses import iwae_loss, score_terms, training_loss, trimmed, trimmed_count
from training.pipeline import RunResult
from training.stages import build_model


def _digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, FeatureScaling]:
    table = load_table("builtin:digits")
    split = split_rows(len(table.x), 0.1, 0.1, seed)
    scaling = feature_scaling(table.x, split.train)
    mean, std = scaling.mean.astype(np.float32), scaling.std.astype(np.float32)
    x_train = torch.from_numpy((table.x[split.train] - mean) / std)
    x_val = torch.from_numpy((table.x[split.val] - mean) / std)
    return x_train, x_val, scaling


def _short_fit(seed: int, epochs: int = 6) -> tuple[torch.nn.Module, list[float]]:
    x_train, x_val, scaling = _digits()
    model = build_model(ModelConfig(input_dim=64, latent_dim=4, hidden=(64,)), scaling, seed)
    cfg = TrainConfig(epochs=epochs, warmup_epochs=2, patience=50, seed=seed)
    result = fit(model, x_train, x_val, cfg)
    return model, [m.val_elbo for m in result.history]


def test_short_training_run_on_digits_improves_validation_elbo() -> None:
    # Validation ELBO can dip for a few epochs while the decoder variances shrink, then climbs well past the start.
    _, val = _short_fit(seed=0, epochs=30)
    assert max(val) > val[0] + 20.0  # nats per example


def test_same_seed_gives_identical_weights_and_another_seed_does_not() -> None:
    a, _ = _short_fit(seed=3)
    b, _ = _short_fit(seed=3)
    c, _ = _short_fit(seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.state_dict()["encoder.net.0.weight"], c.state_dict()["encoder.net.0.weight"])


def test_non_finite_loss_stops_training_with_a_clear_error() -> None:
    x_train, x_val, scaling = _digits()
    model = build_model(ModelConfig(input_dim=64, latent_dim=2, hidden=(8,)), scaling, 0)
    with torch.no_grad():
        model.decoder.net[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="training loss became nan"):
        fit(model, x_train, x_val, TrainConfig(epochs=2))


def test_kl_weight_rises_linearly_then_stays_at_one() -> None:
    assert [kl_weight(e, 4) for e in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert kl_weight(1, 0) == 1.0


def test_free_bits_lift_small_per_dimension_kls_to_the_floor() -> None:
    x_train, _, scaling = _digits()
    model = build_model(ModelConfig(input_dim=64, latent_dim=3, hidden=(8,)), scaling, 0)
    terms = score_terms(model, x_train[:32], torch.randn(32, 1, 3, generator=torch.Generator().manual_seed(0)))
    per_dim = terms.kl_per_dim.mean(0).detach()
    floor = float(per_dim.max()) + 1.0
    with_fb = training_loss(terms, 1.0, floor)
    without = training_loss(terms, 1.0, 0.0)
    expected_gap = (floor - per_dim).sum()  # every dimension is below the floor, so each is lifted to it
    torch.testing.assert_close(with_fb - without, expected_gap)


def _iwae(run: RunResult, x_raw: np.ndarray, k: int, seed: int) -> tuple[float, float]:
    from training.checkpoint import load_model

    model = load_model(run.bundle_dir / "checkpoint.pt")
    x_std = model.standardize(torch.from_numpy(x_raw))
    eps = torch.randn(len(x_raw), k, model.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        terms = score_terms(model, x_std, eps)
    return float(terms.iwae.mean()), float(terms.elbo.mean())


@pytest.mark.parametrize("run_name", ["diagonal_run", "full_run"])
def test_iwae_is_above_elbo_and_grows_with_k_on_a_trained_model(run_name: str, request: pytest.FixtureRequest) -> None:
    run: RunResult = request.getfixturevalue(run_name)
    x = load_table("builtin:digits").x[:300]
    bounds = [_iwae(run, x, k, seed=1) for k in (1, 8, 64)]
    iwae = [b[0] for b in bounds]
    assert all(b[0] >= b[1] - 1e-3 for b in bounds[1:])  # IWAE_K >= ELBO_K
    assert iwae[0] < iwae[1] < iwae[2]  # Burda et al.: IWAE_K is non-decreasing in K


def test_iwae_objective_is_minus_the_importance_weighted_bound_computed_independently() -> None:
    x_train, _, scaling = _digits()
    model = build_model(ModelConfig(input_dim=64, latent_dim=3, hidden=(8,)), scaling, 0)
    eps = torch.randn(16, 5, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        terms = score_terms(model, x_train[:16], eps)
        loss = iwae_loss(terms, beta=1.0)
        log_w = terms.log_w.double().numpy()
        expected = -(np.log(np.exp(log_w - log_w.max(1, keepdims=True)).mean(1)) + log_w.max(1)).mean()
        assert float(loss) == pytest.approx(expected, rel=1e-5)
        assert float(iwae_loss(terms, beta=1.0)) <= float(-terms.log_w.mean())  # Jensen: IWAE_K >= mean log w
        # beta = 0 during warm-up: the weights carry the likelihood alone
        assert float(iwae_loss(terms, beta=0.0)) == pytest.approx(
            float(-torch.logsumexp(terms.log_px, 1).mean() + np.log(5)), rel=1e-5
        )


def test_a_short_iwae_run_trains_and_improves_its_validation_elbo() -> None:
    x_train, x_val, scaling = _digits()
    model = build_model(ModelConfig(input_dim=64, latent_dim=4, hidden=(64,)), scaling, 0)
    result = fit(model, x_train, x_val, TrainConfig(epochs=20, warmup_epochs=2, seed=0, objective="iwae", samples=4))
    val = [m.val_elbo for m in result.history]
    assert max(val) > val[0] + 20.0


def test_trimming_leaves_out_the_rows_of_lowest_elbo_and_their_gradient() -> None:
    x_train, _, scaling = _digits()
    model = build_model(ModelConfig(input_dim=64, latent_dim=3, hidden=(8,)), scaling, 0)
    x = x_train[:40].clone()
    x[[3, 17]] += 25.0  # two rows far from every other: the lowest ELBOs of the batch
    x.requires_grad_(True)
    eps = torch.randn(40, 1, 3, generator=torch.Generator().manual_seed(0))
    terms = score_terms(model, x, eps, per_feature=True)  # every term a tensor: each is trimmed
    kept = trimmed(terms, 0.05)  # floor(0.05 * 40) = 2 rows out
    elbo = terms.elbo.detach().numpy()
    expected = np.sort(np.argsort(elbo)[2:])  # independently: every row but the two lowest, in row order
    assert set(np.argsort(elbo)[:2]) == {3, 17}
    np.testing.assert_array_equal(kept.elbo.detach().numpy(), elbo[expected])
    for full, part in zip(terms, kept, strict=True):
        assert part.shape == (38, *full.shape[1:])
    training_loss(kept, 1.0, 0.0).backward()
    assert x.grad is not None
    row_grads = x.grad.abs().sum(1)
    assert (row_grads[[3, 17]] == 0).all() and (row_grads[expected] > 0).all()  # the far rows move nothing
    # the loss of the kept rows equals the plain loss of a batch that never held the far rows
    alone = score_terms(model, x[expected], eps[expected])
    torch.testing.assert_close(training_loss(kept, 1.0, 0.0), training_loss(alone, 1.0, 0.0))
    assert trimmed(terms, 0.02) is terms  # floor(0.02 * 40) = 0: nothing to leave out
    assert trimmed_count(100, 0.29) == 29  # 0.29 * 100 is 28.999999999999996 in floating point
    assert trimmed(terms, 0.0) is terms


def test_trimmed_training_learns_planted_outliers_less_than_plain_training() -> None:
    # 5% of the training rows are a planted cluster far from the digits; trimming keeps them out of the fit, so
    # after the same epochs they stay much less likely than under plain training, and the digits barely move.
    x_train, x_val, scaling = _digits()
    rng = np.random.default_rng(0)
    n_bad = len(x_train) // 20
    bad = torch.from_numpy(rng.normal(6.0, 0.3, (n_bad, 64)).astype(np.float32))
    x = torch.cat([x_train, bad])
    gen = torch.Generator().manual_seed(1)
    elbo = {}
    for trim in (0.0, 0.1):
        model = build_model(ModelConfig(input_dim=64, latent_dim=4, hidden=(64,)), scaling, 0)
        fit(model, x, x_val, TrainConfig(epochs=30, warmup_epochs=2, patience=50, seed=0, trim=trim))
        with torch.no_grad():
            eps = torch.randn(len(bad), 8, 4, generator=gen)
            normal_eps = torch.randn(len(x_val), 8, 4, generator=gen)
            elbo[trim] = (
                float(score_terms(model, bad, eps).elbo.mean()),
                float(score_terms(model, x_val, normal_eps).elbo.mean()),
            )
    (bad_plain, val_plain), (bad_trim, val_trim) = elbo[0.0], elbo[0.1]
    assert bad_trim < bad_plain - 50.0, elbo
    assert val_trim > val_plain - 5.0, elbo


def test_a_trim_too_small_for_the_minibatch_is_refused_and_a_trimmed_rows_inf_still_stops_training() -> None:
    x_train, x_val, scaling = _digits()
    model = build_model(ModelConfig(input_dim=64, latent_dim=2, hidden=(8,)), scaling, 0)
    with pytest.raises(ConfigError, match=r"--trim 0.005 leaves no row out of a minibatch of 128 rows; ask for at"):
        fit(model, x_train, x_val, TrainConfig(epochs=1, trim=0.005))
    # fewer training rows than --batch-size: the minibatch is all of them, and 0.01 of 48 rows is no row
    with pytest.raises(ConfigError, match=r"--trim 0.01 leaves no row out of a minibatch of 48 rows \(the training"):
        fit(model, x_train[:48], x_val, TrainConfig(epochs=1, trim=0.01))
    far = x_train.clone()
    far[:, 0] = 0.0
    far[5, 0] = 1e30  # its log density is -inf: the lowest ELBO of every minibatch it is in, so trimmed away
    with pytest.raises(NonFiniteLoss, match="training loss became -inf"):
        fit(model, far, x_val, TrainConfig(epochs=1, trim=0.05, batch_size=len(far)))
