"""The monitoring's figures from a model's tallies (service/monitoring.py), without a server: the drift window under
busy traffic, the features that moved, which reference a version is watched against, and the size of one tally pass.

Rows are fed as the scorer's outputs would be (elbo (B,), feature_nll (B, D)), drawn like the validation rows: the
scores from the model's own reference sample, each feature's NLL from its validation mean and standard deviation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest

import service.monitoring
from contract.manifest import Manifest
from service.metrics import MULTIPROC_DIR
from service.monitoring import FILE_PREFIX, PENDING_VALUES, ROWS, SLOTS, ModelWatch, Monitoring
from service.settings import ServiceSettings
from training.pipeline import RunResult


@pytest.fixture(scope="module")
def manifest(diagonal_run: RunResult) -> Manifest:
    found = diagonal_run.manifest
    assert isinstance(found, Manifest)
    return found


def rows(watch: ModelWatch, n: int, rng: np.random.Generator, shift_sd: float = 0.0) -> dict[str, np.ndarray]:
    """n rows like the validation rows, every feature's NLL moved by shift_sd of its validation standard deviation."""
    assert watch.feature_mean is not None and watch.feature_std is not None
    scores = rng.choice(watch.reference, n)
    nll = watch.feature_mean + (rng.standard_normal((n, watch.features)) + shift_sd) * watch.feature_std
    return {"elbo": (-scores).astype(np.float32), "feature_nll": nll.astype(np.float32)}


def test_a_busy_window_holds_its_row_limit_at_every_moment_not_only_at_the_end_of_a_slot(manifest: Manifest) -> None:
    # 400 rows/s against 60 s slots: each slot holds 24,000 rows, more than the 20,000-row limit by itself. The window
    # used to drop the slot that crossed the limit whole, so just after each slot boundary it held only the new
    # slot's few rows, and the alarm turned off and on with the clock
    settings = ServiceSettings(monitor_window_s=3600, monitor_window_rows=20_000, monitor_min_rows=500)
    watch = ModelWatch(manifest, settings)
    rng = np.random.default_rng(0)
    start = 1_000_020 * watch.slot_s  # the start of a slot
    seen, spans = [], []
    for second in range(300):  # five minutes of traffic, a tally a second
        now = start + second
        watch.add(watch.tally(rows(watch, 400, rng)), now)
        if second >= 60:  # a full slot behind the newest: the limit can be met
            report = watch.report(watch.tallies, now + 0.5)
            seen.append(report["window"]["rows"])
            spans.append(report["window"]["seconds"])
            assert sum(report["p_values"]["counts"]) == 20_000  # whole rows, though a slot counts in part
            orjson.dumps(report)  # as the service answers it: plain numbers, no numpy scalars
    assert seen and all(m == 20_000 for m in seen), sorted(set(seen))[:5]
    # and the time those rows span, 50 s of traffic, at every look too (it used to run 51 -> 106 s with the clock)
    assert max(abs(span - 50.0) for span in spans) < 1.5, (min(spans), max(spans))


def test_the_window_takes_a_share_of_the_slot_that_crosses_its_limit(manifest: Manifest) -> None:
    settings = ServiceSettings(monitor_window_s=600, monitor_window_rows=1_000, monitor_min_rows=100)
    watch = ModelWatch(manifest, settings)
    rng = np.random.default_rng(1)
    start = 7_000 * SLOTS * watch.slot_s
    older, newer = watch.tally(rows(watch, 1_600, rng)), watch.tally(rows(watch, 400, rng))
    watch.add(older, start)
    watch.add(newer, start + watch.slot_s)
    window, since = watch.window(watch.tallies, start + watch.slot_s)
    # all 400 newest rows, and 600 of the 1,600 before: 3/8 of every sum of that slot
    np.testing.assert_allclose(window, newer + older * (600 / 1_600))
    # from the newest 3/8 of the older slot's time: its rows taken as spread evenly over it
    assert window[ROWS] == pytest.approx(1_000) and since == pytest.approx(start + (1 - 600 / 1_600) * watch.slot_s)
    # fewer rows than the limit: every slot whole
    small = ModelWatch(manifest, settings.model_copy(update={"monitor_window_rows": 5_000}))
    small.add(older, start)
    small.add(newer, start + small.slot_s)
    np.testing.assert_allclose(small.window(small.tallies, start + small.slot_s)[0], older + newer)


def test_every_feature_past_the_cut_counts_as_moved_not_only_the_ten_listed_first(manifest: Manifest) -> None:
    watch = ModelWatch(manifest, ServiceSettings(monitor_window_rows=5_000, monitor_min_rows=500))
    assert watch.feature_std is not None
    rng = np.random.default_rng(2)
    now = 5_000 * SLOTS * watch.slot_s
    watch.add(watch.tally(rows(watch, 2_000, rng, shift_sd=3.0)), now)
    report = watch.report(watch.tallies, now)
    features = report["features"]
    varying = int(np.count_nonzero(watch.feature_std > 0))  # a feature constant in training cannot move
    assert len(features["top"]) == 10
    assert len(features["moved"]) == varying > 10
    z = {t["feature"]: abs(t["z"]) for t in features["top"]}
    assert features["moved"][:10] == [t["feature"] for t in features["top"]] and min(z.values()) > features["cut"]
    first = features["moved"][:3]
    assert report["summary"].endswith(
        f"{varying} of {watch.features} features moved, the largest {first[0]}, {first[1]} and {first[2]}"
    ), report["summary"]


