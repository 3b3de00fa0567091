"""What a served model answers, watched: the p-values, scores and flags of the rows it scores, a drift test over a
recent window, and the features that moved (contract/drift.py holds the tests).

Only rows scored under the model's reference conditions count (its K of importance samples and its noise: the
defaults of /score), so their scores are comparable with the validation reference; a request asking for another K,
seed or fresh noise is answered as ever and left out. Flags are counted at the model's default threshold, whatever
threshold a request asked for.

Each worker keeps, per model version, a tally vector since start-up and one per time slot of the window (60 slots
of VAE_MONITOR_WINDOW_S / 60 seconds): rows, flagged rows, the sums of scores and p-values, the score buckets, the
p-value buckets, and each feature's NLL sum and sum of squares. With several workers each writes its tallies to a
file in the shared metrics folder at most once a second (and on a monitoring request, first), and whichever worker
answers /metrics or /monitoring adds up every worker's: the same figures from any worker, up to the last second of
the others' rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel

from contract import anomaly, drift
from contract.manifest import Manifest
from runtime.operations import Outputs, draw_seed
from service.metrics import shared_dir
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
SLOTS = 60
FLUSH_S = 1.0
FILE_PREFIX = "monitor_"
TOP_FEATURES = 10
# recorded values (rows x features) tallied at once at most: a tally's cost grows with the values (about 0.5 us a row
# of 64 features, ~30 us a call), and counting rows instead let a wide table's tally hold the event loop for 16 ms
PENDING_VALUES = 1 << 18
# the tally vector: [rows, flagged, score sum, p-value sum, score buckets (E+1), p-value buckets (P), feature NLL
# sums (D), feature NLL sums of squares (D)]
ROWS, FLAGGED, SCORE_SUM, P_SUM, HEAD = 0, 1, 2, 3, 4


@dataclass
class Tallies:
    """One model version's tallies: since start-up, and per time slot (slot id = int(time / slot seconds))."""

    total: np.ndarray
    slots: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, other: Tallies) -> None:
        self.total = self.total + other.total
        for slot, vector in other.slots.items():
            self.slots[slot] = self.slots[slot] + vector if slot in self.slots else vector.copy()


