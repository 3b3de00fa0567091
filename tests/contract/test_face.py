"""Every Python face runs the four operations with the request models' parameters: the same names, order and
defaults as contract/requests.py, declared once (contract/face.py)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from contract.face import Face
from contract.operations import OPERATIONS
from contract.requests import REQUESTS
from gaussian_vae import BundleModel
from gaussian_vae.estimator import VAE
from runtime import LocalModel
from service.client import AsyncVAEClient, VAEClient

FACES = [LocalModel, BundleModel, VAE, VAEClient, AsyncVAEClient]


@pytest.mark.parametrize("op", sorted(REQUESTS))
@pytest.mark.parametrize("face", FACES, ids=lambda f: f.__name__)
def test_each_operation_takes_its_request_fields_with_their_defaults(face: type, op: str) -> None:
    params = list(inspect.signature(getattr(face, op)).parameters.values())[1:]  # after self
    fields = REQUESTS[op].model_fields
    assert [p.name for p in params] == [*fields, "model"]  # the rows first (sample: n), then the rest, then model
    for p in params:
        if p.name == OPERATIONS[op].rows:
            assert p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
        elif p.name == "model":
            assert p.default is None and p.kind is p.KEYWORD_ONLY
        else:
            assert p.default == fields[p.name].default, p.name
            first = OPERATIONS[op].rows is None and p.name == "n"  # sample(n) takes n positionally too
            assert p.kind is (p.POSITIONAL_OR_KEYWORD if first else p.KEYWORD_ONLY), p.name


class _Recorder(Face[tuple[str, Any, dict[str, Any], Any], dict[str, Any]]):
    def _call(self, op: str, rows: Any, params: dict[str, Any], model: str | None) -> tuple[str, Any, Any, Any]:
        return op, rows, params, model

    def _sample(self, params: dict[str, Any], model: str | None) -> dict[str, Any]:
        return {**params, "model": model}


@pytest.mark.parametrize("op", sorted(REQUESTS))
def test_a_call_hands_every_field_of_the_request_to_the_face(op: str) -> None:
    face, rows = _Recorder(), [[0.0]]
    fields = REQUESTS[op].model_fields
    if OPERATIONS[op].rows is None:
        params = face.sample(model="m")
        assert params.pop("model") == "m"
    else:
        name, given, params, model = getattr(face, op)(rows, model="m")
        assert (name, given, model) == (op, rows, "m")
        params = {OPERATIONS[op].rows: rows, **params}
    assert list(params) == list(fields)
    REQUESTS[op].model_validate(params)  # a valid request as it stands
    assert {k: v for k, v in params.items() if k != OPERATIONS[op].rows} == {
        k: f.default for k, f in fields.items() if k != OPERATIONS[op].rows
    }
