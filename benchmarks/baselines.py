"""The baselines of benchmarks/quality.py: shallow detectors and densities, a Gaussian mixture and a plain deep
autoencoder, each on the rows as they are (`standardise=False`) or per-feature standardised (True).

Standardising hands a near-constant feature (a digits border pixel) a weight as large as any other's, which helps
a distance on mixed units (breast cancer) and hurts one on pixels; a user picks whichever works, so quality.py runs
both and its comparison takes, per task, the better of the two on the test rows themselves (a choice no user could
make that well: it flatters the baselines). Each `fit_*` takes the training rows and returns a scorer: rows (N, D)
-> anomaly score (N,), higher = more anomalous. `gaussian_log_density` is the Ledoit-Wolf Gaussian's log density
in raw units; `dequantise` and `bits_per_dim` turn a continuous density of quantised data into the discrete
bits/dim; `auroc` scores detectors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import multivariate_normal, rankdata
from sklearn.covariance import LedoitWolf
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

Scorer = Callable[[np.ndarray], np.ndarray]
KNN_NEIGHBOURS = 5
FOREST_TREES = 200
BIN = 1 / 16  # digits are k/16


class _Identity:
    """The rows as they are (StandardScaler's interface)."""

    def __init__(self, dim: int) -> None:
        self.scale_ = np.ones(dim)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)


def _scaler(train: np.ndarray, standardise: bool = True) -> StandardScaler | _Identity:
    # zero-variance features keep scale 1 (sklearn's convention), so they stay finite
    if not standardise:
        return _Identity(train.shape[1])
    return StandardScaler().fit(np.asarray(train, dtype=np.float64))


def fit_gaussian(train: np.ndarray, standardise: bool = True) -> Scorer:
    """Full-covariance Gaussian with Ledoit-Wolf shrinkage; score = Mahalanobis distance."""
    scaler = _scaler(train, standardise)
    lw = LedoitWolf().fit(scaler.transform(train))
    return lambda x: np.sqrt(lw.mahalanobis(scaler.transform(np.asarray(x, dtype=np.float64))))


def fit_knn(train: np.ndarray, standardise: bool = True) -> Scorer:
    """Mean Euclidean distance to the KNN_NEIGHBOURS nearest training rows."""
    scaler = _scaler(train, standardise)
    nn_ = NearestNeighbors(n_neighbors=KNN_NEIGHBOURS).fit(scaler.transform(train))
    return lambda x: nn_.kneighbors(scaler.transform(np.asarray(x, dtype=np.float64)))[0].mean(1)


def fit_iforest(train: np.ndarray, seed: int, standardise: bool = True) -> Scorer:
    """Isolation Forest; score = -score_samples (higher = shorter paths = more anomalous)."""
    scaler = _scaler(train, standardise)
    forest = IsolationForest(n_estimators=FOREST_TREES, random_state=seed).fit(scaler.transform(train))
    return lambda x: -forest.score_samples(scaler.transform(np.asarray(x, dtype=np.float64)))


GMM_COMPONENTS = (1, 2, 4, 8, 16)


def fit_gmm(train: np.ndarray, seed: int, standardise: bool = True) -> Scorer:
    """Full-covariance Gaussian mixture, its number of components chosen by BIC on the training rows (of
    GMM_COMPONENTS, k-means initialised); score = -log density. A ridge of 1e-3 of the mean variance
    on the covariances keeps near-constant pixels from a singular fit."""
    scaler = _scaler(train, standardise)
    z = scaler.transform(train)
    ridge = 1e-3 * float(z.var(0).mean())
    best, best_bic = None, np.inf
    for k in GMM_COMPONENTS:
        if k * (z.shape[1] + 1) >= len(z):  # more parameters per component than rows can pin down
            break
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=ridge, random_state=seed).fit(z)
        bic = gmm.bic(z)
        if bic < best_bic:
            best, best_bic = gmm, bic
    assert best is not None
    model = best
    return lambda x: -model.score_samples(scaler.transform(np.asarray(x, dtype=np.float64)))


def fit_autoencoder(train: np.ndarray, seed: int, standardise: bool = True, val_fraction: float = 0.15) -> Scorer:
    """A plain deep autoencoder (D -> 128 -> 64 -> 16 -> 64 -> 128 -> D, ReLU; PyOD's AutoEncoder in spirit):
    mean squared error, Adam 1e-3, batches of 128, early stopping on a validation share of the training rows
    (patience 10, at most 200 epochs, best weights kept); score = the row's mean squared reconstruction error."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    scaler = _scaler(train, standardise)
    z = torch.tensor(scaler.transform(train), dtype=torch.float32)
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(val_fraction * len(z))))
    val, fit_rows = z[perm[:n_val]], z[perm[n_val:]]
    d = z.shape[1]
    net = nn.Sequential(
        nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 16),
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, d),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    best, best_state, waited = np.inf, None, 0
    for _ in range(200):
        net.train()
        for idx in torch.randperm(len(fit_rows)).split(128):
            opt.zero_grad()
            loss = ((net(fit_rows[idx]) - fit_rows[idx]) ** 2).mean()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = float(((net(val) - val) ** 2).mean())
        if v < best - 1e-6:
            best, best_state, waited = v, {k: t.clone() for k, t in net.state_dict().items()}, 0
        else:
            waited += 1
            if waited >= 10:
                break
    assert best_state is not None
    net.load_state_dict(best_state)
    net.eval()

    def score(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.tensor(scaler.transform(np.asarray(x, dtype=np.float64)), dtype=torch.float32)
            return ((net(t) - t) ** 2).mean(1).double().numpy()

    return score


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
