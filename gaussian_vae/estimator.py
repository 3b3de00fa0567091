"""VAE: the Gaussian VAE as a scikit-learn / pyod estimator (fit, then score, flag, embed and generate).

    detector = VAE(epochs=200, latent_dim=8).fit(X_train)
    detector.decision_function(X_test)      # anomaly scores, higher = more anomalous
    detector.predict(X_test)                # 1 = above the conformal threshold of the validation scores
    detector.save("models", "fraud")        # models/fraud/<next version>/, what vae-serve serves

fit runs vae-train's own stages (training/stages.py: the same checks, preprocessing, early stopping and
evaluation; then export and ONNX parity) on the rows given, into a private bundle; every method after fit runs
that bundle through the runtime, so the detector, the saved bundle loaded with `load`, and the service give the
same numbers for the same rows.
The parameters are the training configuration's fields with its defaults (training/config.py), one source.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from contract import MANIFEST_FILE, Manifest
from contract.frames import FrameError, dated_columns, frame_rows, is_frame
from gaussian_vae.model import BundleModel
from runtime import LocalModel, open_bundle
from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vae_tables.sources import unnamed_columns

# name -> default, for every estimator parameter: the model's and the training's fields, and the data split's.
# One rename: TrainConfig.score_samples (K of the anomaly reference) would hide scikit-learn's score_samples method.
_SPLIT = ("val_fraction", "test_fraction", "detect_lattice", "dequantize", "decorrelate")
RENAMED = {"score_samples": "reference_samples"}
PARAMETERS: dict[str, Any] = {
    **{f.name: f.default for f in fields(ModelConfig) if f.name != "input_dim"},
    **{RENAMED.get(f.name, f.name): f.default for f in fields(TrainConfig)},
    **{f.name: f.default for f in fields(DataConfig) if f.name in _SPLIT},
}
MODEL = {f.name for f in fields(ModelConfig)} - {"input_dim"}
_TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


class VAE(BundleModel, OutlierMixin, BaseEstimator):  # type: ignore[misc]
    def __init__(self, **params: Any) -> None:  # the real signature is set below, from PARAMETERS
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise TypeError(f"VAE got unknown parameters {unknown}; it takes {sorted(PARAMETERS)}")
        for name, default in PARAMETERS.items():
            setattr(self, name, params.get(name, default))

    def fit(self, X: Any, y: Any = None) -> VAE:  # noqa: N803 (scikit-learn's X)
        """Train on the rows of X (numpy (n, D) or a DataFrame; its column names become the feature names). y, if
        given, is a 0/1 anomaly label per row, used only for the labelled metrics (AUROC, ...) of the evaluation."""
        from training.data import Table
        from training.pipeline import run_loaded
        from training.stages import load_from_table

        rows, names = _table(X)
        params = self.get_params()
        self._workdir = tempfile.TemporaryDirectory(prefix="gaussian-vae-")
        config = RunConfig(
            data=DataConfig(source="the rows given to fit", seed=params["seed"], **{k: params[k] for k in _SPLIT}),
            model=ModelConfig(**{k: _hidden(v) if k == "hidden" else v for k, v in params.items() if k in MODEL}),
            train=TrainConfig(**{k: params[RENAMED.get(k, k)] for k in _TRAIN_FIELDS}),
            name="model",
            repository=Path(self._workdir.name),
            checkpoint_every=0,  # one process, start to end: nothing to resume
        )
        labels = np.asarray(y) if y is not None else None
        if labels is not None and (labels.ndim != 1 or len(labels) != len(rows)):
            raise ValueError(f"y must hold one label per row of X ({len(rows)}), got shape {list(labels.shape)}")
        data = load_from_table(config, Table(rows.astype(np.float32), labels, names))
        result = run_loaded(config, data)  # vae-train's stages, into the private bundle
        self.bundle_dir_ = result.bundle_dir
        self.local_ = open_bundle(result.bundle_dir, "cpu" if config.train.device == "cpu" else "auto")
        self.history_ = [asdict(epoch) for epoch in result.fit.history]  # per-epoch losses, for a learning curve
        return self

    def _local(self) -> LocalModel:
        check_is_fitted(self, "local_")
        return self.local_

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with its bundle inside local_ (runtime/local.py): the private training folder stays behind."""
        state: dict[str, Any] = dict(super().__getstate__())  # a copy: it may be __dict__ itself
        state.pop("_workdir", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "local_" in state:
            self.bundle_dir_ = self.local_.bundle.path  # the unpickled copy's folder

    def save(self, repository: str | Path, name: str) -> Path:
        """Publish the fitted bundle as <repository>/<name>/<next version> (atomically); returns its folder."""
        from training.export.bundle import publish_bundle

        source = self._local().bundle.path

        def build(tmp: Path, version: int) -> Manifest:
            for item in source.iterdir():
                if item.name != MANIFEST_FILE:
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            manifest = Manifest.model_validate_json((source / MANIFEST_FILE).read_text())
            return manifest.model_copy(update={"name": name, "version": version})

        folder, _ = publish_bundle(Path(repository), name, build)
        return Path(folder)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False  # fixed seeds: the same data and parameters give the same model
        return tags


VAE.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in PARAMETERS.items()]
)


def _table(X: Any) -> tuple[np.ndarray, list[str]]:  # noqa: N803
    """Rows as float64 (n, D) and their feature names (a DataFrame's columns, else column_0, column_1, ...)."""
    if is_frame(X):  # pandas, polars, pyarrow (contract/frames.py)
        names = [str(c) for c in (X.column_names if hasattr(X, "column_names") else X.columns)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:  # the frames it would score are refused so (contract/frames.py): refused at fit as well
            raise ValueError(f"X has repeated columns {repeated}; give each feature once")
        dated = dated_columns(X, names)  # training reads them as numbers: refused, by name
        if dated:
            raise ValueError(
                f"X's column {dated[0]!r} holds dates or durations, not numbers: convert it, or leave it out"
            )
        try:  # the whole frame at once (a missing value: NaN, refused by its row)
            rows = frame_rows(X, None, len(names), "fit")[0]
        except FrameError:  # then the column that holds something else, by name
            for j, name in enumerate(names):
                try:
                    part = X.select([j]) if hasattr(X, "column_names") else X[[X.columns[j]]]
                    frame_rows(part, None, 1, "fit")
                except FrameError as exc:
                    raise ValueError(f"X's column {name!r}: {exc}") from None
                except (TypeError, KeyError):  # a frame that cannot give one column: the whole frame's error
                    break
            raise
    else:
        rows = np.asarray(X, dtype=np.float64)
        if rows.ndim != 2:
            raise ValueError(f"X must be 2-D (rows, features), got shape {list(rows.shape)}")
        names = unnamed_columns(rows.shape[1])
    return rows, names


def _hidden(value: Any) -> tuple[int, ...]:
    """hidden as a tuple of widths: also one width (16) or vae-train's text ("256,256")."""
    if isinstance(value, int | np.integer):
        return (int(value),)
    if isinstance(value, str):
        try:
            return tuple(int(part) for part in value.split(","))
        except ValueError:
            raise ValueError(f"hidden must be widths such as (256, 256) or '256,256', not {value!r}") from None
    return tuple(value)
