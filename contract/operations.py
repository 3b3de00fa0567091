"""The four operations on a bundle, what each takes and returns, defined once. The bundle runtime, the /v1 and V2
faces of the service (request fields, input tensors, V2 metadata) and the client (which fields are arrays) all
read this table, so a name is never spelled twice.

Axis names in output shapes, after the leading row axis: "D" features, "d" latent size, "K" draws per row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Datatype = Literal["FP32", "FP64", "BOOL"]
Width = Literal["input_dim", "latent_dim"]


@dataclass(frozen=True)
class Output:
    name: str
    datatype: Datatype
    shape: tuple[str, ...] = ()  # per-row axes
    when: str | None = None  # the request parameter that adds it, or "full" (covariance), None: always
    asks: int | bool = True  # the value of `when` that computes it when a request asks for it by name


@dataclass(frozen=True)
class Operation:
    name: str
    graph: str  # the bundle graph it runs
    rows: str | None  # the /v1 request field holding its rows (None: sample takes a count)
    tensor: str | None  # the V2 input tensor of those rows
    width: Width | None  # the manifest field giving the rows' width
    outputs: tuple[Output, ...]
    scalars: tuple[str, ...] = ()  # per-request values (V2: response parameters)


def _fp32(name: str, *shape: str, when: str | None = None, asks: int | bool = True) -> Output:
    return Output(name, "FP32", shape, when, asks)


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            "encode",
            "encoder",
            "inputs",
            "x",
            "input_dim",
            (
                _fp32("mean", "d"),
                _fp32("log_var", "d"),
                _fp32("scale_tril", "d", "d", when="full"),
                _fp32("z", "K", "d", when="samples", asks=1),  # one draw
            ),
        ),
        Operation(
            "decode",
            "decoder",
            "latents",
            "z",
            "latent_dim",
            (_fp32("mean", "D"), _fp32("log_var", "D"), _fp32("x", "D", when="sample")),
        ),
        Operation(
            "sample",
            "decoder",
            None,
            None,
            None,
            (_fp32("samples", "D"), _fp32("latents", "d", when="return_latents")),
        ),
        Operation(
            "score",
            "scorer",
            "inputs",
            "x",
            "input_dim",
            (
                _fp32("elbo"),
                _fp32("reconstruction"),
                _fp32("kl"),
                _fp32("log_likelihood"),
                _fp32("anomaly_score"),
                Output("percentile", "FP64"),
                Output("p_value", "FP64"),
                Output("is_anomaly", "BOOL"),
                _fp32("feature_nll", "D", when="explain"),
            ),
            scalars=("threshold", "importance_samples"),
        ),
    )
}
# every per-row output of any operation: what a client turns into numpy arrays
ARRAY_OUTPUTS = frozenset(o.name for op in OPERATIONS.values() for o in op.outputs)


def values_per_row(op: str, params: Mapping[str, Any], input_dim: int, latent_dim: int, full: bool) -> int:
    """Numbers one row of `op`'s answer holds: every output these request parameters make it compute (the service
    bounds an answer's numbers; the client sizes its chunks with the same count)."""
    axes = {"D": input_dim, "d": latent_dim, "K": int(params.get("samples") or 0)}
    total = 0
    for output in OPERATIONS[op].outputs:
        if full if output.when == "full" else output.when is None or bool(params.get(output.when)):
            total += math.prod(axes[a] for a in output.shape)
    return total


def asked_for(op: str, outputs: Iterable[str], params: Mapping[str, Any]) -> dict[str, int | bool]:
    """The parameters that make each output asked for by name computed, where the request leaves them off: asking
    for an output is asking for it to be computed (a V2 client asking for every listed output gets them all).
    Left off: absent, null, or the off value of the parameter's own type (samples 0, sample false); any other value
    is left to validation, which refuses it as it would without the output (samples false is no 0: types are strict)."""
    wanted = set(outputs)
    return {
        o.when: o.asks
        for o in OPERATIONS[op].outputs
        if o.name in wanted and o.when not in (None, "full") and _left_off(params.get(o.when), o.asks)
    }


def _left_off(value: object, asks: int | bool) -> bool:
    return value is None or (type(value) is type(asks) and not value)  # type(): False is an int, 0 no bool
