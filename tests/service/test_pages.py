"""The pages a person opens: / and /models/<name> (manifest in words, report, samples, scoring form), their report
files behind the API key, and /docs and /redoc rendered offline in headless Chromium."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.browser import browser_page
from tests.service.conftest import serving, vae_serve
from training.data import load_table
from training.diagnostic_warnings import diagnostic_warnings
from training.pipeline import RunResult
from vae_tables.text import text_layout

DIGITS = load_table("builtin:digits")


@pytest.mark.anyio
async def test_model_detail_lists_the_report_files_and_serves_each(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        detail = (await client.get("/v1/models/digits-diag")).json()
        assert "curves.png" in detail["report"] and "metrics.json" in detail["report"]
        on_disk = {p.name for p in (serving_repository / "digits-diag" / "1" / "report").iterdir()}
        assert set(detail["report"]) == {n for n in on_disk if n.rsplit(".", 1)[-1] in ("png", "html", "json")}
        png = await client.get("/v1/models/digits-diag/report/curves.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("file", "status"),
    [
        ("..%2Fmanifest.json", 404),  # an encoded separator never matches the route
        ("manifest.json", 404),  # a plain name, but not a report file
        (".hidden.png", 422),
        ("curves.PNG.exe", 422),
        ("nothing.png", 404),
    ],
)
async def test_report_files_are_served_by_plain_name_only(serving_repository: Path, file: str, status: int) -> None:
    async with serving(serving_repository) as client:
        r = await client.get(f"/v1/models/digits-diag/report/{file}")
    assert r.status_code == status
    assert set(r.json()) == {"error", "detail"} and str(serving_repository) not in r.json()["detail"]


@pytest.mark.anyio
async def test_pages_are_open_but_the_data_behind_them_needs_the_key(serving_repository: Path) -> None:
    async with serving(serving_repository, api_keys=["k1"]) as client:
        for path in ("/", "/models/digits-diag", "/ui-assets/model.js", "/ui-assets/page.css"):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/v1/models/digits-diag/report/curves.png")).status_code == 401
        ok = await client.get("/v1/models/digits-diag/report/curves.png", headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200
        page = (await client.get("/models/digits-diag")).text
    assert "http://" not in page and "https://" not in page  # nothing from another host


def _png_size(data: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_model_page_shows_the_model_and_scores_a_pasted_row_as_the_api_does(live_server: str, tmp_path: Path) -> None:
    detail = httpx.get(f"{live_server}/v1/models/e2e").json()
    names = detail["manifest"]["feature_names"]
    rows = DIGITS.x[[3, 500]]
    order = np.random.default_rng(0).permutation(len(names))  # columns in another order: matched by name
    csv = ",".join(names[j] for j in order) + "\n" + "\n".join(",".join(f"{v:g}" for v in r[order]) for r in rows)
    expected = httpx.post(f"{live_server}/v1/score", json={"inputs": rows.tolist()}).json()

    with browser_page() as (page, errors):
        page.goto(f"{live_server}/models/e2e")
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        # functions, not expressions: the page's CSP refuses the eval() Playwright wraps an expression in once it
        # has to poll (an expression true at the first look never gets there, so it passed by timing alone)
        page.wait_for_function("() => document.querySelectorAll('#samples canvas').length === 32", timeout=20_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#report img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=20_000,
        )
        assert page.locator("#report img").count() == sum(f.endswith(".png") for f in detail["report"])
        assert "e2e · version 1" in page.inner_text("#title")
        diagnostics = page.inner_text("#diagnostics")
        assert "active latent units" in diagnostics and f"of {detail['latent_dim']}" in diagnostics
        prior = detail["manifest"]["prior"]  # the prior in words, and the samples say which they came from
        training = page.inner_text("#training")
        if prior is None:
            assert "N(0, I)" in training and "N(0, I)" in page.inner_text("#samples-help")
        else:
            assert f"Gaussian mixture of {len(prior['weights'])} component" in training
            assert "fitted mixture" in page.inner_text("#samples-help")
        page.fill("#rows", csv)
        page.click("#score")
        page.wait_for_selector("#scores tbody tr", timeout=20_000)
        scores = page.eval_on_selector_all("#scores tbody tr", "rows => rows.map(r => r.dataset.score)")
        shown = [float(s) for s in scores]
        flags = page.eval_on_selector_all("#scores tbody tr td:nth-child(5)", "cells => cells.map(c => c.innerText)")
        shot = page.screenshot(path=str(tmp_path / "model.png"), full_page=True)
        page.click("#example")  # the training rows' mean: a constant column at its value (digits' blank corners, 0)
        example = [float(v) for v in page.input_value("#rows").splitlines()[1].split(",")]
        page.fill("#rows", "1,5,3")
        page.click("#score")
        page.wait_for_selector("#score-error .error", timeout=10_000)
        wrong_width = page.inner_text("#score-error")
        # a model whose features pandas named 0, 1, 2: a first line naming them all is its header, in any order
        numbered = {"feature_names": ["0", "1", "2"], "input_dim": 3}
        parsed = [
            page.evaluate("([text, m]) => toInputs(parseCsv(text), m)", [text, numbered])
            for text in ("2,0,1\n7,5,6", "0,1,2\n5,6,7", "1,2,3\n5,6,7", "0,1,2\n2,1,0")
        ]
        pair = {"feature_names": ["0", "1"], "input_dim": 2}  # flags 0 and 1: a row 1,0 is a row
        parsed.append(page.evaluate("([text, m]) => toInputs(parseCsv(text), m)", ["1,0\n0,0", pair]))
        # the page's header rule is vae-score's for a file of the same text
        page_headers = [
            page.evaluate("([text, names]) => hasHeader(parseCsv(text), names)", [text, names])
            for text, names, _ in HEADER_CASES
        ]
        unnamed = {"feature_names": None, "input_dim": 3}
        pasted = [
            page.evaluate(
                "([text, m]) => { try { return toInputs(parseCsv(text), m); } catch (e) { return e.message; } }",
                [text, unnamed],
            )
            for text in ("1,2,3", "1_000,2,-3e1", "inf,1,2", "1,2,3\n5,7,6", "٣,１_０,𝟐.５")
        ]
    kinds = detail["manifest"]["preprocessing"]["kinds"]
    constants = [j for j, kind in enumerate(kinds) if kind == "constant"]
    assert constants and all(example[j] == DIGITS.x[0, j] == 0 for j in constants)
    assert all(DIGITS.x[:, j].min() <= v <= DIGITS.x[:, j].max() for j, v in enumerate(example))
    assert shown == pytest.approx(expected["anomaly_score"], rel=1e-6, abs=1e-6)
    assert flags == ["anomaly" if f else "normal" for f in expected["is_anomaly"]]
    width, height = _png_size(shot)
    assert width == 1200 and height > 2000  # every section rendered, plots included
    assert "Row 1 has 3 values; the model takes 64" in wrong_width
    # 0,1,2 above 2,1,0: pandas' header of unnamed columns (counting up), as vae-score reads it
    assert parsed == [[[5, 6, 7]], [[5, 6, 7]], [[1, 2, 3], [5, 6, 7]], [[2, 1, 0]], [[1, 0], [0, 0]]]
    file_headers = []
    for i, (text, names, _) in enumerate(HEADER_CASES):
        (tmp_path / f"case{i}.csv").write_text(text + "\n")
        file_headers.append(text_layout(tmp_path / f"case{i}.csv", header_names=names)[2] == 1)
    assert page_headers == file_headers
    assert file_headers == [header for *_, header in HEADER_CASES]
    # a paste of one line counting up is a row (a file of it would be a header alone); values as vae-score reads them
    assert pasted == [
        [[1, 2, 3]],
        [[1000, 2, -30]],
        'Row 1, column 1: "inf" is not a finite number.',
        "The first line (1, 2, 3, …) is read as a header, as vae-score reads a file: whole numbers counting up by one "
        "are the names pandas gives unnamed columns. This model has no feature names: send rows of numbers without a "
        "header.",
        [[3, 10, 2.5]],  # Arabic-Indic, fullwidth and mathematical digits, as float() reads them
    ]
    assert not errors, errors


# (pasted text, the model's feature names, whether its first line is the header): for the page and for vae-score
HEADER_CASES: list[tuple[str, list[str] | None, bool]] = [
    ("2,0,1\n7,5,6", ["0", "1", "2"], True),  # the names, in another order
    ("0,1,2\n5,6,7", ["0", "1", "2"], True),
    ("1,2,3\n5,6,7", ["0", "1", "2"], False),  # not the names; counting up, but so is the next line: rows
    ("0,1,2\n2,1,0", ["0", "1", "2"], True),  # the names, and counting up: pandas' header of unnamed columns
    ("1,0\n0,0", ["0", "1"], False),  # two flags: a row
    ("0,1,2\n5,6,7", ["a", "b", "c"], False),  # counting up, and so is the next line: rows
    ("0,1,2\n5,7,6", ["a", "b", "c"], True),  # counting up alone: a header (which lacks the model's names)
    (",5,7,9\n0,1,2,3", ["5", "7", "9"], True),  # the names after pandas' unnamed index column
    ("5,7,9,NA\n1,2,3,4", ["5", "7", "9"], False),  # the names and a missing value: a row of numbers, not exactly them
    ("a,b,c\n1,2,3", None, True),  # words: a header, names or not
    ("1,NA,3\n4,5,6", None, False),  # a row with a missing value
    (",0,1,2\n0,5,1,7", None, True),  # pandas' index column, then columns 0, 1, 2
    ("inf,1,2\n3,4,5", None, False),  # numbers as Python's float() reads them: inf, -inf, 1_000 are; 0x10 is not
    ("١,٢,٣\n٤,٥,٦", None, False),  # other scripts' digits are numbers for float()
    ("١,٢,٣\n٤,٦,٥", None, False),  # and never a count up for pandas' header (the next line does not count up)
    ("-inf,0.5,2\n3,4,5", ["a", "b", "c"], False),
    ("1_000,2,3\n4,5,6", None, False),
    ("0x10,1,2\n3,4,5", None, True),
]


def _served_copy(run: RunResult, repo: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    # the run's bundle as <repo>/<name>/1, its manifest.json changed in place (graphs untouched: hashes still hold)
    bundle = repo / name / "1"
    shutil.copytree(run.bundle_dir, bundle)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw.update(name=name, version=1)
    change(raw)
    (bundle / "manifest.json").write_text(json.dumps(raw, indent=2))


def test_model_page_shows_the_manifest_warnings_and_none_for_a_bundle_written_before_them(
    tmp_path: Path, diagonal_run: RunResult
) -> None:
    v = diagonal_run.manifest.diagnostics["validation"]
    (gap,) = [w for w in diagnostic_warnings(v.model_copy(update={"gap": 1e4})) if w.kind == "gap"]

    def store_gap(raw: dict[str, Any]) -> None:
        raw["diagnostics"]["validation"]["warnings"] = [gap.model_dump()]

    def written_before(raw: dict[str, Any]) -> None:
        for split in raw["diagnostics"].values():
            split.pop("warnings")

    _served_copy(diagonal_run, tmp_path / "repo", "gap", store_gap)
    _served_copy(diagonal_run, tmp_path / "repo", "old", written_before)
    shown = {}
    with vae_serve(tmp_path / "repo") as (base, _), browser_page() as (page, errors):
        details = {name: httpx.get(f"{base}/v1/models/{name}").json() for name in ("gap", "old")}
        for name in details:
            page.goto(f"{base}/models/{name}")
            page.wait_for_selector("body[data-ready=true]", timeout=20_000)
            shown[name] = page.eval_on_selector_all("#warnings .warn", "nodes => nodes.map(n => n.textContent)")
    assert details["old"]["manifest"]["diagnostics"]["validation"]["warnings"] == []
    # the manifest's words as stored, then the anomaly reference's (the same for both: the same bundle)
    assert shown["gap"] == [gap.message, *details["gap"]["warnings"]]
    assert shown["old"] == details["old"]["warnings"]
    assert "variational gap IWAE - ELBO is 1e+04 nats" in gap.message
    assert not errors, errors


def test_home_page_links_every_model(live_server: str) -> None:
    with browser_page() as (page, errors):
        page.goto(f"{live_server}/")
        page.wait_for_selector("#models tbody tr", timeout=20_000)
        links = page.eval_on_selector_all("#models a", "links => links.map(a => a.getAttribute('href'))")
    assert links == ["/models/e2e"]
    assert not errors, errors


def _foreign(urls: list[str], base: str) -> list[str]:
    """The requests a page made to anywhere but the service (its own blob: and data: URLs are local)."""
    return [u for u in urls if not u.startswith((f"{base}/", "blob:", "data:"))]


def _operations(spec: dict[str, object]) -> int:
    paths = spec["paths"]
    assert isinstance(paths, dict)
    return sum(len(item) for item in paths.values())


@pytest.mark.parametrize(
    ("page_path", "operation"),
    [("/docs", ".opblock"), ("/redoc", "[data-section-id^='operation/']")],  # Swagger UI, ReDoc
)
def test_api_pages_render_offline_and_list_every_operation(live_server: str, page_path: str, operation: str) -> None:
    spec = httpx.get(f"{live_server}/openapi.json").json()
    requested: list[str] = []
    with browser_page() as (page, errors):
        page.on("request", lambda r: requested.append(r.url))
        page.goto(f"{live_server}{page_path}")
        page.wait_for_selector(operation, state="attached", timeout=60_000)
        shown = page.locator(operation).count()
        text = page.inner_text("body")
    assert shown == _operations(spec)
    assert "/v1/models/{name}/score" in text.replace("\u200b", "")
    assert not _foreign(requested, live_server)
    assert not errors, errors
