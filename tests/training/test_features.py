"""Per-feature scaling: each feature by its own statistics, constants and lattices found and handled explicitly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training.config import ModelConfig
from training.data import CHUNK_ROWS, load_table
from training.distributed import Dist
from training.features import (
    POINT_MASS_SCALE,
    FeatureScaling,
    Moments,
    all_moments,
    feature_scaling,
    lattice_step,
    moments,
)
from training.losses import score_terms
from training.model import GaussianVAE


def _scaling(x: np.ndarray, **options: bool) -> FeatureScaling:
    return feature_scaling(x.astype(np.float32), np.arange(len(x)), **options)


def test_digits_are_sixteenths_with_three_constant_pixels_on_the_same_grid() -> None:
    x = load_table("builtin:digits").x
    s = _scaling(x)
    assert s.counts() == {"constant": 3, "lattice": 61, "continuous": 0}
    assert [j for j, k in enumerate(s.kinds) if k == "constant"] == [0, 32, 39]
    np.testing.assert_allclose(s.step, 1 / 16)  # every pixel, even one seen only at a few grey levels
    assert s.discrete_features() and s.log_bin_volume() == pytest.approx(64 * math.log(1 / 16))
    assert s.near_constant  # pixels at the border are almost always 0


@settings(deadline=None, max_examples=40, derandomize=True)
@given(
    step=st.sampled_from([1.0, 0.5, 1 / 16, 0.01, 3.0, 250.0]),
    offset=st.floats(-10, 10, allow_nan=False),
    levels=st.lists(st.integers(-40, 40), min_size=3, max_size=60, unique=True),
)
def test_values_on_a_lattice_give_its_step(step: float, offset: float, levels: list[int]) -> None:
    values = (offset + step * np.array(levels, dtype=np.float64)).astype(np.float32)
    gaps = np.diff(np.unique(np.array(levels)))
    expected = step * math.gcd(*gaps.tolist())
    assert lattice_step(values.astype(np.float64)) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("offset", [0.0, 1e4, 1.1e5, 2e5, 1e6, 16_000_000.0])
def test_whole_numbers_far_from_zero_are_a_lattice_of_their_gcd(offset: float) -> None:
    # codes, counts or YYYYMM values with a few levels: a tolerance growing with their size took the step 1 for float
    # noise past ~1e5 (when some level was missing), and the column for continuous
    for levels, step in (([0, 1, 3, 7], 1.0), ([0, 2, 6, 14], 2.0), ([0, 1, 2], 1.0)):
        values = (offset + np.array(levels, dtype=np.float64)).astype(np.float32).astype(np.float64)
        assert lattice_step(values) == step, (offset, levels)


def test_continuous_values_have_no_lattice() -> None:
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal(5000), rng.uniform(0, 1000, 5000), rng.lognormal(0, 2, 5000)):
        assert lattice_step(x.astype(np.float32).astype(np.float64)) == 0.0


def test_each_feature_keeps_its_own_scale_without_a_shared_floor() -> None:
    # A feature a million times smaller than its neighbour keeps its own std: a x10 change of it is still large.
    rng = np.random.default_rng(1)
    x = np.stack([rng.normal(0, 1e3, 500), rng.normal(5, 1e-3, 500)], 1)
    s = _scaling(x)
    assert s.kinds == ["continuous", "continuous"]
    np.testing.assert_allclose(s.std, x.astype(np.float32).astype(np.float64).std(0), rtol=1e-4)


def test_constant_columns_are_excluded_from_the_networks_and_score_nothing_at_their_value() -> None:
    x = np.stack([np.random.default_rng(0).normal(0, 1, 40), np.full(40, 3.7)], 1)  # continuous and constant
    s = _scaling(x)
    assert s.kinds == ["continuous", "constant"] and s.step[1] == 0.0
    assert s.std[1] == pytest.approx(POINT_MASS_SCALE * 3.7)
    model = GaussianVAE(ModelConfig(input_dim=2, latent_dim=1, hidden=(4,)), s)
    assert model.encoder.net[0].in_features == 1 and model.decoder.features == 1
    rows = model.standardize(torch.tensor([[1.0, 3.7], [1.0, 3.8]]))
    with torch.no_grad():
        terms = score_terms(model, rows, torch.zeros(2, 1, 1), per_feature=True)
    assert terms.feature_ll is not None
    ll = terms.feature_ll[:, 1]
    assert ll[0].item() == pytest.approx(0.0, abs=1e-6)  # a point mass scores 0 nats at its value
    assert ll[1].item() == pytest.approx(-0.5 * (0.1 / (POINT_MASS_SCALE * 3.7)) ** 2, rel=1e-3)


def test_a_constant_on_the_tables_grid_gets_its_bins_density() -> None:
    rng = np.random.default_rng(2)
    x = np.stack([rng.integers(0, 17, 200) / 16, rng.integers(0, 17, 200) / 16, np.zeros(200)], 1)
    s = _scaling(x)
    assert s.kinds[2] == "constant" and s.step[2] == 1 / 16
    # N(c + h/2, h²/12): the moments of its dequantised bin [c, c + h)
    assert s.mean[2] == pytest.approx(1 / 32) and s.std[2] == pytest.approx((1 / 16) / math.sqrt(12))


def test_lattice_std_includes_the_bins_variance_and_the_decoder_floor_is_never_below_it() -> None:
    rng = np.random.default_rng(3)
    x = np.stack([rng.integers(0, 3, 300), (rng.random(300) < 0.02).astype(float)], 1)  # counts; a rare 0/1 flag
    s = _scaling(x)
    assert s.kinds == ["lattice", "lattice"] and list(s.step) == [1.0, 1.0]
    np.testing.assert_allclose(s.std**2, x.var(0) + 1 / 12, rtol=1e-6)  # the moments of x + h u, u ~ U[0, 1)
    np.testing.assert_allclose(s.mean, x.mean(0) + 0.5, rtol=1e-6)
    floor_raw = np.exp(s.decoder_log_var_floor(1e-3)) * s.std**2
    assert np.all(floor_raw >= 1 / 12 - 1e-9)


def test_each_behaviour_can_be_turned_off() -> None:
    x = load_table("builtin:digits").x
    off = _scaling(x, detect_lattice=False)
    assert off.counts() == {"constant": 3, "lattice": 0, "continuous": 61} and not off.dequantize
    kept = _scaling(x, dequantize=False)
    assert kept.counts()["lattice"] == 61 and not kept.dequantize
    np.testing.assert_allclose(kept.std[kept.active], x.astype(np.float64).std(0)[kept.active], rtol=1e-5)


def test_streaming_moments_match_numpy_over_many_chunks() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2 * CHUNK_ROWS + 123, 3)) * [1.0, 5.0, 0.01] + [10.0, -3.0, 1e4]).astype(np.float32)
    rows = rng.permutation(len(x))[: len(x) - 1000]
    total = all_moments(x, rows)
    np.testing.assert_allclose(total.mean, x[rows].astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(total.m2 / total.n), x[rows].astype(np.float64).std(0), rtol=1e-4)


def test_moments_of_uneven_parts_merge_to_those_of_the_whole() -> None:
    # What the ranks do: each takes a block of rows; the blocks' moments merged in order equal numpy's over all.
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((1001, 4)) * [1.0, 3.0, 1e-3, 20.0] + [5.0, -2.0, 1e3, 0.0]).astype(np.float32)
    rows = np.arange(len(x))
    parts = [moments(x, rows[Dist(rank=r, world=3).share(len(rows))]) for r in range(3)]
    assert [p.n for p in parts] == [333, 334, 334]
    merged = Moments.unpack(parts[0].pack()).merge(parts[1]).merge(parts[2])
    whole = x.astype(np.float64)
    np.testing.assert_allclose(merged.mean, whole.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.m2 / merged.n, whole.var(0), rtol=1e-10)
    assert merged.merge(Moments(0, np.zeros(4), np.zeros(4))) is merged


def test_scaling_survives_a_round_trip_through_a_checkpoint_dict() -> None:
    s = _scaling(load_table("builtin:digits").x)
    back = FeatureScaling.from_dict(s.to_dict())
    assert back.kinds == s.kinds and back.near_constant == s.near_constant and back.dequantize == s.dequantize
    for a, b in ((back.mean, s.mean), (back.std, s.std), (back.step, s.step)):
        np.testing.assert_array_equal(a, b)


def test_dequantised_rows_fill_each_lattice_values_bin_and_leave_continuous_features_alone() -> None:
    rng = np.random.default_rng(5)
    x = np.stack([rng.integers(0, 5, 400) / 4, rng.normal(0, 1, 400)], 1).astype(np.float32)
    s = _scaling(x)
    assert s.kinds == ["lattice", "continuous"]
    model = GaussianVAE(ModelConfig(input_dim=2, latent_dim=1, hidden=(4,)), s)
    rows = torch.from_numpy(x)
    y = model.dequantize(model.standardize(rows), torch.Generator().manual_seed(0)) * model.data_std + model.data_mean
    moved = (y - rows).numpy()
    assert np.all(moved[:, 0] >= -1e-6) and np.all(moved[:, 0] < 0.25 + 1e-6)  # inside [x, x + h), h = 1/4
    assert moved[:, 0].std() == pytest.approx(0.25 / math.sqrt(12), rel=0.1)  # uniform over the bin
    np.testing.assert_allclose(moved[:, 1], 0.0, atol=1e-5)
