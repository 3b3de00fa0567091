"""The pages a person opens in a browser: / (the models serving) and /models/<name> (one model: its manifest in
words, its report, samples, and a form that scores pasted or uploaded CSV rows).

The pages are static HTML and a little JavaScript served from this package (service/static/): no build step, no
CDN. They hold no model data themselves; their script reads it from the API (/v1/models, /v1/models/<name>, the
report files, /v1/.../sample and /score) with the API key the user types, so a page shows nothing the key does
not already allow.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from contract import REPORT_DIR
from service.errors import InvalidInput, ModelNotFound

STATIC = Path(__file__).parent / "static"
ASSETS = "/ui-assets"
REPORT_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.(png|html|json)")  # a plain file name, never a path
MEDIA = {"png": "image/png", "html": "text/html; charset=utf-8", "json": "application/json"}
pages = APIRouter(include_in_schema=False)


def _page(file: str) -> HTMLResponse:
    return HTMLResponse((STATIC / file).read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})


@pages.get("/")
async def home() -> HTMLResponse:
    return _page("index.html")


@pages.get("/models")
async def models_page() -> RedirectResponse:
    return RedirectResponse("/")


@pages.get("/models/{name}")
async def model_page(name: str) -> HTMLResponse:
    return _page("model.html")  # the script reads the name from the address


def report_files(bundle: Path) -> list[str]:
    """The report files a bundle holds (plots first, then index.html and metrics.json), as plain names."""
    folder = bundle / REPORT_DIR
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_file() and REPORT_FILE.fullmatch(p.name)]
    return sorted(names, key=lambda n: (not n.endswith(".png"), n))


def report_file(bundle: Path, file: str, label: str) -> FileResponse:
    """One report file of a bundle, by plain name only (no separators, no dot files, known suffixes)."""
    match = REPORT_FILE.fullmatch(file)
    if match is None:
        raise InvalidInput(f"{file!r} is not a report file name (letters, digits, _ . -; .png, .html or .json)")
    if file not in report_files(bundle):
        raise ModelNotFound(f"{label} has no report file {file!r}; it has {report_files(bundle)}")
    return FileResponse(bundle / REPORT_DIR / file, media_type=MEDIA[match.group(1)])


def install_pages(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="ui-assets")
    app.include_router(pages)
