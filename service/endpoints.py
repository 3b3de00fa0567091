"""Each HTTP endpoint declared once, as an Endpoint: what serves it (a plain Starlette route) and what documents it
(its OpenAPI entry) are both derived from that declaration, when the app is created; nothing is registered at import.

Why plain routes: on a 1-row request FastAPI's own handling of a route (dependency solving, its exit stacks,
parameter extraction) took about a third of the event loop's time (py-spy under wrk), and these endpoints need none
of it: each reads its body by hand (plumbing.read_body) and its role check is one call. FastAPI still writes the
OpenAPI document, from APIRoutes built for that alone (never matched), with the same paths, parameters, request
bodies and answers.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Route

from service.access import Role, require_admin, require_reader
from service.plumbing import PlainRoute

Handler = Callable[[Request], Awaitable[Response]]
PATH_PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Endpoint:
    path: str
    method: str  # GET or POST
    handler: Handler  # reads its path parameters from request.path_params
    name: str
    summary: str
    tags: tuple[str, ...]
    role: Role | None = None  # the least role that may call it; None: open to anyone
    responses: dict[int | str, dict[str, Any]] = field(default_factory=dict)
    body: type | None = None  # the pydantic model of a JSON request body, for the documentation
    response_class: type[Response] | None = None  # the documented media type when it is not JSON


GUARDS: dict[Role | None, Callable[[Request], Awaitable[None]] | None] = {
    None: None,
    Role.READER: require_reader,
    Role.ADMIN: require_admin,
}


def served(endpoints: list[Endpoint]) -> list[Route]:
    """The routes that serve the endpoints: the role check, then the handler."""
    return [PlainRoute(e.path, _guarded(e), methods=[e.method], name=e.name) for e in endpoints]


def _guarded(endpoint: Endpoint) -> Handler:
    guard, handler = GUARDS[endpoint.role], endpoint.handler
    if guard is None:
        return handler

    async def call(request: Request) -> Response:
        await guard(request)
        return await handler(request)

    return call


def documented(endpoints: list[Endpoint]) -> list[APIRoute]:
    """APIRoutes that only describe the endpoints, for fastapi.openapi.utils.get_openapi (never served)."""
    return [
        APIRoute(
            e.path,
            _signature_of(e),
            methods=[e.method],
            name=e.name,
            summary=e.summary,
            tags=list(e.tags),
            responses=e.responses,
            openapi_extra=_body_doc(e.body),
            response_class=e.response_class or JSONResponse,
        )
        for e in endpoints
    ]


def _signature_of(endpoint: Endpoint) -> Callable[..., Any]:
    """A stand-in whose signature names the path parameters (strings), which FastAPI documents from it."""

    async def stand_in(**_: str) -> None:
        raise AssertionError(f"{endpoint.name} is documented only")

    params = [
        inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, annotation=str) for p in PATH_PARAM.findall(endpoint.path)
    ]
    stand_in.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return stand_in


def _body_doc(model: type | None) -> dict[str, Any] | None:
    if model is None:
        return None
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def guarded(endpoints: list[Endpoint]) -> set[tuple[str, str]]:
    """(path, lower-case method) of the endpoints that need a key when keys are configured."""
    return {(e.path, e.method.lower()) for e in endpoints if e.role is not None}
