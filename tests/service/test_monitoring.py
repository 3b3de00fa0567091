"""Monitoring of what a served model answers (service/monitoring.py), against a real vae-serve with two workers.

The model is trained on synthetic linear-Gaussian rows (x = z W + noise, 8 named features), so fresh normal rows can
be drawn without end and a shift of half a standard deviation on two features is an honest, known drift."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.conftest import serving, vae_serve
from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from training.pipeline import run

FEATURES = [f"f{j}" for j in range(8)]
W = np.random.default_rng(42).normal(size=(2, 8))  # latent (2) -> features (8)
NOISE = 0.3
SD = np.sqrt((W**2).sum(0) + NOISE**2)  # each feature's marginal standard deviation
SHIFTED = ["f1", "f5"]
# short slots, so each request's rows fill a window of their own: 6 s in 60 slots of 0.1 s, at most 600 rows
WINDOW = {
    "VAE_MONITOR_WINDOW_S": "6",
    "VAE_MONITOR_WINDOW_ROWS": "600",
    "VAE_MONITOR_MIN_ROWS": "200",
    "VAE_MONITOR_LEVEL": "0.01",
}


def draw(rng: np.random.Generator, n: int, shift: list[str] | None = None) -> np.ndarray:
    x = rng.normal(size=(n, 2)) @ W + NOISE * rng.normal(size=(n, 8))
    for name in shift or []:
        j = FEATURES.index(name)
        x[:, j] += 0.5 * SD[j]
    return x


@pytest.fixture(scope="module")
def sensors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with one model, `sensors`, trained on 12,000 synthetic rows (2,400 validation rows)."""
    tmp = tmp_path_factory.mktemp("sensors")
    data = tmp / "sensors.csv"
    x = draw(np.random.default_rng(0), 12_000)
    data.write_text(",".join(FEATURES) + "\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in x) + "\n")
    train = TrainConfig(
        epochs=30, warmup_epochs=5, patience=10, eval_samples=32, score_samples=8, seed=0, refine_steps=30
    )
    run(
        RunConfig(
            # the plain model: a decorrelated one may name a feature correlated with the drifted one (README)
            data=DataConfig(source=str(data), val_fraction=0.2, test_fraction=0.0, seed=0, decorrelate="off"),
            model=ModelConfig(latent_dim=2, hidden=(32, 32), covariance="diagonal"),
            train=train,
            name="sensors",
            repository=tmp / "models",
        )
    )
    return tmp / "models"


def score(client: httpx.Client, rows: np.ndarray, **params: Any) -> None:
    answer = client.post("/v1/models/sensors/score", json={"inputs": rows.tolist(), **params})
    assert answer.status_code == 200, answer.text


def score_at_once(base: str, rows: np.ndarray, parts: int = 4) -> None:
    """rows in `parts` requests sent at the same time, each on a connection of its own: with two workers busy at once,
    both take some (one request after another on fresh connections can all go to the worker that wakes first)."""

    def send(part: np.ndarray) -> httpx.Response:
        return httpx.post(f"{base}/v1/models/sensors/score", json={"inputs": part.tolist()}, timeout=30)

    with ThreadPoolExecutor(parts) as pool:
        for answer in pool.map(send, np.array_split(rows, parts)):
            assert answer.status_code == 200, answer.text


def monitoring(base: str, scored: int) -> dict[str, Any]:
    """The monitoring figures once every worker's rows are in them (each worker shares its tallies within 1 s)."""
    deadline = time.monotonic() + 10
    while True:
        # a fresh connection each time: whichever worker takes it answers
        figures: dict[str, Any] = httpx.get(f"{base}/v1/models/sensors/monitoring", timeout=10).json()
        if figures["totals"]["scored_rows"] >= scored or time.monotonic() > deadline:
            assert figures["totals"]["scored_rows"] == scored
            return figures
        time.sleep(0.1)


def test_normal_windows_rarely_alarm_and_a_half_sd_shift_on_two_features_alarms_naming_them(sensors: Path) -> None:
    rng = np.random.default_rng(7)
    fresh = httpx.Limits(max_keepalive_connections=0)  # a connection per request
    with (
        vae_serve(sensors, VAE_WORKERS="2", **WINDOW) as (base, _),
        httpx.Client(base_url=base, timeout=30, limits=fresh) as c,
    ):
        scored, alarms, p_values = 0, 0, []
        windows = 15
        for i in range(windows):  # fresh held-out rows, a window of 600 each, scored by both workers
            time.sleep(0.11)  # a new time slot
            if i < windows - 1:
                score_at_once(base, draw(rng, 600))
            else:  # one request, one slot: the parts above can end in two, and the shifted rows below would keep one
                score(c, draw(rng, 600))
            scored += 600
            figures = monitoring(base, scored)
            assert figures["window"]["rows"] == 600 and not figures["window"]["filling"]
            alarms += figures["drift"]["alarm"]
            p_values.append(figures["drift"]["p_value"])
        # at level 0.01, 15 normal windows alarm 0.15 times on average; 2 or more would happen 1% of the time
        assert alarms <= 1, p_values
        assert figures["features"]["moved"] == []

        # the same figures from whichever worker answers (but the seconds the window spans, which run on)
        answers = [httpx.get(f"{base}/v1/models/sensors/monitoring", timeout=10).json() for _ in range(6)]
        for a in answers:
            del a["window"]["seconds"]
        same = {
            json.dumps({k: a[k] for k in ("window", "drift", "flagged", "features")}, sort_keys=True) for a in answers
        }
        assert len(same) == 1
        assert {a["workers"] for a in answers} == {2}

        # shifted rows, 200 at a time, in a window of their own: the normal rows age out first (a window short of its
        # row limit would otherwise fill up with a share of the newest normal slot)
        time.sleep(float(WINDOW["VAE_MONITOR_WINDOW_S"]))
        found_at = None
        for chunk in range(1, 4):
            time.sleep(0.11)  # a new time slot
            score(c, draw(rng, 200, SHIFTED))
            scored += 200
            figures = monitoring(base, scored)
            assert figures["window"]["rows"] == 200 * chunk
            if figures["drift"]["alarm"]:
                found_at = 200 * chunk
                break
        assert found_at is not None and found_at <= 400, figures["drift"]
        assert {row["feature"] for row in figures["features"]["top"][:2]} == set(SHIFTED)
        # first the two shifted; a feature the model reconstructs from the same latents may follow them, further down
        assert set(figures["features"]["moved"][:2]) == set(SHIFTED), figures["features"]["top"]
        assert "f1" in figures["summary"] and "f5" in figures["summary"] and "moved" in figures["summary"]

        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'vae_drift_alarm{model="sensors",version="1"} 1.0' in metrics
        assert f'vae_scored_rows_total{{model="sensors",version="1"}} {float(scored)}' in metrics
        moved = len(figures["features"]["moved"])
        assert f'vae_features_moved{{model="sensors",version="1"}} {float(moved)}' in metrics


def test_a_filling_window_says_so_and_rows_scored_otherwise_are_left_out(sensors: Path) -> None:
    rng = np.random.default_rng(8)
    with vae_serve(sensors, **WINDOW) as (base, _), httpx.Client(base_url=base, timeout=30) as c:
        empty = c.get("/v1/models/sensors/monitoring").json()
        assert empty["window"] == empty["window"] | {"rows": 0, "filling": True}
        assert empty["drift"]["alarm"] is False and empty["summary"] == "no rows scored in the window yet"

        score(c, draw(rng, 150, ["f0", "f1", "f2", "f3"]))  # a strong shift, but too few rows to judge
        figures = c.get("/v1/models/sensors/monitoring").json()
        assert figures["window"]["filling"] and figures["drift"]["p_value"] < 0.01
        assert figures["drift"]["alarm"] is False and figures["features"]["moved"] == []
        assert figures["summary"].startswith("window filling: 150 rows")

        # another K, a seed or fresh noise: scores not comparable with the reference, not counted
        for params in ({"importance_samples": 1}, {"seed": 3}, {"fresh_noise": True}):
            score(c, draw(rng, 100), **params)
        score(c, draw(rng, 100), threshold_quantile=0.5)  # counted: flags are counted at the default threshold
        figures = c.get("/v1/models/sensors/monitoring").json()
        assert figures["totals"]["scored_rows"] == 250 and figures["window"]["rows"] == 250


def test_the_p_values_and_scores_histograms_count_every_scored_row(sensors: Path) -> None:
    rng = np.random.default_rng(9)
    rows = draw(rng, 300)
    with vae_serve(sensors, **WINDOW) as (base, _), httpx.Client(base_url=base, timeout=30) as c:
        answer = c.post("/v1/models/sensors/score", json={"inputs": rows.tolist()}).json()
        metrics = c.get("/metrics").text
    p, s = np.asarray(answer["p_value"]), np.asarray(answer["anomaly_score"], dtype=np.float64)
    buckets = {}
    for line in metrics.splitlines():
        if line.startswith(("vae_score_p_value_bucket", "vae_anomaly_score_bucket")):
            name, _, value = line.rpartition(" ")
            le = name.split('le="')[1].split('"')[0]
            buckets.setdefault(name.split("{")[0], []).append((float(le), float(value)))
    for le, count in buckets["vae_score_p_value_bucket"]:
        assert count == (p <= le).sum()
    score_buckets = buckets["vae_anomaly_score_bucket"]
    assert len(score_buckets) >= 20  # placed from the reference: 19 equal-count cuts, 2 tail edges, +Inf
    for le, count in score_buckets:
        assert abs(count - (s <= le).sum()) <= 1  # the answer's scores are float32; the buckets see float64
    assert score_buckets[-1][1] == 300
    assert f'vae_flagged_rows_total{{model="sensors",version="1"}} {float(sum(answer["is_anomaly"]))}' in metrics


@pytest.mark.anyio
async def test_monitoring_off_and_bundles_without_feature_references_say_what_is_missing(
    sensors: Path, tmp_path: Path
) -> None:
    async with serving(sensors, monitor=False) as client:
        off = (await client.get("/v1/models/sensors/monitoring")).json()
        assert off == {"model": "sensors", "version": 1, "enabled": False, "summary": off["summary"]}
        assert "VAE_MONITOR=false" in off["summary"]
        assert "vae_drift_alarm" not in (await client.get("/metrics")).text

    old = tmp_path / "models"
    shutil.copytree(sensors, old)
    manifest = old / "sensors" / "1" / "manifest.json"
    written = json.loads(manifest.read_text())
    del written["anomaly"]["feature_nll_mean"], written["anomaly"]["feature_nll_std"]
    manifest.write_text(json.dumps(written))
    async with serving(old) as client:
        await client.post("/v1/models/sensors/score", json={"inputs": draw(np.random.default_rng(1), 5).tolist()})
        figures = (await client.get("/v1/models/sensors/monitoring")).json()
        assert figures["features"]["available"] is False and "retrain" in figures["features"]["note"]
        assert figures["window"]["rows"] == 5
