"""service.client: numpy or DataFrames in, numpy out, typed exceptions, chunking, retries; imports httpx and numpy
only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from contract.operations import ARRAY_OUTPUTS
from service import client as c
from tests.service.conftest import serving
from training.data import load_table

DIGITS = load_table("builtin:digits").x


# GET /v1/models of the mocked services: the sizes the client reads once to keep answers within the service's bound
LISTING = {"default_model": "m", "models": [{"name": "m", "input_dim": 3, "latent_dim": 2, "covariance": "diagonal"}]}


def _listing(request: httpx.Request) -> httpx.Response | None:
    return httpx.Response(200, json=LISTING) if (request.method, request.url.path) == ("GET", "/v1/models") else None


def _mock(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.MockTransport:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if (listing := _listing(request)) is not None:
            return listing
        seen.append(request)
        return httpx.Response(status, json=body, headers=headers)

    transport = httpx.MockTransport(handler)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


# what each of the service's error kinds raises: its own class, or the general one of its status
RAISES: dict[str, type[c.VAEClientError]] = {
    "InvalidInput": c.InvalidInput,
    "PayloadTooLarge": c.PayloadTooLarge,
    "Unauthorized": c.Unauthorized,
    "Forbidden": c.Forbidden,
    "ModelNotFound": c.ModelNotFound,
    "RouteNotFound": c.NotFound,
    "ServiceNotFound": c.NotFound,
    "TooManyWatches": c.ServiceUnavailable,
    "QueueFull": c.ServiceUnavailable,
    "Overloaded": c.ServiceUnavailable,
    "NotReady": c.ServiceUnavailable,
    "InferenceTimeout": c.InferenceTimeout,
    "HostNotAllowed": c.RequestRefused,
    "MethodNotAllowed": c.RequestRefused,
    "RequestTimeout": c.RequestRefused,
    "UnsupportedMediaType": c.RequestRefused,
    "HeadersTooLarge": c.RequestRefused,
    "BundleRefused": c.RequestRefused,
    "ClientGone": c.RequestRefused,
    "InferenceFailed": c.ServerError,
    "InternalError": c.ServerError,
    "WorkerTimeout": c.ServerError,
}


def test_every_error_kind_of_the_service_has_a_client_exception_of_its_status_class() -> None:
    from service.errors import STATUS  # the service's table (the client itself never imports it: fastapi)

    kinds = {kind.__name__: status for kind, status in STATUS.items()}
    assert set(c.KINDS) == set(kinds) == set(RAISES)
    for kind, status in kinds.items():
        assert issubclass(c.KINDS[kind], c.ServerError if status >= 500 else c.RequestRefused), kind


@pytest.mark.parametrize(("kind", "exc"), sorted(RAISES.items()))
def test_each_error_kind_raises_its_exception_with_status_kind_and_detail(
    kind: str, exc: type[c.VAEClientError]
) -> None:
    from service.errors import STATUS

    status = {k.__name__: s for k, s in STATUS.items()}[kind]
    transport = _mock(status, {"error": kind, "detail": "why"}, {"Retry-After": "1"})
    with c.VAEClient("http://x", transport=transport, retries=0) as client, pytest.raises(c.VAEClientError) as info:
        client.score(np.zeros((1, 3)))
    assert type(info.value) is exc
    assert (info.value.status, info.value.kind, info.value.detail) == (status, kind, "why")
    if isinstance(info.value, c.ServiceUnavailable):
        assert info.value.retry_after == 1.0


@pytest.mark.parametrize(
    ("status", "body", "exc", "kind"),
    [
        (500, {"error": "Weird", "detail": "why"}, c.ServerError, "Weird"),
        (418, {"error": "Teapot", "detail": "why"}, c.RequestRefused, "Teapot"),
        (502, None, c.ServerError, "HTTPError"),  # a proxy's answer, not JSON
    ],
)
def test_an_unknown_kind_raises_the_general_exception_of_its_status(
    status: int, body: dict[str, Any] | None, exc: type[c.VAEClientError], kind: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body) if body is not None else httpx.Response(status, text="why")

    with c.VAEClient("http://x", transport=httpx.MockTransport(handler)) as client, pytest.raises(exc) as info:
        client.score(np.zeros((1, 3)))
    assert (info.value.status, info.value.kind, info.value.detail) == (status, kind, "why")


def test_requests_carry_the_api_key_and_a_columnar_body() -> None:
    transport = _mock(200, {"model": "m", "version": 1, "mean": [[1.0, 2.0]], "log_var": [[0.0, 0.0]]})
    with c.VAEClient("http://x", api_key="k", transport=transport) as client:
        out = client.encode(np.array([0.5, 1.5]), model="m", seed=3)
    request = transport.seen[0]  # type: ignore[attr-defined]
    assert request.url.path == "/v1/models/m/encode" and request.headers["authorization"] == "Bearer k"
    assert json.loads(request.content) == {"inputs": [[0.5, 1.5]], "samples": 0, "seed": 3}
    assert isinstance(out["mean"], np.ndarray) and out["mean"].shape == (1, 2) and out["model"] == "m"


def test_fresh_noise_is_sent_only_when_asked_and_p_value_comes_back_as_an_array() -> None:
    transport = _mock(200, {"model": "m", "version": 1, "anomaly_score": [1.0], "p_value": [0.5], "threshold": 2.0})
    with c.VAEClient("http://x", transport=transport) as client:
        out = client.score(np.zeros(3), model="m")
        client.score(np.zeros(3), fresh_noise=True, model="m")
        client.sample(2, fresh_noise=True, model="m")
    bodies = [json.loads(r.content) for r in transport.seen]  # type: ignore[attr-defined]
    assert bodies[0] == {"inputs": [[0.0, 0.0, 0.0]], "explain": False}  # no seed: the service's fixed default
    assert bodies[1]["fresh_noise"] is True and "seed" not in bodies[1]
    assert bodies[2]["fresh_noise"] is True and bodies[2]["seed"] is None
    assert isinstance(out["p_value"], np.ndarray) and out["threshold"] == 2.0


@pytest.mark.anyio
async def test_async_client_against_the_app(serving_repository: Path) -> None:
    async with serving(serving_repository) as http:
        transport = httpx.ASGITransport(app=http.app)  # type: ignore[attr-defined]
        async with c.AsyncVAEClient("http://localhost", transport=transport) as client:
            scored = await client.score(np.full((3, 64), 0.2), seed=1, model="digits-diag")
            with pytest.raises(c.InvalidInput, match="rows must have 64"):
                await client.score(np.zeros((1, 2)), model="digits-diag")
    assert scored["elbo"].shape == (3,) and scored["is_anomaly"].dtype == bool


def test_client_imports_neither_torch_nor_onnxruntime_nor_the_server_side() -> None:
    heavy = ["torch", "onnxruntime", "fastapi", "pydantic_settings", "pandas"]
    code = f"import sys, service.client; print(*[m in sys.modules for m in {heavy!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * len(heavy)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- retries -------------------------------------------------------------------------------------------------------


def _script(*responses: httpx.Response) -> httpx.MockTransport:
    """Answers with `responses` in turn (the last one again when they run out); records the requests."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if (listing := _listing(request)) is not None:
            return listing
        seen.append(request)
        return responses[min(len(seen), len(responses)) - 1]

    transport = httpx.MockTransport(handler)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


