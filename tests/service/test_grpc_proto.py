"""service/protos: the committed descriptor set is what the vendored .proto compiles to, and its messages are
wire-compatible with Triton's grpc_service.proto as tritonclient.grpc ships it (same names, numbers and types)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.grpc_codec import DESCRIPTORS, PROTO_FILE, SERVICE, Proto, proto

protoc = pytest.importorskip("grpc_tools.protoc")


def test_the_committed_descriptor_set_is_what_the_proto_compiles_to(tmp_path: Path) -> None:
    out = tmp_path / "open_inference.binpb"
    folder = DESCRIPTORS.parent
    assert protoc.main(["protoc", f"-I{folder}", f"--descriptor_set_out={out}", PROTO_FILE]) == 0
    assert out.read_bytes() == DESCRIPTORS.read_bytes(), (
        f"regenerate: python -m grpc_tools.protoc -I{folder} --descriptor_set_out={DESCRIPTORS} {PROTO_FILE}"
    )


def test_every_message_and_rpc_matches_tritons_on_the_wire() -> None:
    theirs = pytest.importorskip("tritonclient.grpc").service_pb2.DESCRIPTOR
    ours = Proto().pool.FindFileByName(PROTO_FILE)
    assert ours.package == theirs.package == "inference"

    def fields(message: Any) -> dict[str, tuple[int, int, bool]]:
        return {f.name: (f.number, f.type, f.is_repeated) for f in message.fields}

    def check(mine: Any, other: Any) -> None:
        assert fields(mine) == fields(other), mine.full_name
        for nested in mine.nested_types:
            check(nested, other.nested_types_by_name[nested.name])

    for name, message in ours.message_types_by_name.items():
        check(message, theirs.message_types_by_name[name])
    their_service = theirs.services_by_name["GRPCInferenceService"]
    for method in proto().service.methods:
        other = their_service.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name) == (other.input_type.name, other.output_type.name)
    assert proto().service.full_name == SERVICE


def test_the_service_messages_live_apart_from_tritonclients() -> None:
    # both register inference.* names; in one process neither may break the other
    from tritonclient.grpc import service_pb2

    assert proto().ModelInferRequest.DESCRIPTOR.file.pool is not service_pb2.DESCRIPTOR.pool
    sent = service_pb2.ModelInferRequest(model_name="m").SerializeToString()
    assert proto().ModelInferRequest.FromString(sent).model_name == "m"