def test_a_feature_shift_counts_the_validation_rows_the_reference_means_came_from(manifest: Manifest) -> None:
    # the features' means and standard deviations are over every validation row, the score sample at most 10,000
    # of them: a reference of 50,000 rows is compared as one, not as the 10,000-score sample
    many = manifest.model_copy(update={"anomaly": manifest.anomaly.model_copy(update={"rows": 50_000})})
    watch = ModelWatch(many, ServiceSettings(monitor_window_rows=5_000, monitor_min_rows=500))
    assert watch.feature_mean is not None and watch.feature_std is not None
    rng = np.random.default_rng(3)
    now = 6_000 * SLOTS * watch.slot_s
    batch = rows(watch, 1_000, rng, shift_sd=0.2)
    watch.add(watch.tally(batch), now)
    report = watch.report(watch.tallies, now)
    assert report["reference"]["rows"] == 50_000
    assert report["reference"]["sample_rows"] == len(manifest.anomaly.sample)
    nll = batch["feature_nll"].astype(np.float64)
    se = np.sqrt(nll.var(0, ddof=1) / len(nll) + watch.feature_std**2 / 50_000)
    expected = np.divide(nll.mean(0) - watch.feature_mean, se, out=np.zeros(watch.features), where=se > 0)
    for top in report["features"]["top"]:
        j = watch.feature_names.index(top["feature"])
        assert top["z"] == pytest.approx(expected[j], rel=1e-6)


def test_a_version_replaced_by_one_with_the_same_graph_and_another_reference_is_watched_against_the_new_one(
    manifest: Manifest,
) -> None:
    # a training that differs only in its threshold's quantile or its reference's K writes the same scorer graph
    monitoring = Monitoring(ServiceSettings())
    first = monitoring.watch(manifest)
    changed = manifest.anomaly.model_copy(update={"default_quantile": 0.9, "threshold": -1.5, "importance_samples": 64})
    second = monitoring.watch(manifest.model_copy(update={"anomaly": changed}))
    assert first is not None and second is not None and second is not first
    assert (second.threshold, second.quantile, second.importance_samples) == (-1.5, 0.9, 64)
    assert list(monitoring.watches.values()) == [second]  # one series per name and version
    assert monitoring.watch(manifest.model_copy(update={"anomaly": changed})) is second  # the same bundle again


def test_a_wide_table_is_tallied_in_passes_of_at_most_a_bounded_number_of_values(manifest: Manifest) -> None:
    # a pass over pending rows runs on the event loop: it is bounded by values (rows x features), so a table of
    # 1,024 features is tallied every 256 one-row requests rather than every 4,096
    wide_d = 1_024
    per_feature = {"feature_nll_mean": [0.0] * wide_d, "feature_nll_std": [1.0] * wide_d}
    anomaly = manifest.anomaly.model_copy(update=per_feature)
    wide = manifest.model_copy(update={"input_dim": wide_d, "feature_names": None, "anomaly": anomaly})
    watch = ModelWatch(wide, ServiceSettings())
    rng = np.random.default_rng(4)
    per_pass = PENDING_VALUES // wide_d
    for i in range(per_pass):
        assert watch.tallies.total[ROWS] == 0, i  # still pending
        watch.record(rows(watch, 1, rng), 100.0)
    assert watch.tallies.total[ROWS] == per_pass == 256


def test_a_version_one_worker_stops_serving_keeps_counting_in_the_workers_that_still_serve_it(
    manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the workers follow a load or unload a few seconds apart; meanwhile a worker that still serves the version
    # adds up every worker's tallies: the one that dropped it must not take its rows away (a counter going back)
    monkeypatch.setenv(MULTIPROC_DIR, str(tmp_path))
    settings = ServiceSettings(monitor_window_s=600)
    first, second = Monitoring(settings), Monitoring(settings)
    first.path, second.path = tmp_path / f"{FILE_PREFIX}1.npz", tmp_path / f"{FILE_PREFIX}2.npz"
    mine, theirs = first.watch(manifest), second.watch(manifest)
    assert mine is not None and theirs is not None
    rng, now = np.random.default_rng(5), 4_000 * SLOTS * mine.slot_s
    mine.add(mine.tally(rows(mine, 3_000, rng)), now)
    theirs.add(theirs.tally(rows(theirs, 2_000, rng)), now)
    first.flush()
    second.flush()
    assert second.merged(theirs)[0].total[ROWS] == 5_000

    first.drop(mine)  # the first worker took the unload (or served a newer version)
    first.flush()
    assert list(first.watches) == []  # gone from its /metrics
    assert second.merged(theirs)[0].total[ROWS] == 5_000  # still counted where it serves

    assert first.watch(manifest) is mine  # the same bundle again: its counts go on
    assert first.merged(mine)[0].total[ROWS] == 5_000

    first.drop(mine)
    real = time.monotonic
    monkeypatch.setattr(service.monitoring.time, "monotonic", lambda: real() + 601)
    first.flush()  # a window's seconds later: every worker has followed long since, and the file lets it go
    assert second.merged(theirs)[0].total[ROWS] == 2_000
