"""Security headers (service/middleware.py, openapi.install_docs): every answer is nosniff; the pages and the docs
carry a Content-Security-Policy without inline script (the docs' own inline script allowed by hash) and refuse to
be framed; a report's index.html is sandboxed. The request log stays one line per request whatever the path, and a
client's X-Request-ID is kept only when it is of the safe charset. Checked in-process, on a real vae-serve, and in
headless Chromium (the policies must not break the pages)."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from service.metrics import Metrics
from service.middleware import PAGE_POLICY, REPORT_POLICY, RequestContext
from tests.service.browser import browser_page
from tests.service.conftest import serving, vae_serve

MODEL = "digits-diag"
REPORT = f"/v1/models/{MODEL}/report"
PAGES = ["/", f"/models/{MODEL}", "/ui-assets/index.html"]
DOCS = ["/docs", "/redoc"]
ROW = [0.0] * 64


def _directives(policy: str) -> dict[str, list[str]]:
    parsed = (d.split() for d in policy.split(";") if d.strip())
    return {name: sources for name, *sources in parsed}


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _assert_page_policy(headers: httpx.Headers, path: str) -> dict[str, list[str]]:
    """The headers every HTML page of the service gets; returns its policy's directives."""
    assert headers["x-content-type-options"] == "nosniff", path
    assert headers["x-frame-options"] == "DENY", path
    assert len(headers.get_list("content-security-policy")) == 1, path
    policy = _directives(headers["content-security-policy"])
    assert policy["default-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"], path
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"], path
    assert policy["form-action"] == ["'self'"], path
    script = policy.get("script-src", policy["default-src"])
    assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script and "*" not in script, path
    return policy


@pytest.mark.anyio
@pytest.mark.parametrize("path", PAGES)
async def test_pages_get_a_policy_without_inline_script_and_refuse_framing(serving_repository: Path, path: str) -> None:
    async with serving(serving_repository) as client:
        r = await client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    _assert_page_policy(r.headers, path)
    assert r.headers["content-security-policy"] == PAGE_POLICY
    assert "<script>" not in r.text and "style=" not in r.text  # nothing inline for the policy to refuse


@pytest.mark.anyio
@pytest.mark.parametrize("path", DOCS)
async def test_docs_allow_exactly_their_own_inline_scripts_and_styles_by_hash(
    serving_repository: Path, path: str
) -> None:
    async with serving(serving_repository) as client:
        r = await client.get(path)
    policy = _assert_page_policy(r.headers, path)
    inline_scripts = re.findall(r"<script>(.*?)</script>", r.text, flags=re.DOTALL)
    hashes = {s for s in policy["script-src"] if s.startswith("'sha256-")}
    assert hashes == {_sha256(s) for s in inline_scripts}, path
    assert path != "/docs" or hashes  # Swagger UI's start-up script is inline


