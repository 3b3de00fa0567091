"""The pages a person opens in a browser: / (the models serving) and /models/<name> (one model: its manifest in
words, its report, samples, and a form that scores pasted or uploaded CSV rows).

The pages are static HTML and a little JavaScript served from this package (service/static/): no build step, no
CDN. They hold no model data themselves; their script reads it from the API (/v1/models, /v1/models/<name>, the
report files, /v1/.../sample and /score) with the API key the user types, so a page shows nothing the key does
not already allow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from contract import REPORT_DIR
from runtime.bundle import open_plain
from service.errors import InvalidInput, ModelNotFound, quoted
from service.plumbing import PlainRoute

STATIC = Path(__file__).parent / "static"
ASSETS = "/ui-assets"
REPORT_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.(png|html|json)")  # a plain file name, never a path
MAX_REPORT_BYTES = 32 << 20  # plots and pages of a few hundred KiB; a file far past that is no report's
MEDIA = {"png": "image/png", "html": "text/html; charset=utf-8", "json": "application/json"}


def _page(file: str) -> HTMLResponse:
    return HTMLResponse((STATIC / file).read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})


async def home(request: Request) -> HTMLResponse:
    return _page("index.html")


async def models_page(request: Request) -> RedirectResponse:
    return RedirectResponse("/")


async def model_page(request: Request) -> HTMLResponse:
    return _page("model.html")  # the script reads the name from the address


def report_files(bundle: Path) -> list[str]:
    """The report files a bundle holds (plots first, then index.html and metrics.json), as plain names. Only files
    that resolve inside the bundle folder are listed: a link leading out of it is never served."""
    folder = _report_folder(bundle)
    if folder is None:
        return []
    names = [p.name for p in folder.iterdir() if REPORT_FILE.fullmatch(p.name) and _served(p, bundle) is not None]
    return sorted(names, key=lambda n: (not n.endswith(".png"), n))


def report_file(bundle: Path, file: str, label: str) -> Response:
    """One report file of a bundle, by plain name only (no separators, no dot files, known suffixes)."""
    match = REPORT_FILE.fullmatch(file)
    if match is None:
        raise InvalidInput(f"{quoted(file)} is not a report file name (letters, digits, _ . -; .png, .html or .json)")
    folder = _report_folder(bundle)
    real = None if folder is None else _served(folder / file, bundle)
    opened = None if real is None else _open(real)
    if opened is None:
        why = " (a link leading outside its bundle is not served)" if (bundle / REPORT_DIR / file).is_symlink() else ""
        raise ModelNotFound(f"{label} has no report file {quoted(file)}{why}; it has {report_files(bundle)}")
    # read from the file opened here, from the resolved path and through no link: one swapped in since the check
    # is refused by the open, and one swapped in after it changes nothing this answer holds
    with opened:
        size = os.fstat(opened.fileno()).st_size
        if size > MAX_REPORT_BYTES:
            raise ModelNotFound(
                f"{label}'s report file {quoted(file)} is {size} bytes; at most {MAX_REPORT_BYTES} are served"
            )
        data = opened.read(MAX_REPORT_BYTES)
    return Response(data, media_type=MEDIA[match.group(1)])


def _open(real: Path) -> BinaryIO | None:
    try:
        return open_plain(real)
    except OSError:  # a link or a loop swapped in since the check, or gone
        return None


def _report_folder(bundle: Path) -> Path | None:
    """Where bundle/report resolves, when it is a folder inside the bundle and the bundle inside its repository (a
    served bundle is <repository>/<name>/<version>, whose folder may have become a link since it was verified)."""
    real_bundle, folder, repository = _real(bundle), _real(bundle / REPORT_DIR), _real(bundle.parent.parent)
    if real_bundle is None or folder is None or repository is None:
        return None
    if not real_bundle.is_relative_to(repository) or not folder.is_relative_to(real_bundle):
        return None
    return folder if folder.is_dir() else None


def _served(path: Path, bundle: Path) -> Path | None:
    """Where path resolves (links followed), when that is a plain file inside the bundle folder; else None."""
    real, real_bundle = _real(path), _real(bundle)
    if real is None or real_bundle is None:
        return None
    return real if real.is_relative_to(real_bundle) and real.is_file() else None


def _real(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a loop of links: RuntimeError up to Python 3.12, OSError from 3.13
        return None


def install_pages(app: FastAPI) -> None:
    """The pages and their assets (not in the OpenAPI document: they are not API)."""
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="ui-assets")
    app.router.routes.extend(
        [
            PlainRoute("/", home, methods=["GET"], name="home"),
            PlainRoute("/models", models_page, methods=["GET"], name="models_page"),
            PlainRoute("/models/{name}", model_page, methods=["GET"], name="model_page"),
        ]
    )
