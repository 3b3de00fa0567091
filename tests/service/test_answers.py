"""Answers within bounds: the size an operation's answer will have is known before any work, and big answers are
serialised a slice at a time into the very bytes one orjson call gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.requests import REQUESTS
from runtime.bundle import load_bundle
from runtime.operations import AnswerSize, Limits, Operations
from service.answers import SLICE_VALUES, check_answer_size, dumps
from service.errors import PayloadTooLarge


@settings(deadline=None, max_examples=40)
@given(
    rows=st.integers(1, 3 * SLICE_VALUES // 7),
    width=st.integers(1, 9),
    extra=st.sampled_from([(), (3,), (2, 2)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_sliced_serialisation_gives_the_bytes_of_one_orjson_call(
    rows: int, width: int, extra: tuple[int, ...], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    big = (rng.standard_normal((rows, width, *extra)) * 10.0 ** rng.integers(-30, 30)).astype(np.float32)
    payload = {
        "model": "m",
        "version": 3,
        "z": big,
        "flags": rng.random(rows) > 0.5,
        "p": rng.random(rows),
        "outputs": [{"name": "z", "data": big.reshape(-1)}],
        "threshold": 1.5,
    }
    assert dumps(payload) == orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def test_an_answer_over_the_limit_says_how_many_rows_fit_and_offers_binary() -> None:
    with pytest.raises(PayloadTooLarge) as refused:
        check_answer_size(AnswerSize(rows=1024, per_row=8208, scalars=0), 1 << 20, binary=False, max_rows=8192)
    detail = str(refused.value)
    assert "8404992 numbers" in detail and "at most 127 rows" in detail and "V2 binary outputs" in detail
    check_answer_size(AnswerSize(rows=1024, per_row=4096, scalars=0), 1 << 20, binary=True, max_rows=8192)  # 4x
    with pytest.raises(PayloadTooLarge, match="fewer draws per row"):
        check_answer_size(AnswerSize(rows=1, per_row=(1 << 20) + 1, scalars=0), 1 << 20, binary=False, max_rows=8192)
    # sample's n past VAE_MAX_ROWS: the hint names no more rows than the row limit allows
    with pytest.raises(PayloadTooLarge, match="send at most 8192 rows per request"):
        check_answer_size(AnswerSize(rows=100_000, per_row=64, scalars=0), 1 << 20, binary=True, max_rows=8192)


@pytest.fixture(scope="module")
def bundles(serving_repository: Path) -> dict[str, Operations]:
    models = {}
    for name in ("digits-diag", "digits-full"):
        bundle = load_bundle(serving_repository / name / "1", "cpu")
        models[name] = (bundle, Operations(bundle.manifest, Limits()))
    return models  # type: ignore[return-value]


CASES = [
    ("encode", {}),
    ("encode", {"samples": 3}),
    ("decode", {}),
    ("decode", {"sample": True}),
    ("sample", {"n": 5}),
    ("sample", {"n": 5, "return_latents": True, "noise": True}),
    ("score", {}),
    ("score", {"explain": True, "importance_samples": 4}),
]


@pytest.mark.parametrize("name", ["digits-diag", "digits-full"])
@pytest.mark.parametrize(("op", "params"), CASES)
def test_the_answer_size_known_before_running_is_the_size_of_the_answer(
    bundles: dict[str, tuple[object, Operations]], name: str, op: str, params: dict[str, object]
) -> None:
    bundle, ops = bundles[name]
    rows = None
    if op != "sample":
        width = ops.width(op)
        rows = np.random.default_rng(0).standard_normal((7, width)).astype(np.float32)
    field = {"encode": "inputs", "decode": "latents", "score": "inputs"}.get(op)
    request = REQUESTS[op].model_validate({**params, **({field: []} if field else {})}, strict=False)
    plan = ops.plan(op, rows, request)
    answer = plan.finish(bundle.run(plan.graph, plan.feeds))  # type: ignore[attr-defined]
    counted = sum(np.size(v) for v in answer.values())
    assert ops.answer_size(op, 0 if rows is None else len(rows), request).values == counted