def _busy(retry_after: str = "2") -> httpx.Response:
    return httpx.Response(503, json={"error": "QueueFull", "detail": "busy"}, headers={"Retry-After": retry_after})


def _scored(n: int, version: int = 1) -> httpx.Response:
    return httpx.Response(200, json={"model": "m", "version": version, "anomaly_score": [0.5] * n, "threshold": 1.0})


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr("service.client_flows.time.sleep", slept.append)
    return slept


def test_503_is_retried_after_retry_after_seconds_then_answers(sleeps: list[float]) -> None:
    transport = _script(_busy("2"), _busy("0.5"), _scored(1))
    with c.VAEClient("http://x", transport=transport) as client:
        out = client.score(np.zeros(3), model="m")
    assert len(transport.seen) == 3 and sleeps == [2.0, 0.5]  # type: ignore[attr-defined]
    assert out["anomaly_score"].tolist() == [0.5]


def test_503_past_the_retries_raises_service_unavailable_and_waits_are_capped(sleeps: list[float]) -> None:
    transport = _script(_busy("60"))
    with c.VAEClient("http://x", transport=transport, retries=2, max_retry_wait_s=7) as client:
        with pytest.raises(c.ServiceUnavailable) as info:
            client.score(np.zeros(3), model="m")
    assert len(transport.seen) == 3 and sleeps == [7.0, 7.0]  # type: ignore[attr-defined]
    assert info.value.retry_after == 60.0 and info.value.kind == "QueueFull"


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422, 500, 504])
def test_other_errors_are_never_retried(sleeps: list[float], status: int) -> None:
    transport = _script(httpx.Response(status, json={"error": "X", "detail": "no"}, headers={"Retry-After": "1"}))
    with c.VAEClient("http://x", transport=transport) as client, pytest.raises(c.VAEClientError):
        client.score(np.zeros(3), model="m")
    assert len(transport.seen) == 1 and sleeps == []  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_async_client_retries_503_too() -> None:
    transport = _script(_busy("0"), _scored(2))
    async with c.AsyncVAEClient("http://x", transport=_async(transport)) as client:
        out = await client.score(np.zeros((2, 3)), model="m")
    assert len(transport.seen) == 2 and out["anomaly_score"].shape == (2,)  # type: ignore[attr-defined]