@pytest.mark.anyio
async def test_report_index_is_sandboxed_without_scripts_and_report_files_are_not_sniffed(
    serving_repository: Path,
) -> None:
    async with serving(serving_repository) as client:
        index = await client.get(f"{REPORT}/index.html")
        png = await client.get(f"{REPORT}/curves.png")
        metrics = await client.get(f"{REPORT}/metrics.json")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert index.headers["content-security-policy"] == REPORT_POLICY
    policy = _directives(REPORT_POLICY)
    assert policy["sandbox"] == [] and policy["default-src"] == ["'none'"]  # no allow-scripts, no same origin
    assert policy["img-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assert "<style>" in index.text and policy["style-src"] == ["'unsafe-inline'"]  # the report's own stylesheet
    assert index.headers["x-frame-options"] == "DENY"
    for r in (index, png, metrics):
        assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    for r in (png, metrics):
        assert _directives(r.headers["content-security-policy"])["default-src"] == ["'none'"]


@pytest.mark.anyio
async def test_json_answers_get_nosniff_and_nothing_else(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        answers = [
            await client.post("/v1/score", json={"inputs": [ROW]}),
            await client.post(f"/v1/models/{MODEL}/encode", json={"inputs": [ROW]}),
            await client.get("/no/such/page"),
            await client.get("/openapi.json"),
        ]
    for r in answers:
        assert r.headers["content-type"].startswith("application/json"), r.url
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "content-security-policy" not in r.headers and "x-frame-options" not in r.headers


SAFE_IDS = ["abc-1", "f47ac10b-58cc-4372-a567-0e02b2c3d479", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
UNSAFE_IDS = [b"a b", b"x status=200", b'"quoted"', b"x" * 65, b"", b"caf\xe9", b"tab\there", b"a,b"]


@pytest.mark.anyio
async def test_a_request_id_of_the_safe_charset_is_kept_and_any_other_is_replaced(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        kept = [(await client.get("/healthz", headers={"X-Request-ID": i})).headers["x-request-id"] for i in SAFE_IDS]
        replaced = [
            (await client.get("/healthz", headers=[(b"X-Request-ID", i)])).headers["x-request-id"] for i in UNSAFE_IDS
        ]
    assert kept == SAFE_IDS
    for sent, got in zip(UNSAFE_IDS, replaced, strict=True):
        assert got.encode() != sent and re.fullmatch(r"[0-9a-f]{12}-\d+", got), (sent, got)


def _failing_app() -> RequestContext:
    """RequestContext, logging every request, around a bare ASGI app: /boom... raises, anything else answers 200."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].startswith("/boom"):
            raise RuntimeError("boom")
        await PlainTextResponse("ok")(scope, receive, send)

    return RequestContext(app, metrics=Metrics(), log_requests=True, model_label=lambda scope, params: "-")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("sent", "logged"),
    [
        ("/x%0Ainjected status=200", "/x%0Ainjected%20status=200"),
        ("/x%0D%0Arequest_id=forged", "/x%0D%0Arequest_id=forged"),
        ("/x%E2%80%A8y%1B[31m", "/x%E2%80%A8y%1B[31m"),  # U+2028 line separator, an ANSI escape
        ("/caf%C3%A9/ok", "/café/ok"),  # printable text is logged as it is
    ],
)
async def test_a_path_cannot_add_a_line_or_a_field_to_the_log(
    caplog: pytest.LogCaptureFixture, sent: str, logged: str
) -> None:
    transport = httpx.ASGITransport(app=_failing_app(), raise_app_exceptions=False)
    with caplog.at_level(logging.INFO, logger="service.access"):
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get(sent)).status_code == 200
            assert (await client.get(f"/boom{sent}")).status_code == 500
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # request, unhandled error, request
    assert all("\n" not in line and "\r" not in line and line.isprintable() for line in lines), lines
    assert f"path={logged} status=200" in lines[0]
    assert lines[1].endswith(f"path=/boom{logged}") and f"path=/boom{logged} status=500" in lines[2]


@pytest.fixture(scope="module")
def live(serving_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real vae-serve logging every request at info level to a file; yields (base URL, log file)."""
    log_file = tmp_path_factory.mktemp("security-log") / "serve.log"
    with (
        log_file.open("wb") as stderr,
        vae_serve(serving_repository, stderr=stderr, log_level="info", VAE_LOG_REQUESTS="true") as (base, _),
    ):
        yield base, log_file


def test_a_real_server_sends_the_headers_and_logs_an_encoded_newline_on_one_line(live: tuple[str, Path]) -> None:
    base, log_file = live
    with httpx.Client(base_url=base) as client:
        pages = {path: client.get(path) for path in [*PAGES, *DOCS]}
        index, png = client.get(f"{REPORT}/index.html"), client.get(f"{REPORT}/curves.png")
        score = client.post("/v1/score", json={"inputs": [ROW]}, headers={"X-Request-ID": "k=v injected=1"})
        injected = client.get("/x%0Ainjected=1%0D%0Afake", headers={"X-Request-ID": "sec-test-1"})
    for path, r in pages.items():
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        _assert_page_policy(r.headers, path)
    assert index.headers["content-security-policy"] == REPORT_POLICY and index.headers["x-frame-options"] == "DENY"
    assert png.headers["x-content-type-options"] == "nosniff" and png.headers["content-type"] == "image/png"
    assert score.status_code == 200 and score.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in score.headers and score.headers["x-request-id"] != "k=v injected=1"
    assert injected.status_code == 404
    log = _log_text(log_file, "request_id=sec-test-1 ")
    lines = log.splitlines()
    ours = [line for line in lines if "request_id=sec-test-1 " in line]
    assert len(ours) == 1 and "path=/x%0Ainjected=1%0D%0Afake status=404" in ours[0], ours
    assert not any(line.startswith(("injected", "fake")) for line in lines)
    assert "k=v" not in log and "injected=1 " not in log


def _log_text(log_file: Path, wanted: str, timeout_s: float = 10.0) -> str:
    """The server's log once it holds `wanted` (the worker writes it after answering)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = log_file.read_text(encoding="utf-8", errors="replace")
        if wanted in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""
# a function, not an expression: the page's CSP refuses the eval() Playwright wraps an expression in when it polls
IMAGES_LOADED = "() => (imgs => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0))([...{}])"


def _use(page: Any, path: str) -> None:
    """Wait until the page has rendered, then use what its policy could break: the model page's report plots
    (blob: URLs), Swagger UI's "Try it out" (a request from the page), ReDoc's search (a blob: worker)."""
    if path == "/":
        page.wait_for_selector("#models tbody tr", timeout=20_000)
    elif path == "/docs":
        page.wait_for_selector(".opblock", timeout=60_000)
        page.locator(".opblock-summary").filter(has_text="/healthz").first.click()
        page.get_by_text("Try it out").first.click()
        page.locator(".execute").first.click()
        page.wait_for_selector(".live-responses-table .response", timeout=20_000)
    elif path == "/redoc":
        page.wait_for_selector("[data-section-id^='operation/']", state="attached", timeout=60_000)
        page.fill("input[placeholder='Search...']", "score")
        page.wait_for_selector("[data-role='search:results'] li", state="attached", timeout=20_000)
    else:
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        page.wait_for_function(IMAGES_LOADED.format("document.querySelectorAll('#report img')"), timeout=20_000)
    page.wait_for_load_state("networkidle", timeout=30_000)


@pytest.mark.parametrize("path", ["/", f"/models/{MODEL}", "/docs", "/redoc"])
def test_pages_and_docs_work_in_chromium_under_their_policy_without_a_violation(
    live: tuple[str, Path], path: str
) -> None:
    base, _ = live
    with browser_page() as (page, errors):
        page.add_init_script(RECORD_VIOLATIONS)
        page.goto(f"{base}{path}")
        _use(page, path)
        violations = page.evaluate("window.__violations")
        rendering_errors = list(errors)
        # the policy is enforced, not only sent: a script injected into the page does not run
        page.evaluate(
            "document.body.append(Object.assign(document.createElement('script'), {textContent: 'window.ran = 1'}))"
        )
        ran = page.evaluate("window.ran === 1")
    assert not violations, violations
    assert not rendering_errors, rendering_errors
    assert not ran and any("Content Security Policy" in e for e in errors[len(rendering_errors) :]), errors


def test_report_index_renders_sandboxed_in_chromium_with_its_plots_and_styles(live: tuple[str, Path]) -> None:
    base, _ = live
    with browser_page() as (page, errors):
        page.goto(f"{base}{REPORT}/index.html")
        page.wait_for_function(IMAGES_LOADED.format("document.images"), timeout=20_000)
        max_width = page.evaluate("getComputedStyle(document.body).maxWidth")
        origin = page.evaluate("window.origin")
    assert max_width == "1100px"  # its inline <style> applies
    assert origin == "null"  # sandboxed: an opaque origin, no access to the service's storage
    assert not errors, errors
