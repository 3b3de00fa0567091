"""The estimator: fit like scikit-learn, score like the service, save a bundle the service and `load` read."""

from __future__ import annotations

import copy
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (
    check_estimators_unfitted,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from contract import Manifest
from gaussian_vae import VAE, load
from runtime.local import open_bundle
from tests.service.conftest import serving
from training.checkpoint import load_model
from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from training.errors import ConfigError
from training.pipeline import run
from vae_tables import DataError

pytestmark = pytest.mark.anyio
FAST = {
    "epochs": 4,
    "warmup_epochs": 1,
    "hidden": (32,),
    "latent_dim": 3,
    "eval_samples": 8,
    "reference_samples": 8,
    "refine_steps": 30,
    "decorrelate": "off",  # one training, not both (auto); the test against vae-train keeps the default
}
DIGITS = load_digits()
X = pd.DataFrame(DIGITS.data, columns=DIGITS.feature_names)


@pytest.fixture(scope="module")
def fitted() -> VAE:
    return VAE(**FAST).fit(X, y=(DIGITS.target == 0).astype(int))


async def test_the_estimator_its_saved_bundle_and_the_service_agree(fitted: VAE, tmp_path: Path) -> None:
    rows = X.iloc[:40]
    folder = fitted.save(tmp_path, "digits")
    assert folder == tmp_path / "digits" / "1"
    loaded = load(folder, device="cpu")
    async with serving(tmp_path) as client:
        served = (await client.post("/v1/models/digits/score", json={"inputs": rows.to_numpy().tolist()})).json()
    scores = fitted.decision_function(rows)
    np.testing.assert_allclose(scores, loaded.decision_function(rows), rtol=1e-6)
    np.testing.assert_allclose(scores, served["anomaly_score"], rtol=1e-6)
    assert fitted.predict(rows).tolist() == [int(f) for f in served["is_anomaly"]]
    assert fitted.save(tmp_path, "digits") == tmp_path / "digits" / "2"  # the next version


def test_fit_gives_a_detector_with_the_documented_conventions(fitted: VAE) -> None:
    scores = fitted.decision_function(X)
    assert scores.shape == (len(X),) and np.all(np.isfinite(scores))
    np.testing.assert_allclose(fitted.score_samples(X), -scores)  # higher = more normal
    flagged = fitted.predict(X)
    assert set(np.unique(flagged)) <= {0, 1} and flagged.mean() < 0.1  # a 0.99 threshold flags few training rows
    assert fitted.transform(X.iloc[:5]).shape == (5, 3) and fitted.sample(4, seed=0).shape == (4, 64)
    assert list(fitted.feature_names_in_) == list(DIGITS.feature_names) and fitted.n_features_in_ == 64
    assert fitted.manifest_.diagnostics["validation"].labelled is not None  # y gave the labelled metrics
    assert len(fitted.history_) == FAST["epochs"]


def test_a_numpy_array_trains_too_and_the_same_seed_gives_the_same_model() -> None:
    a = VAE(**FAST).fit(DIGITS.data)
    b = VAE(**FAST).fit(DIGITS.data)
    np.testing.assert_array_equal(a.decision_function(DIGITS.data[:20]), b.decision_function(DIGITS.data[:20]))


def test_the_estimator_trains_what_vae_train_trains_prior_and_refined_encoder_included(tmp_path: Path) -> None:
    rows = DIGITS.data.astype(np.float32)
    np.save(tmp_path / "digits.npy", rows)
    model = ModelConfig(hidden=FAST["hidden"], latent_dim=FAST["latent_dim"])
    train = TrainConfig(epochs=4, warmup_epochs=1, eval_samples=8, score_samples=8, refine_steps=FAST["refine_steps"])
    data = DataConfig(source=str(tmp_path / "digits.npy"))
    cli = run(RunConfig(data=data, model=model, train=train, name="cli", repository=tmp_path))
    estimator = VAE(**{**FAST, "decorrelate": "auto"}).fit(rows)  # the defaults of both
    ours, theirs = (
        Manifest.model_validate_json((b / "manifest.json").read_text()) for b in (estimator.bundle_dir_, cli.bundle_dir)
    )
    assert ours.prior is not None and ours.prior == theirs.prior  # the mixture prior is fitted (it was not, before)
    a, b = (load_model(folder / "checkpoint.pt").state_dict() for folder in (estimator.bundle_dir_, cli.bundle_dir))
    for key, value in a.items():
        assert torch.equal(value, b[key]), key  # the encoder refined alike
    np.testing.assert_array_equal(
        estimator.decision_function(rows[:50]), open_bundle(cli.bundle_dir).score(rows[:50])["anomaly_score"]
    )


def test_the_parameters_are_the_training_configurations_fields_and_defaults() -> None:
    params = VAE().get_params()
    assert params["epochs"] == TrainConfig().epochs and params["latent_dim"] == ModelConfig(input_dim=1).latent_dim
    with pytest.raises(TypeError, match="unknown parameters \\['epoch'\\]"):
        VAE(epoch=3)


def test_bad_training_options_get_the_command_lines_errors() -> None:
    with pytest.raises(ConfigError, match=r"--val-fraction must be in \(0, 0.5\), got 0.9"):
        VAE(**{**FAST, "val_fraction": 0.9}).fit(DIGITS.data)


def test_a_frame_with_a_repeated_column_is_refused_at_fit_as_at_scoring() -> None:
    frame = pd.DataFrame(DIGITS.data[:50, :3], columns=["a", "b", "a"])
    with pytest.raises(ValueError, match=r"X has repeated columns \['a'\]; give each feature once"):
        VAE(**FAST).fit(frame)


class _Columnar:
    """A frame as polars and the like are: columns and to_numpy, no pandas indexers."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame, self.columns = frame, list(frame.columns)

    def to_numpy(self) -> np.ndarray:
        return self._frame.to_numpy()

    def __len__(self) -> int:
        return len(self._frame)


def test_bad_rows_labels_and_widths_are_errors_that_name_them_before_training() -> None:
    frame = pd.DataFrame(DIGITS.data[:60, :3], columns=["a", "b", "c"])
    missing = frame.astype("Float64")
    missing.iloc[2, 1] = pd.NA  # a nullable column's missing value: NaN, named by its row and column
    for rows, y, message in [
        (missing, None, r"the first is in row 2 \(0-based, after any header\), 'b'"),
        (frame.assign(d=pd.Timestamp("2026-12-07")), None, r"X's column 'd' holds dates or durations"),
        (pa.Table.from_pandas(frame.assign(d=pd.Timestamp("2026-12-07"))), None, r"X's column 'd' holds dates"),
        (frame.assign(d="x"), None, r"X's column 'd': the frame's columns must hold numbers"),
        (frame, np.zeros(10), r"y must hold one label per row of X \(60\), got shape \[10\]"),
    ]:
        with pytest.raises((ValueError, DataError), match=message):
            VAE(**FAST).fit(rows, y=y)
    one = VAE(**{**FAST, "hidden": 16}).fit(frame)  # one width, as --hidden 16 reads; or its text
    assert list(VAE(**FAST).fit(_Columnar(frame)).feature_names_in_) == ["a", "b", "c"]  # polars' kind of frame
    assert one.manifest_.training is not None and VAE(**{**FAST, "hidden": "16,8"}).fit(frame).local_ is not None


def test_a_fitted_detector_and_a_loaded_bundle_pickle_and_copy_with_their_model(fitted: VAE, tmp_path: Path) -> None:
    rows = X.iloc[:20]
    again = pickle.loads(pickle.dumps(fitted))  # joblib.dump, a task sent to Spark, Ray or Dask workers
    np.testing.assert_array_equal(again.decision_function(rows), fitted.decision_function(rows))
    assert again.bundle_dir_ != fitted.bundle_dir_ and fitted.bundle_dir_.exists()  # the original keeps its own
    assert again.get_params() == fitted.get_params() and again.history_ == fitted.history_
    copied = copy.deepcopy(fitted)
    np.testing.assert_array_equal(copied.decision_function(rows), fitted.decision_function(rows))
    loaded = load(fitted.save(tmp_path, "m"), device="cpu")
    moved = pickle.loads(pickle.dumps(loaded))
    shutil.rmtree(tmp_path / "m")  # the unpickled model carries its bundle: the folder it came from may be gone
    np.testing.assert_array_equal(moved.decision_function(rows), fitted.decision_function(rows))
    assert sorted(p.name for p in moved.local_.bundle.path.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "manifest.json",
        "scorer.onnx",
    ]  # what scores; not the report or checkpoint
    with pytest.raises(pickle.PicklingError, match="cannot read manifest.json to pickle the model"):
        pickle.dumps(loaded)  # its folder is gone: said here, not when a remote worker opens it
    relative = load(Path(os.path.relpath(fitted.save(tmp_path, "r"))), device="cpu")
    here = Path.cwd()
    try:
        os.chdir(tmp_path)  # opened by a relative path, pickled from another folder
        np.testing.assert_array_equal(
            pickle.loads(pickle.dumps(relative)).decision_function(rows), fitted.decision_function(rows)
        )
    finally:
        os.chdir(here)


def test_an_unfitted_detector_says_so() -> None:
    with pytest.raises(NotFittedError):
        VAE().decision_function(DIGITS.data[:2])


@pytest.mark.parametrize(
    "check",
    [
        check_parameters_default_constructible,
        check_no_attributes_set_in_init,
        check_get_params_invariance,
        check_set_params,
        check_estimators_unfitted,
    ],
)
def test_scikit_learn_estimator_checks(check) -> None:  # type: ignore[no-untyped-def]
    check("VAE", VAE(**FAST))
