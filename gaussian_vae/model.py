"""BundleModel: a trained bundle in the scikit-learn / pyod idiom, without torch (onnxruntime only).

    model = load("models/digits/3")
    model.decision_function(X)   # anomaly score, higher = more anomalous (-ELBO_K, the API's anomaly_score)
    model.predict(X)             # 1 = anomaly (score above the bundle's threshold), 0 = normal
    model.transform(X)           # embeddings: the posterior mean (n, d)

Every number comes from the bundle runtime (runtime/local.py), the same plans the service runs, so a row scored
here, by `vae-score` or over HTTP with the same seed gets the same score. X is a numpy array (n, D) or a pandas
DataFrame whose columns are the model's feature names, in any order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from contract import Manifest
from contract.face import Face
from contract.frames import frame_rows, is_frame
from contract.operations import OPERATIONS
from runtime import InputError, Limits, LocalModel, open_bundle
from runtime.bundle import Device
from runtime.local import LOCAL_LIMITS
from runtime.rows import non_finite


def load(path: str | Path, device: Device = "auto", limits: Limits = LOCAL_LIMITS) -> BundleModel:
    """Open a bundle folder written by vae-train, VAE.save or the service's repository (<repo>/<name>/<version>)."""
    return BundleModel(open_bundle(path, device, limits))


class BundleModel(Face[dict[str, np.ndarray], Any]):
    """Scoring, embedding and generation with a trained bundle; the methods of a fitted VAE, without training."""

    def __init__(self, local: LocalModel) -> None:
        self.local_ = local

    # what scikit-learn and pyod users look for on a fitted detector
    def _local(self) -> LocalModel:
        return self.local_

    @property
    def manifest_(self) -> Manifest:
        return self._local().manifest

    @property
    def threshold_(self) -> float:
        """The anomaly score above which predict says 1: the conformal threshold of the validation scores."""
        return self.manifest_.anomaly.threshold

    @property
    def n_features_in_(self) -> int:
        return self.manifest_.input_dim

    @property
    def feature_names_in_(self) -> np.ndarray | None:
        names = self.manifest_.feature_names
        return np.asarray(names, dtype=object) if names is not None else None

    # encode, decode, sample and score: contract/face.py, with the API's parameters
    def _call(self, op: str, rows: Any, params: dict[str, Any], model: str | None) -> dict[str, np.ndarray]:
        x = self._rows(rows) if OPERATIONS[op].width == "input_dim" else rows  # latents are taken as they are
        return self._local()._call(op, x, params, model)

    def _sample(self, params: dict[str, Any], model: str | None) -> Any:
        """The generated rows (n, D); with return_latents, {"samples": (n, D), "latents": (n, d)}."""
        columns = self._local()._sample(params, model)
        if params.get("return_latents"):
            return {k: np.asarray(v) for k, v in columns.items()}
        return np.asarray(columns["samples"])

    def decision_function(self, X: Any, **options: Any) -> np.ndarray:  # noqa: N803
        """Anomaly score per row (n,): -ELBO_K in nats; higher = more anomalous (pyod's convention). Options are
        score's."""
        return np.asarray(self.score(X, **options)["anomaly_score"], dtype=np.float64)

    def score_samples(self, X: Any, **options: Any) -> np.ndarray:  # noqa: N803
        """ELBO_K per row (n,); higher = more normal (scikit-learn's convention for score_samples)."""
        return -self.decision_function(X, **options)

    def predict(self, X: Any, **options: Any) -> np.ndarray:  # noqa: N803
        """1 where the anomaly score is above the threshold (the bundle's, or the conformal one at
        threshold_quantile), else 0."""
        return np.asarray(self.score(X, **options)["is_anomaly"], dtype=np.int64)

    def predict_proba_anomaly(self, X: Any, **options: Any) -> np.ndarray:  # noqa: N803
        """1 - conformal p-value per row: how far into the validation scores a row's score lies, in [0, 1)."""
        return 1.0 - np.asarray(self.score(X, **options)["p_value"], dtype=np.float64)

    def transform(self, X: Any) -> np.ndarray:  # noqa: N803
        """Embeddings: the posterior mean E[z | x] per row, (n, d)."""
        return np.asarray(self.encode(X)["mean"])

    def feature_contributions(self, X: Any, **options: Any) -> dict[str, np.ndarray]:  # noqa: N803
        """Per feature, E_q[-log p(x_j | z)] for every row: which features made a row unlikely."""
        nll = np.asarray(self.score(X, **{**options, "explain": True})["feature_nll"])
        names = self.manifest_.feature_names or [f"feature_{j}" for j in range(self.n_features_in_)]
        return {name: nll[:, j] for j, name in enumerate(names)}

    def _rows(self, X: Any) -> np.ndarray:  # noqa: N803
        """numpy rows (n, D); a DataFrame's columns matched to the model's features by name (contract/frames.py)."""
        if not is_frame(X):
            return np.asarray(X)
        model = f"model {self._local().operations.label}"
        rows, names = frame_rows(X, self.manifest_.feature_names, self.n_features_in_, model)
        with np.errstate(over="ignore"):  # beyond float32: not finite either
            found = non_finite(rows.astype(np.float32))
        if found is not None:  # named as the service names it, and by the frame's column: its position is the model's
            row, col, count = found
            raise InputError(
                f"inputs[{row}][{col}] (column {names[col]!r}) is not a finite float32 number, a missing value "
                f"included ({count} such values)"
            )
        return rows
