"""What each column is and how it is scaled: constant, lattice (quantised) or continuous (DESIGN 2, preprocessing).

Every feature is scaled by its own statistics; no floor is shared across features, so a small-scale feature keeps
its resolution. Three kinds, found on the training rows:

- constant: one value c on every training row. It carries no information, so the networks never see it; the
  likelihood models it as a fixed Gaussian (see `constant_scale`), which never inflates the likelihood: on the
  table's lattice (step h) the moments of its dequantised bin, N(c + h/2, h²/12); otherwise a point mass scored as
  -(x - c)² / (2 s²), exactly 0 nats at c.
- lattice: every value is a + k h for a step h (integers, pixels in k/16). A continuous density on such values
  spikes without bound, so by default the feature is trained with uniform dequantisation inside its bin
  [x, x + h): x + h u, u ~ U[0, 1), the convention of Theis et al. (2016) for discrete data. Its mean and std are
  those of the dequantised values (+ h/2, + h²/12) and its decoder variance is floored at h²/12 in raw units.
- continuous: anything else.

Decorrelation (optional, `--decorrelate`): the active features, standardised, are further mapped to
y = L⁻¹ x_std with L Lᵀ = C the training rows' correlation matrix (lattice features with their bin's variance, so C
has unit diagonal). y_j is feature j less what the features before it predict linearly, over its residual scale;
a table of near-linear relations, which networks on x_std learn badly, becomes one of nearly independent
components. The Jacobian -Σ_j log L_jj keeps every density in raw data space.

Detection runs on a seeded sample of at most DETECT_ROWS training rows (the same rows on every torchrun rank, so
every rank reaches the same verdict without a collective); the moments run over all training rows, in chunks.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from training.data import chunk_rows
from training.distributed import SINGLE, Dist

Kind = Literal["constant", "lattice", "continuous"]
DETECT_ROWS = 20_000  # training rows sampled to detect lattices and near-constant columns
MAX_LEVELS = 1 << 20  # a lattice finer than this many steps across the range is continuous for our purposes
COMMON_STEP_RATIO = 16  # a step that is at most this multiple of the table's common step takes the common step
NEAR_CONSTANT_SHARE = 0.99  # a column whose most frequent value holds this share of rows is reported
POINT_MASS_SCALE = 1e-2  # a constant without a lattice: s = POINT_MASS_SCALE * max(|c|, 1)
F32_EPS = float(np.finfo(np.float32).eps)
MAX_DECORRELATED = 1024  # more active features than this are not decorrelated: the factor is D² numbers
CORRELATION_RIDGE = 1e-6  # C + ridge I: a correlation of exactly ±1 (a duplicated column) still has a factor
# the decorrelated encoder's input is clamped at this multiple of √n (n training rows): no training row's value of a
# unit-variance component lies beyond √(n - 1) (Samuelson's inequality)
INPUT_BOUND_MARGIN = 1.5
EXACT_INTEGERS = float(1 << 24)  # float32 holds every whole number up to this exactly


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of some rows: (D,) float64 each."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    def merge(self, other: Moments) -> Moments:
        # Chan, Golub and LeVeque's pairwise update: stable however unequal the parts and however far the mean
        # lies from zero, unlike sums of squares.
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.n / n, self.m2 + other.m2 + delta**2 * self.n * other.n / n)

    def pack(self) -> np.ndarray:
        return np.concatenate([[float(self.n)], self.mean, self.m2])

    @classmethod
    def unpack(cls, packed: np.ndarray) -> Moments:
        d = (packed.size - 1) // 2
        return cls(int(packed[0]), packed[1 : 1 + d], packed[1 + d :])


def moments(x: np.ndarray, rows: np.ndarray) -> Moments:
    """Moments of x[rows] in one pass of chunks (rows sorted, so a memory-mapped file is read in order)."""
    total = Moments(0, np.zeros(x.shape[1]), np.zeros(x.shape[1]))
    step = chunk_rows(x.shape[1])
    for start in range(0, rows.size, step):
        chunk = np.asarray(x[rows[start : start + step]], dtype=np.float64)
        c_mean = chunk.mean(0)
        total = total.merge(Moments(chunk.shape[0], c_mean, ((chunk - c_mean) ** 2).sum(0)))
    return total


def all_moments(x: np.ndarray, rows: np.ndarray, ranks: Dist = SINGLE) -> Moments:
    # Each rank takes one streaming pass over its block of the (sorted) rows; the ranks' moments are gathered and
    # merged in rank order, so every rank computes the same numbers.
    rows = np.sort(rows)
    local = moments(x, rows[ranks.share(rows.size)])
    return functools.reduce(Moments.merge, (Moments.unpack(p) for p in ranks.gather(local.pack())))


def covariance(x: np.ndarray, rows: np.ndarray, columns: np.ndarray, ranks: Dist = SINGLE) -> np.ndarray:
    """Covariance matrix of x[rows][:, columns] (divided by n), one streaming pass per rank, ranks merged in rank
    order: (C, C) float64. Chan et al.'s pairwise update with outer products in place of squares."""
    rows, c = np.sort(rows), columns.size
    n, mean, m2 = 0, np.zeros(c), np.zeros((c, c))
    step = chunk_rows(x.shape[1])
    mine = rows[ranks.share(rows.size)]
    for start in range(0, mine.size, step):
        chunk = np.asarray(x[mine[start : start + step]], dtype=np.float64)[:, columns]
        n, mean, m2 = _merge_cross(n, mean, m2, chunk.shape[0], chunk.mean(0), _centred_gram(chunk))
    total = (0, np.zeros(c), np.zeros((c, c)))
    for packed in ranks.gather(np.concatenate([[float(n)], mean, m2.ravel()])):
        total = _merge_cross(*total, int(packed[0]), packed[1 : 1 + c], packed[1 + c :].reshape(c, c))
    return total[2] / max(total[0], 1)


