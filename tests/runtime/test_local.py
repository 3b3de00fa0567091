"""The bundle runtime in this process returns the numbers the service returns, with the same checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import InputError, LimitExceeded, Limits, open_bundle
from tests.service.conftest import serving

pytestmark = pytest.mark.anyio
ROWS = np.random.default_rng(5).integers(0, 17, (40, 64)).astype(np.float32) / 16


@pytest.fixture(scope="module")
def local(serving_repository: Path):  # type: ignore[no-untyped-def]
    return open_bundle(serving_repository / "digits-full" / "1", device="cpu")


async def test_every_operation_matches_the_service(serving_repository: Path, local) -> None:  # type: ignore[no-untyped-def]
    calls = {
        "encode": {"inputs": ROWS.tolist(), "samples": 3, "seed": 4},
        "decode": {"latents": ROWS[:5, :4].tolist(), "sample": True},
        "sample": {"n": 7, "return_latents": True, "noise": True, "seed": 2},
        "score": {"inputs": ROWS.tolist(), "importance_samples": 8, "explain": True, "threshold_quantile": 0.9},
    }
    async with serving(serving_repository, batch_max_draws=64) as client:  # the service runs score in chunks
        for op, body in calls.items():
            served = (await client.post(f"/v1/models/digits-full/{op}", json=body)).json()
            rows = body.pop("inputs", body.pop("latents", None))
            here = getattr(local, op)(rows, **body) if rows is not None else getattr(local, op)(**body)
            assert set(here) == set(served) - {"model", "version"}, op
            for name, value in here.items():
                np.testing.assert_allclose(
                    np.asarray(served[name]), value, rtol=1e-6, atol=1e-6, err_msg=f"{op}.{name}"
                )


def test_big_inputs_run_in_chunks_with_the_same_scores(serving_repository: Path) -> None:
    whole = open_bundle(serving_repository / "digits-diag" / "1", "cpu").score(ROWS)
    chunked = open_bundle(serving_repository / "digits-diag" / "1", "cpu", Limits(batch_max_draws=16 * 3)).score(ROWS)
    np.testing.assert_array_equal(whole["anomaly_score"], chunked["anomaly_score"])


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda m: m.score(ROWS[:, :3]),
            InputError,
            "inputs rows must have 64 values; row 0 has 3 (model 'digits-full'",
        ),
        (lambda m: m.score(np.full((2, 64), np.nan)), InputError, "inputs[0][0] is not a finite float32 number"),
        (lambda m: m.score([["a"] * 64]), InputError, "inputs must be numbers"),
        (lambda m: m.score(ROWS, importance_samples=0), InputError, "importance_samples"),
        (lambda m: m.score(ROWS, seed=1, fresh_noise=True), InputError, "seed and fresh_noise exclude each other"),
        (lambda m: m.score(ROWS, importance_samples=5000), InputError, "above the limit 1024"),
        (lambda m: m.sample(n=0), InputError, "n:"),
        (lambda m: m.encode(np.empty((0, 64))), InputError, "inputs is empty"),
        (lambda m: m.decode(ROWS[:2, :4], model="digits-diag"), InputError, "model 'digits-diag' asked of a local"),
    ],
)
def test_bad_calls_get_the_services_messages(local, call, error: type, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as info:
        call(local)
    assert message in str(info.value)


def test_the_k_limit_names_the_services_setting_only_in_the_service(local) -> None:  # type: ignore[no-untyped-def]
    # load() and vae-score do not read VAE_MAX_IMPORTANCE_SAMPLES: naming it there sent users to a dead setting
    with pytest.raises(InputError) as info:
        local.score(ROWS, importance_samples=5000)
    assert str(info.value) == "importance_samples=5000 is above the limit 1024"


def test_limits_are_the_callers_choice(serving_repository: Path) -> None:
    strict = open_bundle(serving_repository / "digits-diag" / "1", "cpu", Limits(max_rows=10))
    with pytest.raises(LimitExceeded, match="limit is 10"):
        strict.score(ROWS)
    assert (
        len(open_bundle(serving_repository / "digits-diag" / "1", "cpu").score(np.tile(ROWS, (300, 1)))["p_value"])
        == 12000
    )


def test_numpy_integers_are_accepted_as_parameters(local) -> None:  # type: ignore[no-untyped-def]
    assert local.score(ROWS[:2], importance_samples=np.int64(4), seed=np.int32(1))["importance_samples"] == 4


def test_the_runtime_imports_neither_torch_nor_the_web_stack() -> None:
    code = "import runtime, sys; print(sorted({'torch', 'fastapi', 'uvicorn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
