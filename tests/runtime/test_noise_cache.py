"""The default-seed noise blocks a scorer keeps: a bounded LRU (the manifest's K always, plus a few recent K), with
numbers that do not depend on what was evicted."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from contract import Manifest, anomaly
from contract.requests import ScoreRequest
from runtime import Limits
from runtime.operations import RECENT_NOISE_BLOCKS, Operations


@pytest.fixture(scope="module")
def manifest(serving_repository: Path) -> Manifest:
    return Manifest.model_validate_json((serving_repository / "digits-diag" / "1" / "manifest.json").read_text())


def _noise(ops: Operations, k: int) -> np.ndarray:
    """The (K, d) block a default-seed score request of K importance samples runs with."""
    x = np.zeros((2, ops.input_dim), np.float32)
    eps = ops.score(x, ScoreRequest(inputs=[], importance_samples=k)).feeds["eps"]  # (B, K, d), one block
    return np.asarray(eps[0])


def test_asking_for_many_k_keeps_the_manifests_k_and_only_the_most_recent_others(manifest: Manifest) -> None:
    ops, pinned = Operations(manifest, Limits()), manifest.anomaly.importance_samples
    _noise(ops, pinned)
    asked = [k for k in range(1, 200) if k != pinned]
    for k in asked:
        _noise(ops, k)
        assert len(ops._default_noise) <= 1 + RECENT_NOISE_BLOCKS
    assert list(ops._default_noise) == [pinned, *asked[-RECENT_NOISE_BLOCKS:]]


def test_the_cache_never_holds_more_than_its_documented_worst_case(manifest: Manifest) -> None:
    limits = Limits()
    ops = Operations(manifest, limits)
    for k in range(limits.max_importance_samples, limits.max_importance_samples - 40, -1):
        _noise(ops, k)
    held = sum(block.nbytes for block in ops._default_noise.values())
    assert held <= (1 + RECENT_NOISE_BLOCKS) * limits.max_importance_samples * manifest.latent_dim * 4


def test_a_block_redrawn_after_eviction_equals_the_first_one(manifest: Manifest) -> None:
    ops = Operations(manifest, Limits())
    first = {k: _noise(ops, k).copy() for k in range(1, 50)}
    assert 1 not in ops._default_noise  # evicted long ago
    for k, block in first.items():
        again = _noise(ops, k)
        np.testing.assert_array_equal(again, block)
        np.testing.assert_array_equal(again, anomaly.score_noise(k, manifest.latent_dim, manifest.anomaly.noise_seed))


def test_a_k_used_again_stays_while_the_least_recently_used_goes(manifest: Manifest) -> None:
    ops, pinned = Operations(manifest, Limits()), manifest.anomaly.importance_samples
    others = [k for k in range(1, 3 * RECENT_NOISE_BLOCKS) if k != pinned]
    hot, rest = others[0], others[1:]
    for k in rest:
        _noise(ops, hot)  # asked between every other K: always among the most recent
        _noise(ops, k)
    assert hot in ops._default_noise and rest[0] not in ops._default_noise


def test_kept_blocks_are_read_only_and_seeded_requests_bypass_the_cache(manifest: Manifest) -> None:
    ops = Operations(manifest, Limits())
    block = _noise(ops, 8)
    with pytest.raises(ValueError, match="read-only"):
        block[0, 0] = 1.0
    x = np.zeros((1, ops.input_dim), np.float32)
    for i in range(20):  # seeds other than the manifest's noise_seed
        ops.score(x, ScoreRequest(inputs=[], importance_samples=9 + i, seed=manifest.anomaly.noise_seed + 1 + i))
    assert list(ops._default_noise) == [8]


def test_threads_asking_for_different_k_get_the_seeded_blocks_within_the_bound(manifest: Manifest) -> None:
    ops = Operations(manifest, Limits())
    ks = [1 + i % 37 for i in range(400)]
    with ThreadPoolExecutor(8) as pool:
        blocks = list(pool.map(lambda k: _noise(ops, k), ks))
    for k, block in zip(ks, blocks, strict=True):
        np.testing.assert_array_equal(block, anomaly.score_noise(k, manifest.latent_dim, manifest.anomaly.noise_seed))
    assert len(ops._default_noise) <= 1 + RECENT_NOISE_BLOCKS
