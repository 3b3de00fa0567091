"""What load_bundle reads is what it verified: nothing outside the repository through a link, each graph from the
bytes that were hashed, and no graph that pulls in other files (ONNX external data)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from contract import sha256_file
from runtime import bundle as runtime_bundle
from runtime import open_bundle
from runtime.bundle import BundleError, load_bundle

CPU = ["CPUExecutionProvider"]
OUTSIDE_REPOSITORY = "a link leading outside the model repository"
EXTERNAL_DATA = "keeps tensors in other files (ONNX external data)"


@pytest.fixture
def repo(tmp_path: Path, serving_repository: Path) -> Path:
    target = tmp_path / "repo"
    shutil.copytree(serving_repository, target)
    return target


def _move_out(path: Path, elsewhere: Path) -> None:
    """Move `path` to `elsewhere` and leave a link to it in its place."""
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, elsewhere)
    path.symlink_to(elsewhere, target_is_directory=elsewhere.is_dir())


def _refusal(bundle: Path, root: Path | None) -> str:
    with pytest.raises(BundleError) as refused:
        load_bundle(bundle, CPU, 1, root)
    return str(refused.value)


# 1. links: followed while they stay inside the repository (or, opened on its own, the bundle folder)


@pytest.mark.parametrize("file", ["manifest.json", "encoder.onnx", "decoder.onnx", "scorer.onnx"])
def test_a_file_linked_outside_the_repository_is_refused(repo: Path, tmp_path: Path, file: str) -> None:
    bundle = repo / "digits-diag" / "1"
    _move_out(bundle / file, tmp_path / "elsewhere" / file)  # the same bytes: only the link is wrong
    reason = _refusal(bundle, repo)
    assert reason == f"{file} is {OUTSIDE_REPOSITORY}"
    assert str(tmp_path) not in reason


@pytest.mark.parametrize("linked", ["version", "model"])
def test_a_bundle_folder_linked_outside_the_repository_is_refused(repo: Path, tmp_path: Path, linked: str) -> None:
    bundle = repo / "digits-diag" / "1"
    folder = bundle if linked == "version" else bundle.parent
    _move_out(folder, tmp_path / "elsewhere" / folder.name)
    assert _refusal(bundle, repo) == f"the bundle folder is, or is inside, {OUTSIDE_REPOSITORY}"


def test_links_that_stay_inside_the_repository_are_followed(repo: Path) -> None:
    bundle = repo / "digits-full" / "1"
    _move_out(bundle / "scorer.onnx", repo / ".shared" / "scorer.onnx")
    assert load_bundle(bundle, CPU, 1, repo).manifest.name == "digits-full"
    # opened on its own, the bundle folder is the limit: the same link now leads outside it
    assert _refusal(bundle, None) == "scorer.onnx is a link leading outside the bundle folder"


def test_a_bundle_opened_on_its_own_may_be_reached_through_a_link(repo: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(repo / "digits-diag" / "1", target_is_directory=True)
    assert load_bundle(alias, CPU, 1).manifest.name == "digits-diag"
    assert np.isfinite(open_bundle(alias, "cpu").score(np.full((2, 64), 0.5))["anomaly_score"]).all()


def test_a_loop_of_links_is_refused_with_a_reason(repo: Path) -> None:
    bundle = repo / "digits-diag" / "1"
    (bundle / "encoder.onnx").unlink()
    (bundle / "encoder.onnx").symlink_to("loop.onnx")
    (bundle / "loop.onnx").symlink_to("encoder.onnx")
    assert _refusal(bundle, repo) == "encoder.onnx is a loop of links"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_graph_that_is_not_a_plain_file_is_refused_without_blocking(repo: Path) -> None:
    bundle = repo / "digits-diag" / "1"
    (bundle / "encoder.onnx").unlink()
    os.mkfifo(bundle / "encoder.onnx")  # opening a FIFO for reading would wait for a writer forever
    assert _refusal(bundle, repo) == "encoder.onnx is not a plain file"


# 2. the bytes that were hashed are the bytes that load


def test_a_file_too_large_to_be_a_graph_is_refused_before_it_is_read(repo: Path) -> None:
    # a 3 GiB encoder.onnx was read whole before its size counted: a MemoryError (or an out-of-memory kill) stopped
    # the whole service rather than refusing this bundle. A sparse file: its size costs no disk
    bundle = repo / "digits-diag" / "1"
    with (bundle / "encoder.onnx").open("r+b") as f:
        f.truncate(runtime_bundle.MAX_FILE_BYTES + 1)
    refusal = _refusal(bundle, repo)
    assert refusal.startswith(f"encoder.onnx is {runtime_bundle.MAX_FILE_BYTES + 1} bytes; a bundle file is at most")


def test_a_graph_swapped_after_it_was_hashed_is_not_loaded(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = repo / "digits-diag" / "1"
    real_hash = runtime_bundle.sha256_bytes

    def hash_then_swap(data: bytes) -> str:
        digest = real_hash(data)
        # the moment a reader that opens the file again by name would load something else: the decoder's graph
        (bundle / "encoder.onnx").write_bytes((bundle / "decoder.onnx").read_bytes())
        return digest

    monkeypatch.setattr(runtime_bundle, "sha256_bytes", hash_then_swap)
    model = load_bundle(bundle, CPU, 1, repo)
    assert [i.name for i in model.sessions["encoder"].get_inputs()] == ["x"]  # the verified encoder, not the swap
    assert sha256_file(bundle / "encoder.onnx") != model.manifest.graphs.encoder.sha256  # the swap did happen


# 3. ONNX external data: refused wherever it points, inside the bundle or not


def _externalize(bundle: Path, location: str, data_at: Path) -> None:
    """Rewrite the bundle's encoder so its initializers live in another file (ONNX external data): `location` as the
    graph names it, the bytes at `data_at`. The manifest's sha256 is updated: only the external data is wrong."""
    onnx = pytest.importorskip("onnx")
    from onnx.external_data_helper import set_external_data
    from onnx.numpy_helper import from_array, to_array

    model = onnx.load(bundle / "encoder.onnx")
    blob = bytearray()
    for tensor in model.graph.initializer:
        array = to_array(tensor)
        if array.dtype != np.float32 or array.nbytes < 1024:
            continue  # the weights only: small integer tensors (shapes, slice bounds) must stay inline for onnxruntime
        tensor.CopyFrom(from_array(array, tensor.name))
        set_external_data(tensor, location=location, offset=len(blob), length=array.nbytes)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        blob += array.tobytes()
    assert blob, "the encoder has initializers to move out"
    data_at.parent.mkdir(parents=True, exist_ok=True)
    data_at.write_bytes(bytes(blob))
    _replace_encoder(bundle, model.SerializeToString())


