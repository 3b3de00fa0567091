"""Bundle verification at start-up: a bad bundle is refused with a reason and the others still serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runtime.bundle import DeviceUnavailable, load_bundle, resolve_providers
from tests.service.conftest import serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def repo_copy(tmp_path: Path, serving_repository: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(serving_repository, repo)
    return repo


READS = "this release reads gaussian-vae-bundle v2, v3, v4, v5 only"


def _as_format_version_1(bundle: Path) -> None:
    # a bundle written before per-feature kinds and the conformal reference: the old fields fail the new schema,
    # but the reason given is the format version
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["format_version"] = 1
    raw["preprocessing"] = {
        "kind": "standardize",
        "mean": raw["preprocessing"]["mean"],
        "std": raw["preprocessing"]["std"],
    }
    for key in ("noise_seed", "rows", "warnings"):
        raw["anomaly"].pop(key)
    (bundle / "manifest.json").write_text(json.dumps(raw))


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: _corrupt(b / "scorer.onnx"), "scorer.onnx: sha256 differs"),
        (lambda b: (b / "decoder.onnx").unlink(), "decoder.onnx is missing"),
        (lambda b: (b / "manifest.json").write_text("{not json"), "manifest.json is invalid"),
        (lambda b: (b / "manifest.json").unlink(), "cannot read manifest.json"),
        (lambda b: _edit_manifest(b, format="other"), "manifest.json is invalid at format"),
        (lambda b: _edit_manifest(b, version=7), "manifest says digits-full/7"),
        (
            lambda b: _edit_manifest(b, format_version=1),
            f"format version 1; {READS}",
        ),
        (_as_format_version_1, f"format version 1; {READS}"),
        (
            lambda b: _edit_manifest(b, format_version=6),
            f"format version 6; {READS}",
        ),
    ],
)
async def test_a_bad_bundle_is_refused_and_the_other_models_still_serve(repo_copy: Path, damage, reason: str) -> None:
    damage(repo_copy / "digits-full" / "1")
    async with serving(repo_copy) as client:
        ready = (await client.get("/readyz")).json()
        listing = (await client.get("/v1/models")).json()
        ok = await client.post("/v1/models/digits-diag/score", json={"inputs": [[0.1] * 64]})
        gone = await client.post("/v1/models/digits-full/score", json={"inputs": [[0.1] * 64]})
    assert ready["models"] == ["digits-diag"] and reason in ready["refused"]["digits-full/1"]
    assert reason in listing["refused"]["digits-full/1"]
    assert ok.status_code == 200 and gone.status_code == 404


def _edit_manifest(bundle: Path, **changes: object) -> None:
    path = bundle / "manifest.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


async def test_the_highest_version_serves_and_temporary_folders_are_ignored(repo_copy: Path) -> None:
    shutil.copytree(repo_copy / "digits-diag" / "1", repo_copy / "digits-diag" / "2")
    _edit_manifest(repo_copy / "digits-diag" / "2", version=2)
    (repo_copy / "digits-diag" / ".tmp-partial").mkdir()
    async with serving(repo_copy) as client:
        r = (await client.post("/v1/models/digits-diag/encode", json={"inputs": [[0.1] * 64]})).json()
    assert r["version"] == 2


async def test_a_refused_bundle_is_logged(repo_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    _corrupt(repo_copy / "digits-diag" / "1" / "encoder.onnx")
    async with serving(repo_copy) as client:
        assert (await client.get("/readyz")).json()["models"] == ["digits-full"]
    assert any("refused bundle" in r.message and "encoder.onnx" in r.message for r in caplog.records)


def test_cuda_device_without_cuda_fails_start_up_with_a_clear_message(repo_copy: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            resolve_providers(repo_copy, "cuda")
        except DeviceUnavailable as exc:
            assert "VAE_DEVICE=cuda" in str(exc)
            return
        pytest.skip("CUDA works on this machine")
    with pytest.raises(DeviceUnavailable, match="VAE_DEVICE=cuda"):
        resolve_providers(repo_copy, "cuda")


def test_cpu_device_uses_the_cpu_provider(repo_copy: Path) -> None:
    assert load_bundle(repo_copy / "digits-diag" / "1", "cpu", 1).provider == "CPUExecutionProvider"


def test_cuda_sessions_are_opened_with_tf32_off(repo_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # TF32 (onnxruntime's CUDA default) put an H100's scores 1e-3 relative away from the CPU provider's; the
    # sessions here are opened on the CPU, so only what is asked of onnxruntime is checked
    import onnxruntime as ort

    from runtime import bundle as runtime_bundle

    asked: list[object] = []
    real = ort.InferenceSession

    def recording(path: str, options: ort.SessionOptions, providers: list[object]) -> ort.InferenceSession:
        asked.append(providers)
        return real(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(runtime_bundle.ort, "InferenceSession", recording)
    load_bundle(repo_copy / "digits-diag" / "1", ["CUDAExecutionProvider", "CPUExecutionProvider"], 1)
    want = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert asked and all(p == want for p in asked), asked
