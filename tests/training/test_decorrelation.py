"""Decorrelated features (--decorrelate): the factor, the density it gives, the decoder's draws and the choice."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from runtime.local import open_bundle
from training import stages
from training.checkpoint import CANDIDATE_CHECKPOINT, RUN_CHECKPOINT, load_model
from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from training.decorrelate import DECORRELATION_MARGIN
from training.distributed import Dist
from training.errors import ConfigError, NonFiniteLoss
from training.features import MAX_DECORRELATED, covariance, feature_scaling
from training.losses import score_terms
from training.model import GaussianVAE
from training.pipeline import run


def _correlated(n: int = 400, seed: int = 0) -> np.ndarray:
    # three correlated continuous columns, a constant one between them, a lattice one (whole numbers) at the end
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 2))
    a = 3.0 + 2.0 * base[:, 0]
    b = -1.0 + 0.5 * (0.9 * base[:, 0] + 0.1 * base[:, 1])
    c = 10.0 + base[:, 1]
    lattice = np.round(4.0 * base[:, 0] + rng.standard_normal(n))
    return np.stack([a, b, np.full(n, 7.0), c, lattice], 1).astype(np.float32)


def test_covariance_of_chunks_and_ranks_equals_numpys(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _correlated(1000)
    rows = np.random.default_rng(1).permutation(1000)[:700]
    columns = np.array([0, 1, 3, 4])
    expected = np.cov(x[np.sort(rows)][:, columns].astype(np.float64).T, bias=True)
    monkeypatch.setattr("training.features.chunk_rows", lambda width: 64)  # many chunks, one of them short
    np.testing.assert_allclose(covariance(x, rows, columns), expected, rtol=1e-10, atol=1e-12)

    class TwoRanks(Dist):
        # rank 0's view of two ranks: rank 1's share computed here by a second Dist and gathered in rank order
        def gather(self, a: np.ndarray) -> np.ndarray:
            other = covariance_parts(x, rows, columns, Dist(rank=1, world=2))
            return np.stack([a, other])

    def covariance_parts(x: np.ndarray, rows: np.ndarray, columns: np.ndarray, ranks: Dist) -> np.ndarray:
        captured: list[np.ndarray] = []

        class Capture(Dist):
            def gather(self, a: np.ndarray) -> np.ndarray:
                captured.append(a)
                return a[None]

        covariance(x, rows, columns, Capture(rank=ranks.rank, world=ranks.world))
        return captured[0]

    np.testing.assert_allclose(covariance(x, rows, columns, TwoRanks(rank=0, world=2)), expected, rtol=1e-10)


def test_the_factor_is_the_cholesky_of_the_dequantised_correlation() -> None:
    x = _correlated()
    s = feature_scaling(x, np.arange(len(x)), decorrelate=True)
    assert s.kinds == ["continuous", "continuous", "constant", "continuous", "lattice"]
    active = s.active
    x64 = x.astype(np.float64)[:, active]
    cov = np.cov(x64.T, bias=True) + np.diag((s.step[active] ** 2) / 12.0)  # x + h u: the bin's variance added
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert s.factor is not None
    np.testing.assert_allclose(s.factor @ s.factor.T, corr, atol=1e-5)
    assert np.allclose(s.factor, np.tril(s.factor)) and np.all(np.diag(s.factor) > 0)
    assert feature_scaling(x, np.arange(len(x))).factor is None  # only when asked for


def test_a_copied_column_still_gets_a_factor() -> None:
    x = _correlated()
    x = np.concatenate([x, x[:, :1]], 1)  # correlation exactly 1: singular without the ridge
    s = feature_scaling(x, np.arange(len(x)), decorrelate=True)
    assert s.factor is not None and np.all(np.isfinite(s.factor)) and np.diag(s.factor).min() > 0


def _model(seed: int = 0) -> tuple[GaussianVAE, np.ndarray]:
    x = _correlated()
    s = feature_scaling(x, np.arange(len(x)), decorrelate=True)
    torch.manual_seed(seed)
    model = GaussianVAE(ModelConfig(input_dim=5, latent_dim=2, hidden=(8,)), s).double().eval()
    return model, x


def test_the_likelihood_is_the_correlated_gaussian_of_the_raw_rows() -> None:
    # log p(x|z) in raw units against torch.distributions: the active features N(μ + std ⊙ L m, S L diag(v) Lᵀ S)
    # with S = diag(std), the constant its own N(c + h/2, h²/12) (it lies on the whole numbers' lattice)
    model, x = _model()
    s = model.scaling
    active = torch.from_numpy(s.active)
    raw = torch.from_numpy(x[:6].astype(np.float64))
    eps = torch.randn(6, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_std = model.at_bin_centres(model.standardize(raw))
    terms = score_terms(model, x_std, eps, per_feature=True)
    assert terms.feature_ll is not None
    with torch.no_grad():
        z = model.encode(x_std).sample(eps)  # (6, 3, 2)
        m, log_var = model.decoder(z)  # over y
    factor, std = torch.from_numpy(s.factor), torch.from_numpy(s.std)[active]
    scale = std[:, None] * factor  # S L
    mean = torch.from_numpy(s.mean)[active] + m @ scale.T  # (6, 3, D_active)
    cov = scale @ torch.diag_embed(torch.exp(log_var)) @ scale.T
    centred_raw = raw[:, None, active] + torch.from_numpy(s.centre_shift())[active]  # scored at bins' centres
    constant = Normal(s.mean[2], s.std[2]).log_prob(raw[:, None, 2] + s.centre_shift()[2])
    assert s.step[2] == 1.0 and s.std[2] == pytest.approx(1 / np.sqrt(12))
    expected = MultivariateNormal(mean, covariance_matrix=cov).log_prob(centred_raw) + constant  # (6, 3)
    # the buffers are float32 (as exported): agreement to their precision
    np.testing.assert_allclose(terms.log_px.detach().numpy(), expected.numpy(), rtol=1e-5, atol=5e-5)
    # the constant's term is its own
    np.testing.assert_allclose(terms.feature_ll[:, 2].detach().numpy(), constant.mean(-1).numpy(), rtol=1e-10)


def test_each_features_term_is_its_marginal_given_z() -> None:
    model, x = _model(1)
    s = model.scaling
    active = s.active
    raw = torch.from_numpy(x[:2].astype(np.float64))
    eps = torch.zeros(2, 1, 2, dtype=torch.float64)
    x_std = model.at_bin_centres(model.standardize(raw))
    with torch.no_grad():
        terms = score_terms(model, x_std, eps, per_feature=True)
        m, log_var = model.decoder(model.encode(x_std).sample(eps))
    assert terms.feature_ll is not None
    scale = np.diag(s.std[active]) @ s.factor
    for row in range(2):
        mean = s.mean[active] + scale @ m[row, 0].numpy()
        var = np.diag(scale @ np.diag(np.exp(log_var[row, 0].numpy())) @ scale.T)
        value = raw[row].numpy()[active] + s.centre_shift()[active]
        expected = -0.5 * (np.log(2 * np.pi * var) + (value - mean) ** 2 / var)  # numpy, feature by feature
        np.testing.assert_allclose(terms.feature_ll[row, active].numpy(), expected, rtol=1e-5, atol=5e-5)
    # the marginals are not the joint: their sum differs from log p(x|z) by the features' correlations
    assert abs(terms.feature_ll.sum(-1) - terms.reconstruction).max() > 0.1


def test_draws_have_the_decoders_covariance() -> None:
    model, _ = _model(2)
    s = model.scaling
    z = torch.zeros(20000, 2, dtype=torch.float64)
    with torch.no_grad():
        m, log_var = model.decoder(z)
        noise = torch.randn(m.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        drawn = model.draw(m, log_var, noise).numpy()
        marginal_mean, marginal_log_var = model.decoded(z[:1])
    expected = s.factor @ np.diag(np.exp(log_var[0].numpy())) @ s.factor.T
    np.testing.assert_allclose(np.cov(drawn.T), expected, atol=0.03 * np.abs(expected).max())
    np.testing.assert_allclose(marginal_log_var[0].numpy(), np.log(np.diag(expected)), rtol=1e-6)
    np.testing.assert_allclose(marginal_mean[0].numpy(), s.factor @ m[0].numpy(), rtol=1e-6)


def _run_config(tmp_path: Path, decorrelate: str, **train: Any) -> RunConfig:
    path = tmp_path / "table.npy"
    if not path.exists():
        np.save(path, _correlated(300))
    return RunConfig(
        data=DataConfig(source=str(path), decorrelate=decorrelate),  # type: ignore[arg-type]
        model=ModelConfig(latent_dim=2, hidden=(16,)),
        train=TrainConfig(**{"epochs": 4, "warmup_epochs": 1, "eval_samples": 8, "score_samples": 4, **train}),
        name="table",
        repository=tmp_path / "models",
    )


def test_auto_trains_both_and_keeps_the_decorrelated_one_when_clearly_better(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = run(_run_config(tmp_path, "auto"))
    assert "--trim does little" not in caplog.text  # said only with --trim
    assert result.manifest is not None
    record = result.manifest.training.decorrelation
    assert set(record) == {"on", "off"} and record["on"] != record["off"]
    kept = "on" if record["on"] > record["off"] + DECORRELATION_MARGIN else "off"
    assert result.manifest.preprocessing.decorrelate == (kept == "on")
    assert result.manifest.format_version == 5
    for name in ("on", "off"):  # each candidate is the very model trained alone with that choice, in either order
        alone = run(_run_config(tmp_path, name))
        assert alone.manifest is not None and alone.manifest.training.decorrelation == {}
        assert alone.fit.best_val_elbo == pytest.approx(record[name], rel=1e-6)
        assert alone.manifest.preprocessing.decorrelate == (name == "on")


def test_auto_keeping_the_decorrelated_model_under_trim_says_that_trim_then_does_little(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = run(_run_config(tmp_path, "auto", trim=0.05))
    assert result.manifest is not None and result.manifest.preprocessing.decorrelate
    assert "--decorrelate auto kept the decorrelated model, with which --trim does little" in caplog.text
    assert "--decorrelate off has done better" in caplog.text
    caplog.clear()
    run(_run_config(tmp_path, "on", trim=0.05))  # asked for: said before training
    assert "--decorrelate on: a decorrelated model, with which --trim does little" in caplog.text


def test_a_decorrelated_bundle_serves_draws_through_its_factor(tmp_path: Path) -> None:
    result = run(_run_config(tmp_path, "on"))
    assert result.manifest is not None and result.manifest.preprocessing.decorrelate
    model = load_model(result.bundle_dir / "checkpoint.pt").double().eval()
    local = open_bundle(result.bundle_dir)
    z = np.zeros((4000, 2), np.float32)
    decoded = local.decode(z, sample=True, seed=5)
    s = model.scaling
    with torch.no_grad():
        _, log_var = model.decoder(torch.zeros(1, 2, dtype=torch.float64))
    scale = np.diag(s.std[s.active]) @ s.factor  # raw units: S L diag(v) Lᵀ S
    expected = scale @ np.diag(np.exp(log_var[0].numpy())) @ scale.T
    got = np.cov(decoded["x"][:, s.active].astype(np.float64).T)
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())
    # the answer's log_var is each feature's marginal, the diagonal of the same covariance
    np.testing.assert_allclose(decoded["log_var"][0, s.active], np.log(np.diag(expected)), rtol=1e-4, atol=1e-4)
    # the same seed draws the same rows; sample draws through the same factor
    again = local.decode(z[:3], sample=True, seed=5)["x"]
    np.testing.assert_array_equal(again, decoded["x"][:3])
    assert local.sample(n=5, seed=1)["samples"].shape == (5, 5)


def test_a_resumed_run_keeps_its_decorrelation(tmp_path: Path) -> None:
    first = run(_run_config(tmp_path, "on"))
    with pytest.raises(ConfigError, match="trained with --decorrelate on, this run asks for off"):
        run(replace(_run_config(tmp_path, "off", epochs=6), resume=first.bundle_dir))
    resumed = run(replace(_run_config(tmp_path, "auto", epochs=6), resume=first.bundle_dir))
    assert resumed.manifest is not None and resumed.manifest.preprocessing.decorrelate
    assert resumed.manifest.training.decorrelation == {}  # continued as trained, not compared


class Interrupt(Exception):
    """Stands in for a pre-empted job."""


@pytest.mark.parametrize("stop_at", [3, 9], ids=["in the decorrelated training", "in the plain one"])
def test_an_interrupted_auto_run_resumes_to_the_bundle_of_one_never_interrupted(
    tmp_path: Path, stop_at: int, caplog: pytest.LogCaptureFixture
) -> None:
    def config(repository: str, **options: Any) -> RunConfig:
        return replace(_run_config(tmp_path, "auto", epochs=6), repository=tmp_path / repository, **options)

    whole = run(config("whole", checkpoint_every=2))
    epochs: list[int] = []

    def pre_empted(m: Any) -> None:  # the stop_at-th epoch of the two trainings, six epochs each
        epochs.append(m.epoch)
        if len(epochs) == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(config("cut", checkpoint_every=2), pre_empted)
    folder = tmp_path / "cut" / "table"
    assert (folder / CANDIDATE_CHECKPOINT).is_file() is (stop_at > 6)  # the decorrelated model, once finished
    resume_from = folder / RUN_CHECKPOINT
    if stop_at > 6:
        (folder / CANDIDATE_CHECKPOINT).rename(tmp_path / "kept.pt")
        with pytest.raises(ConfigError, match="kept it in checkpoint-decorrelated.pt beside it, which is gone"):
            run(config("cut", checkpoint_every=2, resume=resume_from))
        moved = tmp_path / "moved"  # both files moved elsewhere together: found beside the checkpoint resumed
        moved.mkdir()
        (tmp_path / "kept.pt").rename(moved / CANDIDATE_CHECKPOINT)
        resume_from = resume_from.rename(moved / RUN_CHECKPOINT)
        wider = replace(
            config("cut", checkpoint_every=2, resume=resume_from), model=ModelConfig(latent_dim=2, hidden=(8,))
        )
        with pytest.raises(ConfigError, match=r"its model options differ from this run's \(hidden\)"):
            run(wider)
        longer = tmp_path / "longer"  # a copy resumed with more epochs: said, and trained on
        shutil.copytree(moved, longer)
        again = replace(config("longer", resume=longer / RUN_CHECKPOINT), train=replace(wider.train, epochs=7))
        assert run(again).manifest is not None
        assert "the decorrelated model was trained with other epochs than this run gives the plain one" in caplog.text
    resumed = run(config("cut", checkpoint_every=2, resume=resume_from))
    assert resumed.manifest is not None and whole.manifest is not None
    assert resumed.manifest.training.decorrelation == whole.manifest.training.decorrelation
    assert resumed.manifest.preprocessing.decorrelate == whole.manifest.preprocessing.decorrelate
    assert resumed.manifest.training.epochs_run == whole.manifest.training.epochs_run
    a, b = (load_model(r.bundle_dir / "checkpoint.pt").state_dict() for r in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in folder.iterdir()) == [".run.lock", "1"]  # both checkpoints gone once published


def test_on_refuses_more_features_than_it_decorrelates(tmp_path: Path) -> None:
    path = tmp_path / "wide.npy"
    np.save(path, np.random.default_rng(0).standard_normal((40, MAX_DECORRELATED + 1)).astype(np.float32))
    config = RunConfig(data=DataConfig(source=str(path), decorrelate="on"), repository=tmp_path / "models")
    with pytest.raises(ConfigError, match=f"more than the {MAX_DECORRELATED} decorrelation takes"):
        run(config)
    assert not (tmp_path / "models").exists()


def test_auto_keeps_the_plain_model_when_the_decorrelated_ones_training_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = stages._fit

    def diverging(config: RunConfig, data: Any, scaling: Any, *args: Any) -> Any:
        if scaling.factor is not None:
            raise NonFiniteLoss("the training loss became nan at epoch 2")
        return real(config, data, scaling, *args)

    monkeypatch.setattr(stages, "_fit", diverging)
    result = run(_run_config(tmp_path, "auto"))
    assert result.manifest is not None and not result.manifest.preprocessing.decorrelate
    assert set(result.manifest.training.decorrelation) == {"off"}
    with pytest.raises(NonFiniteLoss):  # asked for, it fails as any training does
        run(_run_config(tmp_path, "on"))