def _replace_encoder(bundle: Path, graph: bytes) -> None:
    (bundle / "encoder.onnx").write_bytes(graph)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graphs"]["encoder"]["sha256"] = sha256_file(bundle / "encoder.onnx")
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_the_external_data_test_graph_is_valid_where_external_data_is_allowed(repo: Path) -> None:
    # the control for the refusals below: loaded by path, next to its data file, onnxruntime runs this graph
    bundle = repo / "digits-diag" / "1"
    _externalize(bundle, "encoder.data", bundle / "encoder.data")
    session = ort.InferenceSession(str(bundle / "encoder.onnx"), providers=CPU)
    assert np.isfinite(session.run(None, {"x": np.full((1, 64), 0.5, np.float32)})[0]).all()


@pytest.mark.parametrize(
    ("location", "data_at"),
    [
        ("encoder.data", "repo/digits-diag/1/encoder.data"),  # beside the graph: still not covered by any sha256
        ("../encoder.data", "repo/digits-diag/encoder.data"),  # traversal to the model folder
        ("../../../secret.data", "secret.data"),  # traversal out of the repository
        ("ABSOLUTE", "secret.data"),  # an absolute path
    ],
)
def test_a_graph_with_external_data_is_refused(repo: Path, tmp_path: Path, location: str, data_at: str) -> None:
    bundle = repo / "digits-diag" / "1"
    target = tmp_path / data_at
    _externalize(bundle, str(target) if location == "ABSOLUTE" else location, target)
    for root in (repo, None):
        reason = _refusal(bundle, root)
        assert reason.startswith(f"encoder.onnx {EXTERNAL_DATA}"), reason
        assert "/" not in reason  # no path of any kind: not the data file's, not onnxruntime's private folder


def test_external_data_is_not_looked_for_in_the_working_directory(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # onnxruntime resolves the external data of a graph loaded from bytes against the working directory by default
    bundle = repo / "digits-diag" / "1"
    _externalize(bundle, "encoder.data", tmp_path / "cwd" / "encoder.data")
    monkeypatch.chdir(tmp_path / "cwd")
    assert _refusal(bundle, repo).startswith(f"encoder.onnx {EXTERNAL_DATA}")


def test_a_sparse_initializer_with_external_data_is_refused(repo: Path, tmp_path: Path) -> None:
    # sparse initializers took another path through onnxruntime, unchecked before 1.27
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    (tmp_path / "repo" / "w.bin").write_bytes(np.full(4, 7, np.float32).tobytes())  # inside the repository, even
    values = helper.make_tensor("w", TensorProto.FLOAT, [4], vals=[0.0] * 4)
    values.ClearField("float_data")
    values.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "../../w.bin", "offset": "0", "length": "16"}.items():
        entry = values.external_data.add()
        entry.key, entry.value = key, value
    indices = helper.make_tensor("w_indices", TensorProto.INT64, [4], vals=[0, 1, 2, 3])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mean"])],
        "sparse",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [None, 2])],
        sparse_initializer=[helper.make_sparse_tensor(values, indices, [2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    bundle = repo / "digits-diag" / "1"
    _replace_encoder(bundle, model.SerializeToString())
    assert onnx.TensorProto.EXTERNAL == model.graph.sparse_initializer[0].values.data_location
    assert _refusal(bundle, repo).startswith(f"encoder.onnx {EXTERNAL_DATA}")


# 4. the device decision without a bundle to probe with


def test_the_probe_graph_is_the_identity_model_onnx_builds() -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7, producer_name="")
    assert model.SerializeToString() == runtime_bundle.PROBE_GRAPH
    session = ort.InferenceSession(runtime_bundle.PROBE_GRAPH, providers=CPU)
    assert session.run(None, {"x": np.array([2.5], np.float32)})[0].tolist() == [2.5]


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_an_empty_repository_decides_the_device_as_one_with_a_bundle_does(
    serving_repository: Path, device: str
) -> None:
    # before, with no encoder to probe with, device=cuda started on a machine without CUDA and served on CPU later
    encoder = (serving_repository / "digits-diag" / "1" / "encoder.onnx").read_bytes()

    def decided(probe: bytes | None) -> list[str] | str:
        try:
            return runtime_bundle.providers_for(device, probe)  # type: ignore[arg-type]
        except runtime_bundle.DeviceUnavailable as exc:
            return type(exc).__name__

    assert decided(None) == decided(encoder)
