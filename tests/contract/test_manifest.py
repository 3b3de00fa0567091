"""The bundle contract: schema checks that protect the service from a bad manifest, and the folder layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from contract import FORMAT_VERSION, Manifest, is_valid_name, list_versions, sha256_file
from contract.layout import DECODER_FILE, ENCODER_FILE, SCORER_FILE
from training.diagnostic_warnings import with_warnings
from training.pipeline import RunResult


def _dump(run: RunResult) -> dict:
    return run.manifest.model_dump(mode="json")


def test_manifest_round_trips_through_json(diagonal_run: RunResult) -> None:
    again = Manifest.model_validate_json(diagonal_run.manifest.model_dump_json())
    assert again == diagonal_run.manifest


def test_stored_diagnostic_warnings_round_trip_through_json(diagonal_run: RunResult) -> None:
    manifest = diagonal_run.manifest
    v = manifest.diagnostics["validation"]
    loose = with_warnings(v.model_copy(update={"active_units": 1, "gap": 1e4}))
    assert {"inactive_units", "gap"} <= {w.kind for w in loose.warnings}
    changed = manifest.model_copy(update={"diagnostics": {**manifest.diagnostics, "validation": loose}})
    again = Manifest.model_validate_json(changed.model_dump_json())
    assert again == changed and again.diagnostics["validation"].warnings == loose.warnings


def test_a_manifest_written_before_warnings_were_stored_loads_with_none(diagonal_run: RunResult) -> None:
    raw = _dump(diagonal_run)
    for split in raw["diagnostics"].values():
        del split["warnings"]  # as a bundle trained before this field was added wrote it
    old = Manifest.model_validate(raw)
    assert all(d.warnings == [] for d in old.diagnostics.values())
    assert old.format_version == FORMAT_VERSION == 5  # an optional field with a default: the same format version


def test_a_v3_manifest_loads_with_its_graphs_taking_lattice_values_themselves(diagonal_run: RunResult) -> None:
    raw = _dump(diagonal_run)
    assert raw["format_version"] == 5 and raw["preprocessing"]["bin_centres"] is True
    del raw["preprocessing"]["bin_centres"]  # as vae-train wrote a v3 bundle
    del raw["preprocessing"]["decorrelate"]
    del raw["training"]["decorrelation"]
    raw["format_version"] = 3
    old = Manifest.model_validate(raw)
    assert old.preprocessing.bin_centres is False and set(old.preprocessing.centre_shift()) == {0.0}
    raw["preprocessing"]["bin_centres"] = True
    with pytest.raises(ValidationError, match="bin_centres is a format v4 field; this manifest says v3"):
        Manifest.model_validate(raw)


def test_a_v4_manifest_loads_as_a_bundle_of_features_as_they_are(diagonal_run: RunResult) -> None:
    raw = _dump(diagonal_run)
    del raw["preprocessing"]["decorrelate"]  # as vae-train wrote a v4 bundle
    del raw["training"]["decorrelation"]
    raw["format_version"] = 4
    old = Manifest.model_validate(raw)
    assert not old.preprocessing.decorrelate and old.training.decorrelation == {}


def test_decorrelation_is_a_v5_field_with_a_decoder_that_draws(diagonal_run: RunResult, full_run: RunResult) -> None:
    plain, decorrelated = _dump(diagonal_run), _dump(full_run)
    assert decorrelated["preprocessing"]["decorrelate"] and not plain["preprocessing"]["decorrelate"]
    assert [t["name"] for t in decorrelated["graphs"]["decoder"]["inputs"]] == ["z", "eps"]
    decorrelated["format_version"] = 4
    with pytest.raises(ValidationError, match="decorrelate is a format v5 field; this manifest says v4"):
        Manifest.model_validate(decorrelated)
    plain["preprocessing"]["decorrelate"] = True  # a decoder taking z alone cannot draw correlated features
    with pytest.raises(ValidationError, match=r"\('z',\) -> \('mean', 'log_var'\) are not those of a decorrelated"):
        Manifest.model_validate(plain)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(format="something-else"), "format"),
        (lambda m: m.update(input_dim=63), "preprocessing length differs"),
        (lambda m: m["anomaly"].update(sample=[3.0, 1.0]), "sorted"),
        (lambda m: m.update(name="Not A Name"), "name"),
        (lambda m: m["graphs"]["scorer"].update(sha256="abc"), "sha256"),
        (lambda m: m.update(unexpected=1), "unexpected"),
    ],
)
def test_manifest_rejects_inconsistent_bundles(diagonal_run: RunResult, change, message: str) -> None:
    raw = _dump(diagonal_run)
    change(raw)
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(raw)


@pytest.mark.parametrize(
    "file",
    [
        "/etc/x.onnx",
        "../../../x.onnx",
        "..",
        ".",
        "",
        "sub/encoder.onnx",
        "sub\\encoder.onnx",
        "..\\x.onnx",
        "C:\\x.onnx",
        ".hidden.onnx",
        "encoder.pt",
        "encoder.onnx\n",
        "enc oder.onnx",
        "a" * 129 + ".onnx",  # 133 characters
    ],
)
def test_manifest_refuses_graph_files_outside_the_bundle_folder(diagonal_run: RunResult, file: str) -> None:
    raw = _dump(diagonal_run)
    raw["graphs"]["encoder"]["file"] = file
    with pytest.raises(ValidationError, match=r"graphs\.encoder\.file[\s\S]*plain \*\.onnx file name"):
        Manifest.model_validate(raw)


def test_manifest_accepts_the_graph_file_names_training_writes(diagonal_run: RunResult) -> None:
    raw = _dump(diagonal_run)
    assert [raw["graphs"][g]["file"] for g in ("encoder", "decoder", "scorer")] == [
        ENCODER_FILE,
        DECODER_FILE,
        SCORER_FILE,
    ]
    raw["graphs"]["scorer"]["file"] = "Scorer_v2.1-final.onnx"
    assert Manifest.model_validate(raw).graphs.scorer.file == "Scorer_v2.1-final.onnx"


def test_list_versions_ignores_temporary_and_non_numeric_folders(tmp_path: Path) -> None:
    for name in ("1", "3", "10", ".tmp-abc", "latest", "02"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert list_versions(tmp_path) == [1, 3, 10]
    assert list_versions(tmp_path / "absent") == []


def test_model_names_follow_the_documented_pattern() -> None:
    assert is_valid_name("digits") and is_valid_name("fraud_v2-a") and is_valid_name("0")
    for bad in ("", "Digits", "-x", "a/b", "a" * 65, "x y"):
        assert not is_valid_name(bad)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "blob"
    path.write_bytes(b"0123456789" * 300_000)
    assert sha256_file(path, chunk_bytes=4096) == hashlib.sha256(path.read_bytes()).hexdigest()
