"""Shallow anomaly detectors and densities for benchmarks/quality.py, all on per-feature standardised rows.

Each `fit_*` takes the training rows and returns a scorer: rows (N, D) -> anomaly score (N,), higher = more
anomalous. `gaussian_log_density` is the Ledoit-Wolf Gaussian's log density in raw units; `dequantise` and
`bits_per_dim` turn a continuous density of quantised data into the discrete bits/dim; `auroc` scores detectors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import multivariate_normal, rankdata
from sklearn.covariance import LedoitWolf
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

Scorer = Callable[[np.ndarray], np.ndarray]
KNN_NEIGHBOURS = 5
FOREST_TREES = 200
BIN = 1 / 16  # digits are k/16


def _scaler(train: np.ndarray) -> StandardScaler:
    # zero-variance features keep scale 1 (sklearn's convention), so they stay finite
    return StandardScaler().fit(np.asarray(train, dtype=np.float64))


def fit_gaussian(train: np.ndarray) -> Scorer:
    """Full-covariance Gaussian with Ledoit-Wolf shrinkage; score = Mahalanobis distance."""
    scaler = _scaler(train)
    lw = LedoitWolf().fit(scaler.transform(train))
    return lambda x: np.sqrt(lw.mahalanobis(scaler.transform(np.asarray(x, dtype=np.float64))))


def fit_knn(train: np.ndarray) -> Scorer:
    """Mean Euclidean distance to the KNN_NEIGHBOURS nearest training rows."""
    scaler = _scaler(train)
    nn = NearestNeighbors(n_neighbors=KNN_NEIGHBOURS).fit(scaler.transform(train))
    return lambda x: nn.kneighbors(scaler.transform(np.asarray(x, dtype=np.float64)))[0].mean(1)


def fit_iforest(train: np.ndarray, seed: int) -> Scorer:
    """Isolation Forest; score = -score_samples (higher = shorter paths = more anomalous)."""
    scaler = _scaler(train)
    forest = IsolationForest(n_estimators=FOREST_TREES, random_state=seed).fit(scaler.transform(train))
    return lambda x: -forest.score_samples(scaler.transform(np.asarray(x, dtype=np.float64)))


def gaussian_log_density(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf Gaussian fitted on standardised train rows; log density of test rows in raw units (nats)."""
    scaler = _scaler(train)
    lw = LedoitWolf().fit(scaler.transform(train))
    z = scaler.transform(np.asarray(test, dtype=np.float64))
    log_jacobian = -float(np.log(scaler.scale_).sum())
    return np.asarray(multivariate_normal(lw.location_, lw.covariance_).logpdf(z), dtype=np.float64) + log_jacobian


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """AUROC of anomalies against normals; a non-finite score (NaN, inf) counts as +inf, the most anomalous."""
    scores = np.concatenate([normal, anomalous]).astype(np.float64)
    scores[~np.isfinite(scores)] = np.inf
    labels = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalous))])
    return float(roc_auc_score(labels, rankdata(scores)))  # ranks: ties among infs are shared, all finite


def dequantise(x: np.ndarray, rng: np.random.Generator, width: float = BIN) -> np.ndarray:
    """Uniform noise inside each value's bin [x, x + width): y = x + u * width, u ~ U[0, 1).

    The product (training/features.py) and the reference VAE train on this bin convention, so it is the one their
    densities are scored on; a centred bin, x + (u - 1/2) width, would score them on a shifted density."""
    return (x + rng.random(x.shape) * width).astype(np.float32)


def bits_per_dim(log_likelihood: np.ndarray, dim: int = 64, width: float = BIN) -> float:
    """Discrete bits/dim from the mean continuous log density of dequantised rows (lower is better)."""
    return -(float(np.mean(log_likelihood)) + dim * np.log(width)) / (dim * np.log(2))