def _centred_gram(chunk: np.ndarray) -> np.ndarray:
    centred = chunk - chunk.mean(0)
    return centred.T @ centred


def _merge_cross(
    n_a: int, mean_a: np.ndarray, m2_a: np.ndarray, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    n, delta = n_a + n_b, mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + np.outer(delta, delta) * n_a * n_b / n


def correlation_factor(cov: np.ndarray, std: np.ndarray) -> np.ndarray:
    """L, lower triangular with L Lᵀ = C + ridge I, C = cov / (std stdᵀ) with its diagonal set to 1 (std holds a
    dequantised feature's bin variance, which adds to the diagonal alone): (C, C), (C,) -> (C, C) float64."""
    corr = cov / np.outer(std, std)
    np.fill_diagonal(corr, 1.0)
    ridge = CORRELATION_RIDGE
    while True:
        try:  # exact collinearity (a column copied, or the sum of others) leaves C singular: raise the ridge
            return np.linalg.cholesky(corr + ridge * np.eye(len(std)))
        except np.linalg.LinAlgError:
            ridge *= 10.0


@dataclass(frozen=True)
class FeatureScaling:
    """Per-feature kinds and scaling, (D,) each: x_std = (x - mean) / std, and, when `factor` is set, the active
    features' x_std further decorrelated to y = L⁻¹ x_std[active]. Baked into every graph."""

    kinds: list[Kind]
    mean: np.ndarray  # float64
    std: np.ndarray  # float64, > 0: the data's std (with the bin's variance when dequantised), or s for a constant
    step: np.ndarray  # float64 lattice step h in raw units, 0 for none
    dequantize: bool  # lattice features are trained on x + h u
    near_constant: list[int]  # non-constant columns whose most frequent value holds >= NEAR_CONSTANT_SHARE of rows
    factor: np.ndarray | None = None  # (D_active, D_active) float64 L of the active features' correlation, or None
    input_bound: float | None = None  # with a factor: the bound at which the encoder's input y is clamped

    def plain(self) -> FeatureScaling:
        """The same scaling without decorrelation."""
        return replace(self, factor=None, input_bound=None)

    @classmethod
    def identity(cls, d: int) -> FeatureScaling:
        """d continuous features, mean 0, std 1 (for tests and models built without data)."""
        return cls(["continuous"] * d, np.zeros(d), np.ones(d), np.zeros(d), False, [])

    @property
    def active(self) -> np.ndarray:
        """Indices of the features the networks model (every non-constant one)."""
        return np.array([j for j, k in enumerate(self.kinds) if k != "constant"], dtype=np.int64)

    @property
    def point_mass(self) -> np.ndarray:
        """(D,) bool: constants without a lattice, scored 0 nats at their value (no density normaliser)."""
        return np.array([k == "constant" and s == 0 for k, s in zip(self.kinds, self.step, strict=True)])

    def centre_shift(self) -> np.ndarray:
        """(D,) raw units: h/2 per feature on a lattice when trained dequantised, else 0. Training saw a value x as
        x + h u, u ~ U[0, 1), so a quantised value is scored and encoded at its bin's centre x + h/2 (at x, the bin's
        lower edge, a value one step above a training constant would score as the constant itself), and the
        decoder's mean is moved back by h/2 onto the data's values."""
        return self.step / 2.0 if self.dequantize else np.zeros_like(self.step)

    def bin_width(self) -> np.ndarray:
        # the bin width in standardised units, h / std, of every lattice feature and constant on a lattice: (D,)
        return self.step / self.std

    def decoder_log_var_floor(self, relative_floor: float) -> np.ndarray:
        # log of the decoder's variance floor per active feature, in the units the decoder models: max(relative_floor,
        # b_j) with b_j = (h² / 12) / std² the bin's variance in standardised units -- no lattice feature's variance
        # below its bin's. Decorrelated, component y_j carries the bins' noise L⁻¹ u, of variance
        # b_j = Σ_k (L⁻¹)_jk² b_k, whatever z: the floor is that.  -> (D_active,)
        bin_var = ((self.step**2 / 12.0) / self.std**2)[self.active]
        if self.factor is not None:
            inverse = np.linalg.inv(self.factor)
            bin_var = inverse**2 @ bin_var
        return np.log(np.maximum(relative_floor, bin_var))

    def discrete_features(self) -> bool:
        """Every feature sits on a lattice (or is a constant on one): the likelihood is a probability bound."""
        return all(k == "lattice" or (k == "constant" and s > 0) for k, s in zip(self.kinds, self.step, strict=True))

    def log_bin_volume(self) -> float:
        # Σ_j log h_j over lattice features (and constants on a lattice): turns a dequantised density into the
        # discrete bound log P(x) >= E_u log p(x + h u) + Σ_j log h_j  (Theis et al. 2016).
        return float(np.log(self.step[self.step > 0]).sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "kinds": list(self.kinds),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "step": self.step.tolist(),
            "dequantize": self.dequantize,
            "near_constant": list(self.near_constant),
            "factor": None if self.factor is None else self.factor.tolist(),
            "input_bound": self.input_bound,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureScaling:
        arrays = {k: np.asarray(raw[k], dtype=np.float64) for k in ("mean", "std", "step")}
        factor = raw.get("factor")  # absent from checkpoints written before decorrelation
        return cls(
            list(raw["kinds"]),
            **arrays,
            dequantize=bool(raw["dequantize"]),
            near_constant=raw["near_constant"],
            factor=None if factor is None else np.asarray(factor, dtype=np.float64),
            input_bound=raw.get("input_bound"),
        )

    def counts(self) -> dict[str, int]:
        return {k: sum(1 for v in self.kinds if v == k) for k in ("constant", "lattice", "continuous")}


def feature_scaling(
    x: np.ndarray,
    rows: np.ndarray,
    *,
    detect_lattice: bool = True,
    dequantize: bool = True,
    seed: int = 0,
    ranks: Dist = SINGLE,
    decorrelate: bool = False,
) -> FeatureScaling:
    """Kinds and scaling of every feature from the training rows x[rows]; with decorrelate, and at most
    MAX_DECORRELATED active features, also the factor of their correlation (a second pass over the rows)."""
    total = all_moments(x, rows, ranks)
    var = total.m2 / max(total.n, 1)
    sample_rows = rows if rows.size <= DETECT_ROWS else np.random.default_rng(seed).choice(rows, DETECT_ROWS, False)
    sample = np.asarray(x[np.sort(sample_rows)], dtype=np.float64)
    d = x.shape[1]
    # constant: identical within float32 storage precision on every training row
    constant = var <= (F32_EPS * np.maximum(np.abs(total.mean), 1e-30)) ** 2
    steps = np.array([0.0 if constant[j] or not detect_lattice else lattice_step(sample[:, j]) for j in range(d)])
    common = common_step(steps[steps > 0])
    if common > 0:
        # a pixel seen only at 0 and 2/16 is still on the table's 1/16 grid
        ratio = steps / common
        steps = np.where((steps > 0) & (ratio <= COMMON_STEP_RATIO + 0.5), common, steps)
    kinds: list[Kind] = []
    std = np.empty(d)
    for j in range(d):
        c = float(total.mean[j])
        if constant[j]:
            kinds.append("constant")
            on_grid = common > 0 and abs(c / common - round(c / common)) * common <= _tol(np.array([c, common]))
            steps[j] = common if on_grid else 0.0
            std[j] = constant_scale(c, steps[j])
        elif steps[j] > 0:
            kinds.append("lattice")
            std[j] = math.sqrt(var[j] + (steps[j] ** 2 / 12.0 if dequantize else 0.0))
        else:
            kinds.append("continuous")
            std[j] = math.sqrt(var[j])
    near = [j for j in range(d) if not constant[j] and _mode_share(sample[:, j]) >= NEAR_CONSTANT_SHARE]
    dequantized = dequantize and detect_lattice
    mean = total.mean + (steps / 2.0 if dequantized else 0.0)  # the mean of x + h u, u ~ U[0, 1)
    scaling = FeatureScaling(kinds, mean, std, steps, dequantized, near)
    active = scaling.active
    if not decorrelate or not 1 < active.size <= MAX_DECORRELATED:
        return scaling
    # x + h u has the covariance of x plus h²/12 on the diagonal, which std already holds
    factor = correlation_factor(covariance(x, rows, active, ranks), std[active])
    return replace(scaling, factor=factor, input_bound=INPUT_BOUND_MARGIN * math.sqrt(total.n))


def constant_scale(c: float, step: float) -> float:
    # s of a constant column's fixed N(c, s²): the bin's std h / √12 on a lattice, else a point mass' penalty scale
    return step / math.sqrt(12.0) if step > 0 else POINT_MASS_SCALE * max(abs(c), 1.0)


def _tol(values: np.ndarray) -> float:
    # How far float32 storage can move a value: a few ulps of the largest magnitude.
    return 8.0 * F32_EPS * max(float(np.abs(values).max()), 1e-30)


def _float_gcd(a: float, b: float, tol: float) -> float:
    # Euclid on reals. A remainder within the noise of 0 or of the divisor counts as 0; the noise of a remainder
    # grows with the quotient (a = q b + r carries q times b's error), so the allowance does too.
    a, b = max(a, b), min(a, b)
    while b > tol:
        r = math.fmod(a, b)
        allowed = tol * (1.0 + a / b)
        if r <= allowed or b - r <= allowed:
            r = 0.0
        a, b = b, r
    return a


def lattice_step(values: np.ndarray) -> float:
    """The step h > 0 of a lattice a + k h holding every value (within float32 precision), or 0.0 for none."""
    u = np.unique(values)
    if u.size < 2:
        return 0.0
    if np.abs(u).max() <= EXACT_INTEGERS and np.array_equal(u, np.round(u)):
        # whole numbers (counts, codes, ids, YYYYMM), exact in float32 up to 2^24: their gcd, exactly. The tolerance
        # below grows with the values' size, and past ~1e5 it took a step of 1 for float noise
        step = int(np.gcd.reduce((u[1:] - u[0]).astype(np.int64)))
        return float(step) if (u[-1] - u[0]) / step <= MAX_LEVELS else 0.0
    tol = _tol(u)
    gaps = np.unique(np.diff(u))
    gaps = gaps[:1000]  # the smallest distinct gaps decide; the least-squares pass below checks every level
    h = float(gaps[0])
    for gap in gaps[1:]:
        h = _float_gcd(h, float(gap), tol)
        if h < 10.0 * tol:
            return 0.0  # refined down to the storage precision: continuous
    if (u[-1] - u[0]) / h > MAX_LEVELS:
        return 0.0
    # Least-squares step through the levels, over a span growing 16-fold per pass: each pass makes h accurate
    # enough that counting steps over the next span cannot slip by one.
    span, limit = u - u[0], 64.0 * h
    while True:
        near = span[: max(2, int(np.searchsorted(span, limit, side="right")))]
        k = np.round(near / h)
        h = float((near * k).sum() / (k * k).sum())
        if limit >= span[-1]:
            break
        limit *= 16.0
    k = np.round(span / h)
    return h if np.abs(span - k * h).max() <= 2.0 * tol else 0.0


def common_step(steps: np.ndarray) -> float:
    """The finest step every given step is a multiple of (0.0 when there are none)."""
    if steps.size == 0:
        return 0.0
    tol = 1e-4 * float(steps.min())
    common = functools.reduce(lambda a, b: _float_gcd(a, b, tol), steps.tolist())
    # a common step far below the finest feature's is float noise, not a grid the table shares
    return common if common * COMMON_STEP_RATIO >= float(steps.min()) * (1 - 1e-6) else 0.0


def _mode_share(column: np.ndarray) -> float:
    _, counts = np.unique(column, return_counts=True)
    return float(counts.max() / column.size)
