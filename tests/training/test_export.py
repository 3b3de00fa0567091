"""The bundle: ONNX parity with PyTorch, graph outputs against an independent numpy computation, the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from contract import MANIFEST_FILE, Manifest, list_versions, sha256_file
from training.checkpoint import load_model
from training.config import ModelConfig
from training.data import load_table
from training.errors import ParityError
from training.export.bundle import publish_bundle
from training.export.onnx import export_graphs
from training.export.parity import check_parity
from training.pipeline import RunResult, build_model

RUNS = ["diagonal_run", "full_run"]


def _session(bundle: Path, graph: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / f"{graph}.onnx"), providers=["CPUExecutionProvider"])


def _log_normal_np(x: np.ndarray, mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi) + log_var + (x - mean) ** 2 / np.exp(log_var))


@pytest.mark.parametrize("run_name", RUNS)
def test_export_parity_holds_at_sizes_unlike_the_export_dummies(run_name: str, request: pytest.FixtureRequest) -> None:
    run: RunResult = request.getfixturevalue(run_name)
    model = load_model(run.bundle_dir / "checkpoint.pt")
    x = load_table("builtin:digits").x[-40:]
    report = check_parity(model, run.bundle_dir, x, seed=5)
    assert report.passed and report.max_abs_diff <= report.atol
    assert run.manifest.parity.passed and 1 in run.manifest.parity.batch_sizes


@pytest.mark.parametrize("run_name", RUNS)
def test_scorer_equals_numpy_computation_from_encoder_and_decoder_graphs(
    run_name: str, request: pytest.FixtureRequest
) -> None:
    run: RunResult = request.getfixturevalue(run_name)
    bundle, manifest = run.bundle_dir, run.manifest
    x = load_table("builtin:digits").x[:9]
    k, d = 13, manifest.latent_dim
    eps = np.random.default_rng(0).standard_normal((len(x), k, d)).astype(np.float32)
    enc = _session(bundle, "encoder").run(None, {"x": x})
    mean, log_var = enc[0].astype(np.float64), enc[1].astype(np.float64)
    if manifest.covariance == "full":
        scale_tril = enc[2].astype(np.float64)
        np.testing.assert_allclose(np.log(np.einsum("bij,bij->bi", scale_tril, scale_tril)), log_var, atol=1e-4)
    else:
        scale_tril = np.stack([np.diag(np.exp(0.5 * lv)) for lv in log_var])
    z = mean[:, None, :] + np.einsum("bij,bkj->bki", scale_tril, eps)  # z_k = mean + L eps_k
    dec_mean, dec_log_var = _session(bundle, "decoder").run(None, {"z": z.reshape(-1, d).astype(np.float32)})
    ll_feat = _log_normal_np(x[:, None, :], dec_mean.reshape(len(x), k, -1), dec_log_var.reshape(len(x), k, -1))
    ll = ll_feat.sum(-1)  # (B, K) raw space
    log_diag = np.log(np.stack([np.diag(s) for s in scale_tril]))
    log_q = (-0.5 * (np.log(2 * np.pi) + eps.astype(np.float64) ** 2)).sum(-1) - log_diag.sum(-1, keepdims=True)
    log_p_z = (-0.5 * (np.log(2 * np.pi) + z**2)).sum(-1)
    cov = scale_tril @ np.transpose(scale_tril, (0, 2, 1))
    kl = 0.5 * (np.trace(cov, axis1=1, axis2=2) + (mean**2).sum(-1) - d - 2 * log_diag.sum(-1))
    log_w = ll + log_p_z - log_q
    iwae = np.log(np.mean(np.exp(log_w - log_w.max(1, keepdims=True)), 1)) + log_w.max(1)
    elbo, rec, kl_out, log_lik, feature_nll = _session(bundle, "scorer").run(None, {"x": x, "eps": eps})
    tol = {"rtol": 1e-4, "atol": 2e-3}
    np.testing.assert_allclose(rec, ll.mean(1), **tol)
    np.testing.assert_allclose(kl_out, kl, **tol)
    np.testing.assert_allclose(elbo, ll.mean(1) - kl, **tol)
    np.testing.assert_allclose(log_lik, iwae, **tol)
    np.testing.assert_allclose(feature_nll, -ll_feat.mean(1), **tol)


def test_decoder_graph_outputs_raw_space_moments(diagonal_run: RunResult) -> None:
    model = load_model(diagonal_run.bundle_dir / "checkpoint.pt")
    z = np.random.default_rng(1).standard_normal((6, model.config.latent_dim)).astype(np.float32)
    mean, log_var = _session(diagonal_run.bundle_dir, "decoder").run(None, {"z": z})
    with torch.no_grad():
        m_std, lv_std = model.decoder(torch.from_numpy(z))
    std = model.data_std.numpy()
    np.testing.assert_allclose(mean, m_std.numpy() * std + model.data_mean.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_var, lv_std.numpy() + 2 * np.log(std), rtol=1e-5, atol=1e-4)


def test_parity_check_fails_when_graphs_do_not_match_the_model(tmp_path: Path) -> None:
    mean, std = np.zeros(6, np.float32), np.ones(6, np.float32)
    exported = build_model(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,)), mean, std, seed=0)
    other = build_model(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,)), mean, std, seed=1)
    export_graphs(exported, tmp_path)
    with pytest.raises(ParityError, match="ONNX parity failed for encoder"):
        check_parity(other, tmp_path, np.random.default_rng(0).random((5, 6), dtype=np.float32), seed=0)


def test_failed_build_publishes_nothing_and_leaves_no_temporary_folder(tmp_path: Path) -> None:
    def build(tmp: Path, version: int) -> Manifest:
        (tmp / "encoder.onnx").write_bytes(b"partial")
        raise ParityError("scorer", "elbo", 1.0, 1e-3, 1e-4)

    with pytest.raises(ParityError):
        publish_bundle(tmp_path, "m", build)
    assert list((tmp_path / "m").iterdir()) == []


@pytest.mark.parametrize("run_name", RUNS)
def test_manifest_has_required_fields_and_matching_hashes(run_name: str, request: pytest.FixtureRequest) -> None:
    run: RunResult = request.getfixturevalue(run_name)
    raw = json.loads((run.bundle_dir / MANIFEST_FILE).read_text())
    manifest = Manifest.model_validate(raw)
    for key in (
        "format",
        "format_version",
        "name",
        "version",
        "created_at",
        "input_dim",
        "latent_dim",
        "covariance",
        "feature_names",
        "preprocessing",
        "graphs",
        "opset",
        "training",
        "diagnostics",
        "anomaly",
    ):
        assert key in raw
    assert manifest.format == "gaussian-vae-bundle" and manifest.version == int(run.bundle_dir.name)
    assert manifest.input_dim == 64 and manifest.feature_names is not None and len(manifest.feature_names) == 64
    for spec in (manifest.graphs.encoder, manifest.graphs.decoder, manifest.graphs.scorer):
        path = run.bundle_dir / spec.file
        assert sha256_file(path) == spec.sha256
        graph = onnx.load(str(path))
        assert [i.name for i in graph.graph.input] == [s.name for s in spec.inputs]
        assert [o.name for o in graph.graph.output] == [s.name for s in spec.outputs]
        first_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
        assert first_dim.dim_param and not first_dim.dim_value  # the batch axis is dynamic
    ref = manifest.anomaly
    assert ref.sample == sorted(ref.sample) and set(ref.quantiles) == {"0.5", "0.9", "0.95", "0.99", "0.999"}
    assert ref.threshold == pytest.approx(ref.quantiles["0.99"])
    for split in ("validation", "test"):
        diag = manifest.diagnostics[split]
        assert diag.iwae >= diag.elbo and diag.gap == pytest.approx(diag.iwae - diag.elbo)
        assert len(diag.kl_per_dim) == manifest.latent_dim and 0 <= diag.active_units <= manifest.latent_dim
    report = run.bundle_dir / "report"
    for png in ("curves.png", "latent.png", "scores.png", "samples.png", "reconstructions.png"):
        assert (report / png).stat().st_size > 1000
    assert (
        json.loads((report / "metrics.json").read_text())["diagnostics"]["test"]["iwae"]
        == manifest.diagnostics["test"].iwae
    )


def test_full_covariance_encoder_exports_a_lower_triangular_scale(full_run: RunResult) -> None:
    x = load_table("builtin:digits").x[:5]
    _, _, scale_tril = _session(full_run.bundle_dir, "encoder").run(None, {"x": x})
    assert scale_tril.shape == (5, 4, 4)
    assert np.all(np.triu(scale_tril, 1) == 0) and np.all(np.diagonal(scale_tril, axis1=1, axis2=2) > 0)


def test_a_second_run_publishes_the_next_version(model_repository: Path, diagonal_run: RunResult) -> None:
    from tests.conftest import train_small

    second = train_small(model_repository, "digits-diag", epochs=3, warmup_epochs=1)
    assert second.manifest.version == diagonal_run.manifest.version + 1
    assert list_versions(model_repository / "digits-diag")[-1] == second.manifest.version
