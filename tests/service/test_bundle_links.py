"""Links in the model repository: followed while they stay inside it, refused (with a reason, naming no path) when
they lead outside, for report files as for versions, graphs and manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from service import pages
from service.errors import ModelNotFound
from service.pages import report_file
from tests.service.conftest import serving, vae_serve

ROW = [0.5] * 64
SECRET = '{"secret": "s3cr3t-token-from-outside"}'
OUTSIDE_REPOSITORY = "a link leading outside the model repository"


def _move_out(path: Path, elsewhere: Path) -> None:
    """Move `path` to `elsewhere` and leave a link to it in its place."""
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, elsewhere)
    path.symlink_to(elsewhere, target_is_directory=elsewhere.is_dir())


def _no_path(text: str, *paths: Path) -> None:
    for path in paths:
        assert str(path) not in text and str(path.resolve()) not in text, text


# 1. report files, against a real vae-serve


def test_a_report_link_leading_outside_the_repository_is_not_served(repo: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(SECRET)
    report = repo / "digits-diag" / "1" / "report"
    (report / "leak.json").symlink_to(secret)
    (report / "plot.png").symlink_to(report / "curves.png")  # a link that stays inside the bundle
    (report / "manifest-copy.json").symlink_to("../manifest.json")
    with vae_serve(repo) as (base, _):
        listed = httpx.get(f"{base}/v1/models/digits-diag").json()["report"]
        leak = httpx.get(f"{base}/v1/models/digits-diag/report/leak.json")
        plot = httpx.get(f"{base}/v1/models/digits-diag/report/plot.png")
        manifest = httpx.get(f"{base}/v1/models/digits-diag/report/manifest-copy.json")
    assert "leak.json" not in listed and {"plot.png", "manifest-copy.json", "curves.png"} <= set(listed)
    assert 400 <= leak.status_code < 500 and leak.json()["error"] == "ModelNotFound"
    assert "s3cr3t" not in leak.text and "link leading outside its bundle" in leak.json()["detail"]
    _no_path(leak.text, tmp_path, secret)
    assert plot.status_code == 200 and plot.content == (report / "curves.png").read_bytes()
    assert manifest.status_code == 200 and manifest.json()["name"] == "digits-diag"


@pytest.mark.anyio
async def test_a_report_folder_linked_outside_the_bundle_lists_and_serves_nothing(repo: Path, tmp_path: Path) -> None:
    report = repo / "digits-diag" / "1" / "report"
    _move_out(report, tmp_path / "elsewhere" / "report")
    (tmp_path / "elsewhere" / "report" / "leak.json").write_text(SECRET)
    async with serving(repo) as client:
        listed = (await client.get("/v1/models/digits-diag")).json()["report"]
        plot = await client.get("/v1/models/digits-diag/report/curves.png")
        leak = await client.get("/v1/models/digits-diag/report/leak.json")
    assert listed == []
    assert plot.status_code == 404 and leak.status_code == 404 and "s3cr3t" not in leak.text
    _no_path(leak.text + plot.text, tmp_path)


@pytest.mark.anyio
async def test_a_report_link_loop_is_not_listed_and_not_served(repo: Path) -> None:
    report = repo / "digits-diag" / "1" / "report"
    (report / "a.png").symlink_to("b.png")
    (report / "b.png").symlink_to("a.png")
    async with serving(repo) as client:
        listed = (await client.get("/v1/models/digits-diag")).json()["report"]
        loop = await client.get("/v1/models/digits-diag/report/a.png")
    assert "a.png" not in listed and "curves.png" in listed
    assert loop.status_code == 404 and loop.json()["error"] == "ModelNotFound"


@pytest.mark.anyio
async def test_a_bundle_turned_into_a_link_after_loading_serves_no_report_from_outside(
    repo: Path, tmp_path: Path
) -> None:
    bundle = repo / "digits-diag" / "1"
    async with serving(repo) as client:
        # the verified bundle is moved away and a link to a folder outside put in its place
        shutil.move(bundle, tmp_path / "moved")
        (tmp_path / "elsewhere" / "report").mkdir(parents=True)
        (tmp_path / "elsewhere" / "report" / "leak.json").write_text(SECRET)
        bundle.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        listed = (await client.get("/v1/models/digits-diag")).json()["report"]
        leak = await client.get("/v1/models/digits-diag/report/leak.json")
    assert listed == [] and leak.status_code == 404 and "s3cr3t" not in leak.text


@pytest.mark.anyio
async def test_a_report_file_swapped_for_a_link_after_its_answer_began_is_not_read_through_the_link(
    repo: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(SECRET)
    bundle = repo / "digits-diag" / "1"
    metrics = bundle / "report" / "metrics.json"
    original = metrics.read_bytes()
    answer = report_file(bundle, "metrics.json", "digits-diag")  # checked; its body is sent later
    metrics.unlink()
    metrics.symlink_to(secret)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "asgi": {"spec_version": "2.4"}}
    await answer(scope, receive, send)  # type: ignore[arg-type]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    assert body == original and answer.headers["content-length"] == str(len(original))


def test_a_report_file_swapped_for_a_link_between_the_check_and_the_open_is_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(SECRET)
    bundle = repo / "digits-diag" / "1"
    checked = pages._served

    def swapped_after_the_check(path: Path, in_bundle: Path) -> Path | None:
        real = checked(path, in_bundle)
        if real is not None and real.name == "metrics.json":
            real.unlink()
            real.symlink_to(secret)
        return real

    monkeypatch.setattr(pages, "_served", swapped_after_the_check)
    with pytest.raises(ModelNotFound, match="no report file 'metrics.json'"):
        report_file(bundle, "metrics.json", "digits-diag")


def test_a_report_folder_swapped_for_a_link_between_the_check_and_the_open_is_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "metrics.json").write_text(SECRET)
    bundle = repo / "digits-diag" / "1"
    checked = pages._served

    def folder_swapped_after_the_check(path: Path, in_bundle: Path) -> Path | None:
        real = checked(path, in_bundle)
        if real is not None:
            real.parent.rename(tmp_path / "moved-report")
            real.parent.symlink_to(elsewhere, target_is_directory=True)
        return real

    monkeypatch.setattr(pages, "_served", folder_swapped_after_the_check)
    with pytest.raises(ModelNotFound, match="no report file 'metrics.json'"):
        report_file(bundle, "metrics.json", "digits-diag")


# 2. versions, model folders, graphs and manifests


async def _refusal_and_the_rest(repo: Path, key: str) -> tuple[str, dict[str, object]]:
    async with serving(repo) as client:
        listing = await client.get("/v1/models")
        served = {
            name: (await client.post(f"/v1/models/{name}/score", json={"inputs": [ROW]})).json().get("version")
            for name in ("digits-diag", "digits-full")
        }
    _no_path(listing.text, repo)
    return listing.json()["refused"][key], served


@pytest.mark.anyio
async def test_a_version_linked_outside_the_repository_is_refused_and_the_older_one_keeps_serving(
    repo: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "elsewhere" / "2"
    shutil.copytree(repo / "digits-diag" / "1", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))  # a bundle that verifies, but outside
    (repo / "digits-diag" / "2").symlink_to(copy, target_is_directory=True)
    reason, served = await _refusal_and_the_rest(repo, "digits-diag/2")
    assert reason == f"the bundle folder is, or is inside, {OUTSIDE_REPOSITORY}"
    assert served == {"digits-diag": 1, "digits-full": 1}
    _no_path(reason, tmp_path)


@pytest.mark.anyio
async def test_a_model_folder_linked_outside_the_repository_is_refused(repo: Path, tmp_path: Path) -> None:
    _move_out(repo / "digits-full", tmp_path / "elsewhere" / "digits-full")
    reason, served = await _refusal_and_the_rest(repo, "digits-full/1")
    assert reason == f"the bundle folder is, or is inside, {OUTSIDE_REPOSITORY}"
    assert served == {"digits-diag": 1, "digits-full": None}


@pytest.mark.anyio
@pytest.mark.parametrize("file", ["encoder.onnx", "scorer.onnx", "manifest.json"])
async def test_a_graph_or_manifest_linked_outside_the_repository_is_refused(
    repo: Path, tmp_path: Path, file: str
) -> None:
    _move_out(repo / "digits-full" / "1" / file, tmp_path / "elsewhere" / file)  # the same bytes, linked
    reason, served = await _refusal_and_the_rest(repo, "digits-full/1")
    assert reason == f"{file} is {OUTSIDE_REPOSITORY}"
    assert served == {"digits-diag": 1, "digits-full": None}


@pytest.mark.anyio
async def test_links_that_stay_inside_the_repository_still_serve(repo: Path) -> None:
    _move_out(repo / "digits-full" / "1" / "scorer.onnx", repo / ".shared" / "digits-full-scorer.onnx")
    async with serving(repo) as client:
        listing = (await client.get("/v1/models")).json()
        r = await client.post("/v1/models/digits-full/score", json={"inputs": [ROW]})
    assert listing["refused"] == {} and r.status_code == 200 and r.json()["version"] == 1