class ModelWatch:
    """One model version's reference and tallies in one worker."""

    def __init__(self, manifest: Manifest, settings: ServiceSettings) -> None:
        ref = manifest.anomaly
        self.name, self.version = manifest.name, manifest.version
        # the bundle's content too: a model trained again under the same name and version (or a version replaced in
        # place) is watched against its own reference, and no worker adds up another bundle's tallies with it. The
        # scorer graph alone is not enough: a training that differs only in its evaluation settings (the threshold's
        # quantile, the reference's K) writes the same graph with another reference
        reference = hashlib.sha256(ref.model_dump_json().encode()).hexdigest()[:16]
        self.key = f"{self.name}@{self.version}#{manifest.graphs.scorer.sha256[:16]}#{reference}"
        self.settings = settings
        self.reference = ref.reference()  # ascending (n,): a sample of the validation scores, at most 10,000
        self.validation_rows = ref.rows  # all of them: the feature references are over every validation row
        self.importance_samples, self.noise_seed = ref.importance_samples, ref.noise_seed
        self.threshold, self.quantile = ref.threshold, ref.default_quantile
        self.bins = drift.ScoreBins.of(self.reference)
        self.feature_names = manifest.feature_names or [f"x{j}" for j in range(manifest.input_dim)]
        self.feature_mean = None if ref.feature_nll_mean is None else np.asarray(ref.feature_nll_mean)
        self.feature_std = None if ref.feature_nll_std is None else np.asarray(ref.feature_nll_std)
        self.features = manifest.input_dim
        self.buckets, self.p_buckets = self.bins.edges.size + 1, len(drift.P_VALUE_BUCKETS)
        self.size = HEAD + self.buckets + self.p_buckets + 2 * self.features
        self.slot_s = settings.monitor_window_s / SLOTS
        self.tallies = Tallies(np.zeros(self.size))
        self.dirty = False
        self._pending: list[tuple[float, np.ndarray, np.ndarray]] = []  # (time, elbo (B,), feature_nll (B, D))
        self._pending_values = 0

    def comparable(self, importance_samples: Hashable, params: BaseModel) -> bool:
        """Whether a score request's rows are scored as the reference was (its K and its noise)."""
        seed = draw_seed(getattr(params, "seed", None), getattr(params, "fresh_noise", False), self.noise_seed)
        return importance_samples == self.importance_samples and seed == self.noise_seed

    def tally(self, outputs: Outputs) -> np.ndarray:
        """The tally vector of one request's scorer outputs (elbo (B,), feature_nll (B, D))."""
        scores = anomaly.finite_scores(-outputs["elbo"])  # as Operations.score ranks them
        p = anomaly.p_values(self.reference, scores)
        nll = np.asarray(outputs["feature_nll"], dtype=np.float64)
        nll = np.where(np.isfinite(nll), nll, anomaly.FLOAT32_MAX)
        return np.concatenate(
            [
                [scores.size, np.count_nonzero(scores > self.threshold), scores.sum(), p.sum()],
                self.bins.counts(scores),
                drift.p_value_counts(p),
                nll.sum(0),
                (nll**2).sum(0),
            ]
        )

    def record(self, outputs: Outputs, now: float) -> None:
        """A small request's outputs, kept until settle(): tallied with the others of their time slot at once
        (once a second, at a report, or past PENDING_VALUES values), so a 1-row request pays a list append rather than
        a tally's ~30 us of numpy calls on the event loop."""
        self._pending.append((now, outputs["elbo"], outputs["feature_nll"]))
        self._pending_values += outputs["feature_nll"].size
        if self._pending_values >= PENDING_VALUES:
            self.settle()

    def settle(self) -> None:
        """Tally the recorded outputs, a slot at a time."""
        pending, self._pending, self._pending_values = self._pending, [], 0
        by_slot: dict[int, list[tuple[float, np.ndarray, np.ndarray]]] = {}
        for item in pending:
            by_slot.setdefault(int(item[0] // self.slot_s), []).append(item)
        for items in by_slot.values():
            elbo = np.concatenate([e for _, e, _ in items])
            nll = np.concatenate([f for _, _, f in items])
            self.add(self.tally({"elbo": elbo, "feature_nll": nll}), items[-1][0])

    def add(self, vector: np.ndarray, now: float) -> None:
        t = self.tallies
        t.total += vector
        slot = int(now // self.slot_s)
        t.slots[slot] = t.slots[slot] + vector if slot in t.slots else vector.copy()
        for old in [s for s in t.slots if s <= slot - SLOTS]:
            del t.slots[old]
        self.dirty = True

    def report(self, tallies: Tallies, now: float) -> dict[str, Any]:
        """The monitoring figures of merged tallies (every worker's): the JSON of /v1/models/{name}/monitoring."""
        s = self.settings
        window, start = self.window(tallies, now)
        m, n = round(window[ROWS]), self.reference.size
        counts = window[HEAD : HEAD + self.buckets]
        test = self.bins.test(counts)
        filling = m < s.monitor_min_rows
        alarm = not filling and test.p_value < s.monitor_level
        flagged = min(round(window[FLAGGED]), m)
        expected = drift.expected_flagged_share(n, self.quantile)
        flag_p = drift.flagged_share_test(flagged, m, n, self.quantile)
        features = self.feature_report(window, m)
        p_counts = window[HEAD + self.buckets : HEAD + self.buckets + self.p_buckets]
        return {
            "model": self.name,
            "version": self.version,
            "enabled": True,
            "reference": {
                "rows": self.validation_rows,
                "sample_rows": n,
                "importance_samples": self.importance_samples,
                "default_quantile": self.quantile,
                "threshold": self.threshold,
            },
            "window": {
                "rows": m,
                "seconds": 0.0 if start is None else max(0.0, now - start),
                "limit_rows": s.monitor_window_rows,
                "limit_seconds": s.monitor_window_s,
                "min_rows": s.monitor_min_rows,
                "filling": filling,
            },
            "totals": {"scored_rows": int(tallies.total[ROWS]), "flagged_rows": int(tallies.total[FLAGGED])},
            "flagged": {"rows": flagged, "share": flagged / m if m else None, "expected": expected, "p_value": flag_p},
            "drift": {
                "test": "chi-square homogeneity of the window's anomaly scores against the validation reference's, "
                f"in {int(self.bins.test_bin.max()) + 1} equal-count bins of the reference",
                "statistic": test.statistic,
                "dof": test.dof,
                "p_value": test.p_value,
                "level": s.monitor_level,
                "alarm": alarm,
            },
            "p_values": {"upper_edges": list(drift.P_VALUE_BUCKETS), "counts": _whole(p_counts, m)},
            "features": features,
            "summary": summary(m, filling, alarm, test.p_value, features, self.features),
        }

    def window(self, tallies: Tallies, now: float) -> tuple[np.ndarray, float | None]:
        """The newest rows inside the window's seconds, at most VAE_MONITOR_WINDOW_ROWS of them: (their tally, the
        time they start from, or None with none). Slots are taken newest first, and of the one that crosses the limit
        (the newest too, when it alone holds more) the share that fills it: every figure of a tally is a sum over
        rows, so that share of its vector is the expected tally of as many of its rows drawn at random. Dropping the
        crossing slot whole instead made a busy window swing between one slot and the limit at every slot boundary
        (the newest slot fills from nothing), and the test's power and the alarm with it. The start takes the same
        share of the slot's time, its rows taken as spread evenly over it."""
        current = int(now // self.slot_s)
        limit = float(self.settings.monitor_window_rows)
        total, start, rows = np.zeros(self.size), None, 0.0
        for slot in sorted((s for s in tallies.slots if s > current - SLOTS), reverse=True):
            vector = tallies.slots[slot]
            share = min(1.0, float((limit - rows) / vector[ROWS])) if vector[ROWS] > 0 else 1.0
            end = min((slot + 1) * self.slot_s, now)  # the newest slot is still filling
            total, rows = total + share * vector, rows + share * vector[ROWS]
            start = end - share * max(0.0, end - slot * self.slot_s)
            if share < 1.0:  # the limit is met (a test of rows >= limit could miss it by a rounding)
                break
        return total, start

    def feature_report(self, window: np.ndarray, m: int) -> dict[str, Any]:
        if self.feature_mean is None or self.feature_std is None:
            return {
                "available": False,
                "note": "this bundle has no per-feature validation reference (trained before it was kept): retrain "
                "to see which features moved",
                "moved": [],
                "top": [],
            }
        cut = drift.feature_cut(self.settings.monitor_level, self.features)
        if m < 2:
            return {"available": True, "cut": cut, "moved": [], "top": []}
        start = HEAD + self.buckets + self.p_buckets
        total, total_sq = window[start : start + self.features], window[start + self.features :]
        z = drift.feature_shift(total, total_sq, m, self.feature_mean, self.feature_std, self.validation_rows)
        ranked = np.argsort(-np.abs(z), kind="stable")
        order = ranked[:TOP_FEATURES]
        top = [
            {
                "feature": self.feature_names[j],
                "z": float(z[j]),
                "window_mean": float(total[j] / m),
                "reference_mean": float(self.feature_mean[j]),
            }
            for j in order
        ]
        # every feature past the cut, largest shift first (not only those of the top ten)
        judged = m >= self.settings.monitor_min_rows
        moved = [self.feature_names[j] for j in ranked if abs(z[j]) > cut] if judged else []
        return {"available": True, "cut": cut, "moved": moved, "top": top}


def summary(m: int, filling: bool, alarm: bool, p: float, features: dict[str, Any], count: int) -> str:
    """One sentence on the window: its drift test and the features that moved (of `count`)."""
    moved = features["moved"]
    if len(moved) > TOP_FEATURES:  # a long list reads as none: how many, and the largest three
        cause = f"; {len(moved)} of {count} features moved, the largest {_and(moved[:3])}"
    elif moved:
        cause = f"; {_and(moved)} moved" + (", the rest did not" if len(moved) < count else "")
    else:
        cause = ""
    if m == 0:
        return "no rows scored in the window yet"
    if filling:
        return f"window filling: {m} rows so far, too few to judge"
    if alarm:
        return f"drift: the window's {m} scores differ from the validation scores (p = {p:.2g}){cause}"
    return f"no drift seen in the window's {m} scores (p = {p:.2g}){cause}"


def _whole(counts: np.ndarray, total: int) -> list[int]:
    """Counts that may hold a share of a slot, as whole numbers adding up to `total` (largest remainders first)."""
    floors = np.floor(counts).astype(np.int64)
    short = max(0, min(total - int(floors.sum()), counts.size))
    floors[np.argsort(floors - counts, kind="stable")[:short]] += 1
    return [int(c) for c in floors]


def _and(names: list[str]) -> str:
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


class Monitoring(Collector):
    """Every model version this worker watches, its tallies on disk for the other workers, and their sum; a
    prometheus_client collector of the monitoring families."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.watches: dict[str, ModelWatch] = {}
        folder = shared_dir()
        self.folder = None if folder is None else Path(folder)
        self.path = None if self.folder is None else self.folder / f"{FILE_PREFIX}{os.getpid()}.npz"
        self._task: asyncio.Task[None] | None = None
        self._dropped = False  # the watches written changed since the last flush (one dropped, or retired for good)
        # watches dropped here (drop()), with when: their tallies stay in this worker's file for the window's seconds
        self._retired: dict[str, tuple[ModelWatch, float]] = {}

    def watch(self, manifest: Manifest) -> ModelWatch | None:
        if not self.settings.monitor:
            return None
        watch = ModelWatch(manifest, self.settings)
        if watch.key not in self.watches:
            for other in [w for w in self.watches.values() if (w.name, w.version) == (watch.name, watch.version)]:
                self.drop(other)  # another bundle that had this name and version: one series per name and version
            kept = self._retired.pop(watch.key, None)  # the same bundle served again: its counts go on
            self.watches[watch.key] = watch if kept is None else kept[0]
        return self.watches[watch.key]

    def drop(self, watch: ModelWatch) -> None:
        """Stop watching a version that no longer serves here: its figures leave this worker's /metrics. Its tallies
        stay in this worker's file, frozen, for VAE_MONITOR_WINDOW_S: the other workers follow a change within
        seconds, and one that still serves the version meanwhile keeps adding them up, so its counters never go back
        (a drop from the file at once read as a counter reset there)."""
        if self.watches.get(watch.key) is watch:
            del self.watches[watch.key]
            watch.settle()
            self._retired[watch.key] = (watch, time.monotonic())
            self._dropped = True

    def start(self) -> None:
        if self.settings.monitor:
            self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                self.flush()
            except Exception:  # one failed write (a full disk) must not end the flushes for good
                log.exception("monitoring: writing this worker's tallies failed")

    def flush(self) -> None:
        """Tally what was recorded, then this worker's tallies to its file (written whole, then renamed) when they
        changed."""
        now = time.monotonic()
        for key in [k for k, (_, at) in self._retired.items() if now - at > self.settings.monitor_window_s]:
            del self._retired[key]
            self._dropped = True
        # a dropped version's runner may still finish requests in flight: their rows count too
        written = [*self.watches.items(), *((k, w) for k, (w, _) in self._retired.items())]
        for _, w in written:
            w.settle()
        if self.path is None or not (self._dropped or any(w.dirty for _, w in written)):
            return
        self._dropped = False
        arrays: dict[str, np.ndarray] = {}
        for key, w in written:
            w.dirty = False
            slots = sorted(w.tallies.slots)
            arrays[f"{key}|total"] = w.tallies.total
            arrays[f"{key}|slot_ids"] = np.asarray(slots, dtype=np.int64)
            arrays[f"{key}|slots"] = np.asarray([w.tallies.slots[s] for s in slots]).reshape(len(slots), w.size)
        partial = self.path.with_suffix(".partial.npz")
        np.savez(partial, **arrays)  # type: ignore[arg-type]
        os.replace(partial, self.path)

    def merged(self, watch: ModelWatch) -> tuple[Tallies, int]:
        """The watch's tallies summed over every worker (this one's live, the others' from their files), and how
        many workers' rows are in them."""
        total = Tallies(watch.tallies.total.copy(), {s: v.copy() for s, v in watch.tallies.slots.items()})
        workers = int(total.total[ROWS] > 0)
        if self.folder is None:
            return total, workers
        for path in self.folder.glob(f"{FILE_PREFIX}*.npz"):
            if path == self.path or path.name.endswith(".partial.npz"):
                continue
            try:
                with np.load(path) as f:
                    if f"{watch.key}|total" not in f.files:
                        continue
                    vector, ids, slots = f[f"{watch.key}|total"], f[f"{watch.key}|slot_ids"], f[f"{watch.key}|slots"]
            except (OSError, ValueError, KeyError) as exc:  # a file being replaced, or from a dying worker
                log.debug("monitoring: skipped %s: %s", path, exc)
                continue
            if vector.shape != (watch.size,):
                continue
            total.add(Tallies(vector, {int(i): row for i, row in zip(ids, slots, strict=True)}))
            workers += int(vector[ROWS] > 0)
        return total, workers

    def report(self, watch: ModelWatch) -> dict[str, Any]:
        self.flush()  # this worker's newest rows in its figures, and for the others that answer next
        tallies, workers = self.merged(watch)
        return watch.report(tallies, time.time()) | {"workers": workers}

    def collect(self) -> Iterator[Metric]:
        """The monitoring families for /metrics, from every worker's tallies (a prometheus_client collector)."""
        rows = CounterMetricFamily("vae_scored_rows", "rows scored under the reference's conditions", labels=LABELS)
        flagged = CounterMetricFamily("vae_flagged_rows", "of those, rows over the default threshold", labels=LABELS)
        p_hist = HistogramMetricFamily("vae_score_p_value", "conformal p-values of scored rows", labels=LABELS)
        s_hist = HistogramMetricFamily(
            "vae_anomaly_score", "anomaly scores, in buckets from the model's validation scores", labels=LABELS
        )
        gauges = {name: GaugeMetricFamily(name, text, labels=LABELS) for name, text in GAUGES.items()}
        now = time.time()
        self.flush()
        for w in list(self.watches.values()):
            tallies, _ = self.merged(w)
            labels = [w.name, str(w.version)]
            t = tallies.total
            rows.add_metric(labels, t[ROWS])
            flagged.add_metric(labels, t[FLAGGED])
            p_counts = np.cumsum(t[HEAD + w.buckets : HEAD + w.buckets + w.p_buckets])
            p_hist.add_metric(labels, _buckets(drift.P_VALUE_BUCKETS, p_counts), t[P_SUM])
            s_counts = np.cumsum(t[HEAD : HEAD + w.buckets])
            s_hist.add_metric(labels, _buckets(tuple(w.bins.edges), s_counts), t[SCORE_SUM])
            r = w.report(tallies, now)
            figures = {
                "vae_drift_statistic": r["drift"]["statistic"],
                "vae_drift_p_value": r["drift"]["p_value"],
                "vae_drift_alarm": float(r["drift"]["alarm"]),
                "vae_drift_window_rows": r["window"]["rows"],
                "vae_drift_window_filling": float(r["window"]["filling"]),
                "vae_flagged_share": r["flagged"]["share"] or 0.0,
                "vae_flagged_share_expected": r["flagged"]["expected"],
                "vae_flagged_share_p_value": r["flagged"]["p_value"],
                "vae_features_moved": len(r["features"]["moved"]),
            }
            for name, value in figures.items():
                gauges[name].add_metric(labels, value)
        yield from (rows, flagged, p_hist, s_hist, *gauges.values())


LABELS = ["model", "version"]
GAUGES = {
    "vae_drift_statistic": "chi-square statistic of the window's scores against the validation reference",
    "vae_drift_p_value": "its p-value",
    "vae_drift_alarm": "1 when the p-value is below VAE_MONITOR_LEVEL and the window is full enough",
    "vae_drift_window_rows": "rows in the drift window",
    "vae_drift_window_filling": "1 while the window holds fewer than VAE_MONITOR_MIN_ROWS rows",
    "vae_flagged_share": "share of the window's rows over the default threshold",
    "vae_flagged_share_expected": "the share the threshold flags among normal rows",
    "vae_flagged_share_p_value": "two-sided p-value of the window's flagged share (beta-binomial)",
    "vae_features_moved": "features whose mean NLL in the window moved from the validation rows' (Bonferroni)",
}


def _buckets(edges: tuple[float, ...], cumulative: np.ndarray) -> list[tuple[str, float]]:
    """(le, cumulative count) pairs ending with +Inf, from the cumulative counts of each bucket and the one past
    the last edge."""
    pairs = [(repr(float(e)), float(c)) for e, c in zip(edges, cumulative, strict=False)]
    return pairs + [("+Inf", float(cumulative[-1]))]