def _async(transport: httpx.MockTransport) -> httpx.AsyncBaseTransport:
    class Async(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await request.aread()
            return transport.handle_request(request)

    return Async()


# --- non-finite values -----------------------------------------------------------------------------------------------


def test_non_finite_values_raise_the_services_sentence_before_anything_is_sent() -> None:
    x = np.zeros((5, 20))
    x[3, 17], x[4, 0] = np.nan, 1e39  # 1e39 is finite in float64, not in float32: the service refuses it too
    transport = _script(_scored(5))
    with c.VAEClient("http://x", transport=transport) as client, pytest.raises(c.InvalidInput) as info:
        client.score(x, model="m")
    assert info.value.detail == "inputs[3][17] is not a finite float32 number (2 such values)"
    assert info.value.status == 422 and transport.seen == []  # type: ignore[attr-defined]
    with c.VAEClient("http://x", transport=transport) as client, pytest.raises(c.InvalidInput, match=r"latents\[0\]"):
        client.decode([np.inf, 0.0], model="m")


@pytest.mark.anyio
async def test_the_clients_sentence_for_a_non_finite_value_is_the_services(serving_repository: Path) -> None:
    x = np.full((4, 64), 0.5)
    x[2, 5] = 1e39  # JSON can carry this one, so the service can be asked too
    async with serving(serving_repository) as http:
        answer = await http.post("/v1/models/digits-diag/score", json={"inputs": x.tolist()})
        async with c.AsyncVAEClient("http://localhost", transport=_asgi(http)) as client:
            with pytest.raises(c.InvalidInput) as info:
                await client.score(x, model="digits-diag")
    assert answer.status_code == 422 and info.value.detail == answer.json()["detail"]


# --- chunking --------------------------------------------------------------------------------------------------------


class _Counting(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner, self.bodies = inner, list[Any]()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.bodies.append(json.loads(await request.aread()))
        return await self.inner.handle_async_request(request)


def _asgi(http: httpx.AsyncClient) -> httpx.AsyncBaseTransport:
    return httpx.ASGITransport(app=http.app)  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_chunked_answers_equal_one_request_against_the_app(serving_repository: Path) -> None:
    x = DIGITS[:23]
    async with serving(serving_repository) as http:
        async with c.AsyncVAEClient("http://localhost", transport=_asgi(http)) as whole:
            one = await whole.score(x, model="digits-full", explain=True, threshold_quantile=0.9)
            embedded = await whole.encode(x, model="digits-full")
        chunks = _Counting(_asgi(http))
        async with c.AsyncVAEClient("http://localhost", transport=chunks, max_rows_per_request=7) as chunked:
            split = await chunked.score(x, model="digits-full", explain=True, threshold_quantile=0.9)
            split_embedded = await chunked.encode(x, model="digits-full")
    assert [len(b["inputs"]) for b in chunks.bodies] == [7, 7, 7, 2] * 2
    assert one.keys() == split.keys()
    for key in ARRAY_OUTPUTS & one.keys():
        np.testing.assert_array_equal(split[key], one[key], err_msg=key)  # rows are scored independently
    assert (split["threshold"], split["version"]) == (one["threshold"], one["version"])
    for key in embedded:
        np.testing.assert_array_equal(np.asarray(split_embedded[key]), np.asarray(embedded[key]), err_msg=key)


@pytest.mark.anyio
async def test_calls_are_chunked_so_no_answer_passes_the_services_bound(serving_repository: Path) -> None:
    x = DIGITS[:120]
    async with serving(serving_repository, max_answer_values=4096) as http:
        d = http.app.state.repository.current["digits-full"].model.manifest.latent_dim  # type: ignore[attr-defined]
        chunks = _Counting(_asgi(http))
        async with c.AsyncVAEClient("http://localhost", transport=chunks, max_values_per_request=4096) as client:
            embedded = await client.encode(x, model="digits-full", samples=16, seed=3)
            sampled = await client.sample(300, model="digits-full", return_latents=True, seed=1)
            scored = await client.score(x, model="digits-full", explain=True)
    per_row = 2 * d + d * d + 16 * d
    sizes = [len(b["inputs"]) for b in chunks.bodies if "samples" in b]
    assert sizes and max(sizes) == 4096 // per_row and sum(sizes) == 120
    assert embedded["z"].shape == (120, 16, d) and sampled["samples"].shape == (300, 64)
    step = 4096 // (64 + d)  # a sample row: 64 features and, with return_latents, d latents
    assert [b["n"] for b in chunks.bodies if "n" in b] == [step] * (300 // step) + ([300 % step] if 300 % step else [])
    assert scored["feature_nll"].shape == (120, 64)


def test_importance_samples_bound_the_rows_of_a_chunk() -> None:
    transport = _script(_scored(4), _scored(4), _scored(2))
    with c.VAEClient("http://x", transport=transport, max_draws_per_request=1000) as client:
        out = client.score(np.zeros((10, 3)), importance_samples=250, model="m")
    bodies = [json.loads(r.content) for r in transport.seen]  # type: ignore[attr-defined]
    assert [len(b["inputs"]) for b in bodies] == [4, 4, 2] and out["anomaly_score"].shape == (10,)
    assert all(b["importance_samples"] == 250 and "seed" not in b for b in bodies)  # score: the same noise block


def test_a_version_swapped_in_between_chunks_raises_instead_of_mixing_versions() -> None:
    transport = _script(_scored(2, version=1), _scored(2, version=2))
    with c.VAEClient("http://x", transport=transport, max_rows_per_request=2) as client:
        with pytest.raises(c.ModelChanged, match="version 1, then 'm' version 2"):
            client.score(np.zeros((4, 3)), model="m")


def test_chunks_of_a_random_draw_get_distinct_seeds_derived_from_the_callers() -> None:
    answer = httpx.Response(200, json={"model": "m", "version": 1, "samples": [[0.0]]})
    transport = _script(answer)
    with c.VAEClient("http://x", transport=transport, max_rows_per_request=4) as client:
        client.sample(10, seed=5, model="m")
        client.sample(10, model="m")
        client.sample(10, fresh_noise=True, model="m")
    bodies = [json.loads(r.content) for r in transport.seen]  # type: ignore[attr-defined]
    assert [b["n"] for b in bodies] == [4, 4, 2] * 3
    seeded, default, fresh = bodies[:3], bodies[3:6], bodies[6:]
    assert seeded[0]["seed"] == 5 and len({b["seed"] for b in seeded}) == 3
    assert default[0]["seed"] is None and len({b["seed"] for b in default}) == 3
    assert all(b["fresh_noise"] is True and b["seed"] is None for b in fresh)


@pytest.mark.anyio
async def test_a_chunked_sample_never_repeats_a_chunks_draws(serving_repository: Path) -> None:
    async with serving(serving_repository) as http:
        async with c.AsyncVAEClient("http://localhost", transport=_asgi(http), max_rows_per_request=4) as client:
            out = await client.sample(10, seed=3, model="digits-diag")
            again = await client.sample(10, seed=3, model="digits-diag")
    assert out["samples"].shape == (10, 64)
    assert not np.allclose(out["samples"][:4], out["samples"][4:8])
    np.testing.assert_array_equal(out["samples"], again["samples"])  # still reproducible per seed


# --- DataFrames and feature names ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_dataframe_is_reordered_to_the_models_features_and_explained_by_name(
    serving_repository: Path,
) -> None:
    pd = pytest.importorskip("pandas")
    x = DIGITS[:5]
    async with serving(serving_repository) as http:
        names = (await http.get("/v1/models/digits-diag")).json()["manifest"]["feature_names"]
        frame = pd.DataFrame(x, columns=names)[names[::-1]]  # every column, reversed
        async with c.AsyncVAEClient("http://localhost", transport=_asgi(http)) as client:
            from_array = await client.score(x, model="digits-diag", explain=True)
            from_frame = await client.score(frame, explain=True)  # the default model: digits-diag
            with pytest.raises(c.InvalidInput, match=r"missing \['pixel_0_0'\], not features \['label'\]"):
                await client.score(frame.drop(columns="pixel_0_0").assign(label=1), model="digits-diag")
    np.testing.assert_array_equal(from_frame["anomaly_score"], from_array["anomaly_score"])
    contributions = from_frame["feature_contributions"]
    assert list(contributions) == names and contributions[names[9]].shape == (5,)
    np.testing.assert_array_equal(contributions[names[9]], from_array["feature_nll"][:, 9])
    np.testing.assert_array_equal(from_frame["feature_nll"], from_array["feature_nll"])


class _Frame:
    """The two things the client uses of a DataFrame."""

    def __init__(self, columns: list[str], values: np.ndarray) -> None:
        self.columns, self._values = columns, values

    def to_numpy(self) -> np.ndarray:
        return self._values


def _model(names: list[str] | None, width: int, version: int = 1) -> httpx.Response:
    return httpx.Response(200, json={"version": version, "input_dim": width, "manifest": {"feature_names": names}})


def _router(routes: dict[str, list[httpx.Response]]) -> httpx.MockTransport:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answers = routes[request.url.path]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    transport = httpx.MockTransport(handler)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


def test_feature_names_are_fetched_once_per_model_and_version() -> None:
    transport = _router(
        {
            "/v1/models": [httpx.Response(200, json={"default_model": "m"})],
            "/v1/models/m": [_model(["a", "b"], 2)],
            "/v1/score": [_scored(1)],
        }
    )
    with c.VAEClient("http://x", transport=transport) as client:
        for _ in range(3):
            client.score(_Frame(["b", "a"], np.array([[2.0, 1.0]])))
    sent = [json.loads(r.content)["inputs"] for r in transport.seen if r.method == "POST"]  # type: ignore[attr-defined]
    gets = [r.url.path for r in transport.seen if r.method == "GET"]  # type: ignore[attr-defined]
    assert sent == [[[1.0, 2.0]]] * 3 and gets == ["/v1/models", "/v1/models/m"]


def test_a_frame_for_an_unnamed_model_needs_the_right_number_of_columns() -> None:
    transport = _router({"/v1/models/m": [_model(None, 3)], "/v1/models/m/score": [_scored(1)]})
    with c.VAEClient("http://x", transport=transport) as client:
        assert client.score(_Frame(["x", "y", "z"], np.ones((1, 3))), model="m")["anomaly_score"].shape == (1,)
        with pytest.raises(c.InvalidInput, match="takes 3 features .* the frame has 2 columns"):
            client.score(_Frame(["x", "y"], np.ones((1, 2))), model="m")


def test_a_frame_with_a_repeated_column_is_refused_naming_it() -> None:
    transport = _router({"/v1/models/m": [_model(["a", "b"], 2)]})
    with c.VAEClient("http://x", transport=transport) as client, pytest.raises(c.InvalidInput) as info:
        client.score(_Frame(["a", "b", "a"], np.ones((1, 3))), model="m")
    assert info.value.detail == (
        "the frame's columns differ from the features of model 'm' version 1: missing [], not features [], "
        "repeated ['a']"
    )
    assert [r.method for r in transport.seen] == ["GET"]  # type: ignore[attr-defined]


def test_a_frame_whose_column_is_missing_a_value_names_the_column() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"b": pd.array([1.0, None], dtype="Float64"), "a": [1.0, 2.0]})
    transport = _router({"/v1/models/m": [_model(["a", "b"], 2)]})
    with c.VAEClient("http://x", transport=transport) as client, pytest.raises(c.InvalidInput) as info:
        client.score(frame, model="m")
    assert info.value.detail == "inputs[1][1] is not a finite float32 number (1 such values); column 'b'"


def test_a_new_version_with_other_feature_names_during_the_call_raises() -> None:
    transport = _router(
        {"/v1/models/m": [_model(["a", "b"], 2, 1), _model(["b", "a"], 2, 2)], "/v1/models/m/score": [_scored(1, 2)]}
    )
    with c.VAEClient("http://x", transport=transport) as client, pytest.raises(c.ModelChanged, match="version 2"):
        client.score(_Frame(["a", "b"], np.ones((1, 2))), model="m")


def test_explain_names_the_columns_of_feature_nll() -> None:
    answer = httpx.Response(
        200, json={"model": "m", "version": 4, "anomaly_score": [1.0, 2.0], "feature_nll": [[1.0, 2.0], [3.0, 4.0]]}
    )
    transport = _router({"/v1/models/m": [_model(["a", "b"], 2, 4)], "/v1/score": [answer]})
    with c.VAEClient("http://x", transport=transport) as client:
        out = client.score(np.ones((2, 2)), explain=True)  # the model that answered names the columns
    assert out["feature_contributions"]["b"].tolist() == [2.0, 4.0] and out["feature_nll"].shape == (2, 2)
