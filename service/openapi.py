"""The OpenAPI document as the service really behaves: its error bodies (not FastAPI's HTTPValidationError, which
it never sends), and the API-key schemes on the guarded operations when keys are configured; and the pages that
show it, /docs and /redoc, served with their assets from the installed packages."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from contract import Manifest
from service.endpoints import Endpoint, documented, guarded

ASSETS = "/docs-assets"
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "the error kind, e.g. InvalidInput, ModelNotFound, QueueFull"},
        "detail": {"type": "string", "description": "what was wrong, naming the field, row and column"},
    },
}
V2_ERROR = {  # the Open Inference Protocol's error body
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "<kind>: <what was wrong>"}},
}
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts and styles served from an installed package
    (fastapi-offline's copies), never from a CDN: the pages work on a host without internet. Each page is rendered
    once, here, and served under a Content-Security-Policy that allows exactly its own inline code, by hash."""
    import fastapi_offline

    from service.middleware import html_policy, inline_hashes

    assets = Path(fastapi_offline.__file__).parent / "static"
    # ReDoc's sidebar always shows a logo from its CDN: the script is served with that address made local
    redoc_js = (assets / "redoc.standalone.js").read_bytes().replace(REDOC_CDN_LOGO, f"{ASSETS}/favicon.png".encode())

    @app.get(f"{ASSETS}/redoc.standalone.js", include_in_schema=False)
    async def redoc_script() -> Response:
        return Response(redoc_js, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    app.mount(ASSETS, StaticFiles(directory=assets), name="docs-assets")

    def policed(html: HTMLResponse, **policy: str) -> tuple[str, dict[str, str]]:
        """The page and its policy: the pages' own, its inline <script>s and <style>s allowed by hash, then `policy`."""
        text = bytes(html.body).decode()
        hashed = {f"{tag}_src": f"'self' {inline_hashes(text, tag)}".strip() for tag in ("script", "style")}
        return text, {"Content-Security-Policy": html_policy(**{**hashed, **policy})}

    swagger = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{app.title} - API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon.png",
    )
    redoc = get_redoc_html(
        openapi_url="/openapi.json",
        title=f"{app.title} - reference",
        redoc_js_url=f"{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS}/favicon.png",
        with_google_fonts=False,
    )
    swagger_page, swagger_headers = policed(swagger)
    # ReDoc's styled-components and its scrollbar's CSS add <style> elements as it renders, so styles (never
    # scripts) may be inline there; its search index runs in a worker it starts from a blob: of its own script
    redoc_page, redoc_headers = policed(redoc, style_src="'self' 'unsafe-inline'", worker_src="blob:")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(swagger_page, headers=swagger_headers)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_ui() -> HTMLResponse:
        return HTMLResponse(redoc_page, headers=redoc_headers)


def install(app: FastAPI, keys_configured: bool, endpoints: list[Endpoint]) -> None:
    """Replace app.openapi with a generator that documents the endpoints and the real error bodies (built once,
    then cached)."""

    sized: dict[tuple[str, int] | None, dict[str, Any]] = {}  # the schema with examples for the default model

    def openapi() -> dict[str, Any]:
        """The schema, its request examples sized to the default model now serving ("Try it out" then works). With
        keys configured /openapi.json is open while the models are not: its examples stay generic."""
        repository = None if keys_configured else app.state.repository
        runner = repository.get(repository.default_name or "") if repository is not None else None
        key = (runner.model.name, runner.model.manifest.version) if runner is not None else None
        if key not in sized:
            schema = copy.deepcopy(base())
            if runner is not None:
                _size_examples(schema, runner.model.manifest)
            sized.clear()  # one default model at a time
            sized[key] = schema
        return sized[key]

    def base() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        routes = documented(endpoints)
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["Error"], schemas["V2Error"] = ERROR, V2_ERROR
        if keys_configured:
            components["securitySchemes"] = SECURITY_SCHEMES
        keyed = guarded(endpoints)
        for path, item in schema["paths"].items():
            body = "V2Error" if path.startswith("/v2/") else "Error"
            error = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
            for method, operation in item.items():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                responses["4XX"] = {"description": "the request was refused; the body says why", **error}
                responses["5XX"] = {"description": "busy (503, Retry-After), timed out (504) or failed", **error}
                if keys_configured and (path, method) in keyed:
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _size_examples(schema: dict[str, Any], manifest: Manifest) -> None:
    """Request examples with rows of the model's width, all zeros: never the training statistics (the docs are
    open to anyone who can reach the service)."""
    for item in schema["paths"].values():
        body = item.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json", {})
        for example in body.get("schema", {}).get("examples", []):
            if "inputs" in example:
                example["inputs"] = [[0.0] * manifest.input_dim]
            if "latents" in example:
                example["latents"] = [[0.0] * manifest.latent_dim]
