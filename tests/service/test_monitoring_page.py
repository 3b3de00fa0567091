"""The model page's monitoring panel, in headless Chromium on a real vae-serve behind a reader key: it shows what
GET /v1/models/{name}/monitoring answers and refreshes itself while rows are scored, without a reload."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contract import Manifest
from tests.service.browser import browser_page
from tests.service.conftest import vae_serve
from training.config import DataConfig
from training.data import load_table, split_rows
from training.pipeline import RunResult

NAME = "digits-diag"
KEY = "reader-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIN_ROWS = 300  # the served window is judged from this many rows: the 360 held-out rows of the digits are enough
WAIT_MS = 20_000  # four refreshes of the panel (every 5 s)


def _served(run: RunResult, repo: Path) -> Path:
    bundle = repo / NAME / "1"
    shutil.copytree(run.bundle_dir, bundle)
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(manifest.model_copy(update={"name": NAME, "version": 1}).model_dump_json())
    return repo


def _held_out(run: RunResult) -> np.ndarray:
    """The run's validation and test rows (the fixture's split: DataConfig's fractions, seed 0): never trained on,
    and the validation rows are the monitoring's reference."""
    table = load_table("builtin:digits")
    d = DataConfig(source="builtin:digits", seed=0, decorrelate="off")
    split = split_rows(table.x.shape[0], d.val_fraction, d.test_fraction, d.seed)
    assert run.manifest is not None and len(split.val) == run.manifest.training.rows["validation"]
    return table.x[np.concatenate([split.val, split.test])]


def _score(base: str, rows: np.ndarray) -> None:
    r = httpx.post(f"{base}/v1/models/{NAME}/score", json={"inputs": rows.tolist()}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text


def _panel(page: Any) -> dict[str, Any]:
    return page.evaluate(
        """() => ({
            alarm: document.getElementById('drift-alarm').textContent,
            alarmClass: document.getElementById('drift-alarm').className,
            summary: document.getElementById('monitoring-summary').textContent,
            updated: document.getElementById('monitoring-updated').textContent,
            rows: Number(document.getElementById('monitoring').dataset.windowRows),
            bars: [...document.querySelectorAll('#pvalue-histogram rect.bar')].map(b => +b.getAttribute('height')),
            uniform: document.querySelectorAll('#pvalue-histogram line.uniform').length,
            features: [...document.querySelectorAll('#drifted-features tbody tr')].map(r => r.cells[0].textContent),
            moved: [...document.querySelectorAll('#drifted-features tbody tr.moved')].map(r => r.cells[0].textContent),
            window: document.getElementById('monitoring-window').innerText,
            note: document.getElementById('features-note').textContent,
        })"""
    )


def _wait_for_rows(page: Any, rows: int) -> None:
    # a function, not an expression: the page's CSP refuses the eval() Playwright wraps an expression in
    page.wait_for_function(
        "rows => document.getElementById('monitoring').dataset.windowRows === String(rows)", arg=rows, timeout=WAIT_MS
    )


def test_the_monitoring_panel_refreshes_and_shows_the_alarm_when_scores_drift(
    tmp_path: Path, diagonal_run: RunResult
) -> None:
    held_out = _held_out(diagonal_run)
    shifted = held_out[:200] + 8.0  # every pixel 8 levels (of 16) brighter: far from anything trained on
    env = {"VAE_API_KEYS": KEY, "VAE_MONITOR_MIN_ROWS": str(MIN_ROWS)}
    with vae_serve(_served(diagonal_run, tmp_path / "repo"), **env) as (base, _), browser_page() as (page, errors):
        page.goto(f"{base}/models/{NAME}")
        page.fill("#api-key", KEY)
        with page.expect_navigation():
            page.dispatch_event("#api-key", "change")  # the key is kept for the session and the page reloads
        page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        errors.clear()  # the first load, without the key, was refused (401): as it should be
        page.wait_for_selector("#monitoring[data-refreshes]", timeout=WAIT_MS)
        empty = _panel(page)
        page.evaluate("() => { window.sameDocument = true; }")  # gone if the page were reloaded

        _score(base, held_out)
        _wait_for_rows(page, len(held_out))
        normal = _panel(page)
        normal_json = httpx.get(f"{base}/v1/models/{NAME}/monitoring", headers=AUTH).json()

        _score(base, shifted)
        _wait_for_rows(page, len(held_out) + len(shifted))
        drifted = _panel(page)
        drifted_json = httpx.get(f"{base}/v1/models/{NAME}/monitoring", headers=AUTH).json()
        same_document = page.evaluate("() => window.sameDocument === true")
        refreshes = int(page.get_attribute("#monitoring", "data-refreshes") or 0)

    assert empty["alarm"] == "window filling" and "alarm-filling" in empty["alarmClass"]
    assert empty["rows"] == 0 and empty["bars"] == []

    assert normal["alarm"] == "no alarm" and "alarm-off" in normal["alarmClass"], normal["summary"]
    assert normal["summary"] == normal_json["summary"]
    assert f"{len(held_out)} rows" in normal["window"]
    assert len(normal["bars"]) == len(normal_json["p_values"]["upper_edges"]) and sum(normal["bars"]) > 0
    assert normal["uniform"] == 1
    assert normal["features"] == [t["feature"] for t in normal_json["features"]["top"]] and normal["features"]

    assert drifted["alarm"] == "alarm" and "alarm-on" in drifted["alarmClass"]
    assert drifted["summary"] == drifted_json["summary"] and drifted["summary"].startswith("drift")
    assert drifted["rows"] > normal["rows"] > empty["rows"]
    assert empty["updated"] != normal["updated"] != drifted["updated"]  # refreshed on its own, in the same page
    assert same_document and refreshes >= 3
    assert drifted["features"] == [t["feature"] for t in drifted_json["features"]["top"]]
    moved = drifted_json["features"]["moved"]  # every feature past the cut; the table marks those of its ten
    assert drifted["moved"] == [t["feature"] for t in drifted_json["features"]["top"] if t["feature"] in moved]
    assert drifted["moved"] and f"Moved: {len(moved)}." in drifted["note"]
    # a shifted row scores above every reference row: its p-value is the smallest there is, 1 / (n + 1), and the
    # bucket holding it has the tallest bar (the buckets below it stay empty with a reference of n rows)
    smallest = 1 / (drifted_json["reference"]["sample_rows"] + 1)
    edges = drifted_json["p_values"]["upper_edges"]
    first = next(i for i, edge in enumerate(edges) if smallest <= edge)
    assert drifted["bars"][first] == max(drifted["bars"]) > 0 and not any(drifted["bars"][:first])
    assert not errors, errors


def test_the_monitoring_panel_says_so_when_the_service_does_not_monitor(
    tmp_path: Path, diagonal_run: RunResult
) -> None:
    with (
        vae_serve(_served(diagonal_run, tmp_path / "repo"), VAE_MONITOR="false") as (base, _),
        browser_page() as (page, errors),
    ):
        page.goto(f"{base}/models/{NAME}")
        page.wait_for_selector("#monitoring[data-refreshes]", timeout=WAIT_MS)
        status = page.inner_text("#monitoring-status")
        body_hidden = page.eval_on_selector("#monitoring-body", "node => node.hidden")
        bars = page.locator("#pvalue-histogram rect").count()
    assert "monitoring is off (VAE_MONITOR=false)" in status
    assert body_hidden and bars == 0
    assert not errors, errors
