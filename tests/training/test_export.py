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
from tests.reference_math import score_from_graphs
from training.checkpoint import load_model
from training.config import ModelConfig
from training.data import load_table
from training.errors import ParityError
from training.export.bundle import publish_bundle
from training.export.onnx import export_graphs
from training.export.parity import check_parity
from training.features import FeatureScaling, feature_scaling
from training.losses import score_terms
from training.pipeline import RunResult
from training.stages import build_model

RUNS = ["diagonal_run", "full_run"]


def _session(bundle: Path, graph: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / f"{graph}.onnx"), providers=["CPUExecutionProvider"])


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
    eps = np.random.default_rng(0).standard_normal((len(x), 13, manifest.latent_dim)).astype(np.float32)
    full = manifest.covariance == "full"
    if full:
        _, log_var, scale_tril = _session(bundle, "encoder").run(None, {"x": x})
        np.testing.assert_allclose(np.log(np.einsum("bij,bij->bi", scale_tril, scale_tril)), log_var, atol=1e-4)
    expected = score_from_graphs(_session(bundle, "encoder"), _session(bundle, "decoder"), x, eps, full, manifest.prior)
    got = dict(
        zip(
            ["elbo", "reconstruction", "kl", "log_likelihood", "feature_nll"],
            _session(bundle, "scorer").run(None, {"x": x, "eps": eps}),
            strict=True,
        )
    )
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=2e-3, err_msg=key)


def test_decoder_graph_outputs_raw_space_moments_on_the_datas_values(diagonal_run: RunResult) -> None:
    model = load_model(diagonal_run.bundle_dir / "checkpoint.pt")
    z = np.random.default_rng(1).standard_normal((6, model.config.latent_dim)).astype(np.float32)
    mean, log_var = _session(diagonal_run.bundle_dir, "decoder").run(None, {"z": z})
    with torch.no_grad():
        m_std, lv_std = (model.full(t) for t in model.decoder(torch.from_numpy(z)))
    std = model.data_std.numpy()
    pre = diagonal_run.manifest.preprocessing
    assert pre.bin_centres and max(pre.step) == 1 / 16  # digits, trained dequantised: the mean of x + u/16 is x + 1/32
    on_values = m_std.numpy() * std + model.data_mean.numpy() - np.asarray(pre.step) / 2
    np.testing.assert_allclose(mean, on_values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_var, lv_std.numpy() + 2 * np.log(std), rtol=1e-5, atol=1e-4)


def _scorer(bundle: Path, x: np.ndarray, eps: np.ndarray) -> dict[str, np.ndarray]:
    names = ["elbo", "reconstruction", "kl", "log_likelihood", "feature_nll"]
    return dict(zip(names, _session(bundle, "scorer").run(None, {"x": x, "eps": eps}), strict=True))


def test_a_pixel_one_step_above_a_blank_corner_scores_six_nats_more_than_the_blank(diagonal_run: RunResult) -> None:
    # A constant on the lattice is N(c + h/2, h²/12) and is scored at its bin's centre: c is at the mean, c + h one
    # bin (sqrt(12) sd) above it, (sqrt(12))² / 2 = 6 nats more. Scored at the bin's lower edge the two were
    # sqrt(3) sd either side of the mean: the same score, the lit corner pixel unseen.
    pre = diagonal_run.manifest.preprocessing
    corner = pre.kinds.index("constant")
    assert pre.step[corner] > 0 and pre.mean[corner] == pytest.approx(pre.step[corner] / 2)  # blank: c = 0
    x = load_table("builtin:digits").x[:8].copy()
    lit = x.copy()
    lit[:, corner] = pre.step[corner]
    eps = np.random.default_rng(0).standard_normal((len(x), 4, diagonal_run.manifest.latent_dim)).astype(np.float32)
    blank, on = _scorer(diagonal_run.bundle_dir, x, eps), _scorer(diagonal_run.bundle_dir, lit, eps)
    np.testing.assert_allclose(on["feature_nll"][:, corner] - blank["feature_nll"][:, corner], 6.0, atol=1e-3)
    np.testing.assert_allclose(blank["elbo"] - on["elbo"], 6.0, atol=2e-3)


def test_the_scorer_takes_a_lattice_value_at_the_centre_of_its_bin(diagonal_run: RunResult) -> None:
    model = load_model(diagonal_run.bundle_dir / "checkpoint.pt")
    step = np.asarray(diagonal_run.manifest.preprocessing.step, dtype=np.float32)
    x = load_table("builtin:digits").x[-6:]
    eps = np.random.default_rng(2).standard_normal((len(x), 5, model.config.latent_dim)).astype(np.float32)
    got = _scorer(diagonal_run.bundle_dir, x, eps)
    with torch.no_grad():
        terms = score_terms(model, model.standardize(torch.from_numpy(x + step / 2)), torch.from_numpy(eps))
    np.testing.assert_allclose(got["elbo"], terms.elbo.numpy(), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(got["log_likelihood"], terms.iwae.numpy(), rtol=1e-4, atol=2e-3)


def test_parity_check_fails_when_graphs_do_not_match_the_model(tmp_path: Path) -> None:
    scaling = FeatureScaling.identity(6)
    exported = build_model(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,)), scaling, seed=0)
    other = build_model(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,)), scaling, seed=1)
    export_graphs(exported, tmp_path)
    with pytest.raises(ParityError, match="ONNX parity failed for encoder"):
        check_parity(other, tmp_path, np.random.default_rng(0).random((5, 6), dtype=np.float32), seed=0)


def test_the_torch_export_path_builds_the_exporters_function_table_once_and_its_graphs_are_what_it_writes_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contextlib import nullcontext

    from torch.onnx._internal.exporter._registration import ONNXRegistry

    import training.export.onnx as onnx_export

    model = build_model(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,)), FeatureScaling.identity(6), seed=0)
    original = ONNXRegistry.__dict__["from_torchlib"]
    builds: list[object] = []

    def counted(cls: type, *args: object, **kwargs: object) -> object:
        builds.append(cls)
        return original.__func__(cls, *args, **kwargs)

    monkeypatch.setattr(ONNXRegistry, "from_torchlib", classmethod(counted))
    (tmp_path / "once").mkdir()
    (tmp_path / "alone").mkdir()
    export_graphs(model, tmp_path / "once", exporter="dynamo")
    assert len(builds) == 1  # one table for the three graphs, where torch.onnx.export alone builds three
    assert ONNXRegistry.__dict__["from_torchlib"].__func__ is counted  # the exporter's own method is back

    monkeypatch.setattr(onnx_export, "_torchlib_registry_built_once", nullcontext)
    export_graphs(model, tmp_path / "alone", exporter="dynamo")
    assert len(builds) == 4
    for graph in ("encoder", "decoder", "scorer"):
        assert (tmp_path / "once" / f"{graph}.onnx").read_bytes() == (tmp_path / "alone" / f"{graph}.onnx").read_bytes()


@pytest.mark.parametrize("decorrelated", [False, True])
def test_traced_graphs_answer_as_the_torch_export_ones_at_every_batch_size_and_k(
    tmp_path: Path, decorrelated: bool, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    scaling = feature_scaling(x, np.arange(200), decorrelate=decorrelated)
    config = ModelConfig(input_dim=6, latent_dim=2, hidden=(8,), covariance="full")
    model = build_model(config, scaling, seed=0)
    assert model.decorrelating is decorrelated
    for exporter in ("torchscript", "dynamo"):
        (tmp_path / exporter).mkdir()
        export_graphs(model, tmp_path / exporter, exporter=exporter)
        check_parity(model, tmp_path / exporter, x[:32].astype(np.float32), seed=0)  # batch sizes and K of its own
    assert "TorchScript exporter refused" not in caplog.text  # traced, not written by the fallback
    for graph in ("encoder", "decoder", "scorer"):  # the same declared shapes: fixed sizes fixed, batch and K named
        traced, exported = (onnx.load(str(tmp_path / e / f"{graph}.onnx")).graph for e in ("torchscript", "dynamo"))
        assert _shapes(traced) == _shapes(exported), graph
    for graph, feeds in {
        "encoder": {"x": x[:9].astype(np.float32)},
        "decoder": {"z": rng.standard_normal((9, 2)).astype(np.float32)}
        | ({"eps": rng.standard_normal((9, 6)).astype(np.float32)} if decorrelated else {}),
        "scorer": {"x": x[:9].astype(np.float32), "eps": rng.standard_normal((9, 4, 2)).astype(np.float32)},
    }.items():
        traced, exported = (
            ort.InferenceSession(str(tmp_path / e / f"{graph}.onnx")).run(None, feeds)
            for e in ("torchscript", "dynamo")
        )
        for a, b in zip(traced, exported, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_graph_whose_trace_would_freeze_a_size_is_written_by_torch_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import training.export.onnx as onnx_export

    model = build_model(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,)), FeatureScaling.identity(6), seed=0)
    real = onnx_export.graph_modules

    class Sized(torch.nn.Module):  # a Python int from the batch size: a trace would freeze the dummy's
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            mean, log_var = self.encoder(x)
            return mean + torch.zeros(int(x.shape[0]), 1), log_var

    monkeypatch.setattr(onnx_export, "graph_modules", lambda m: {**real(m), "encoder": Sized(real(m)["encoder"])})
    export_graphs(model, tmp_path)
    assert "refused encoder.onnx" in caplog.text and "decoder.onnx" not in caplog.text  # the others are traced
    assert (tmp_path / "encoder.onnx").is_file()  # written by torch.export (what it makes of it, parity judges)


def _shapes(graph: onnx.GraphProto) -> dict[str, list[int | str]]:
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*graph.input, *graph.output)
    }


def test_a_graph_the_torchscript_exporter_refuses_is_written_by_torch_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model(ModelConfig(input_dim=6, latent_dim=2, hidden=(8,)), FeatureScaling.identity(6), seed=0)
    real = torch.onnx.export
    calls: list[bool] = []

    def without_torchscript(*args: object, dynamo: bool = True, **kwargs: object) -> object:
        calls.append(dynamo)
        if not dynamo:
            raise RuntimeError("this torch has no TorchScript exporter")
        return real(*args, dynamo=dynamo, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.onnx, "export", without_torchscript)
    export_graphs(model, tmp_path)
    assert calls == [False, True] * 3  # each graph tried by tracing first
    check_parity(model, tmp_path, np.random.default_rng(0).random((5, 6), dtype=np.float32), seed=0)
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_graphs(model, tmp_path, exporter="jit")


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
    assert ref.threshold == ref.threshold_at(ref.default_quantile)  # the conformal rule of contract/anomaly.py
    assert ref.rows == manifest.training.rows["validation"] == len(ref.sample)  # every validation row
    for split in ("validation", "test"):
        diag = manifest.diagnostics[split]
        assert diag.iwae >= diag.elbo and diag.gap == pytest.approx(diag.iwae - diag.elbo)
        assert len(diag.kl_per_dim) == manifest.latent_dim and 0 <= diag.active_units <= manifest.latent_dim
    report = run.bundle_dir / "report"
    plots = ("curves.png", "kl_per_dim.png", "latent.png", "scores.png", "feature_errors.png", "marginals.png")
    images = ("correlations.png", "samples.png", "reconstructions.png", "traversals.png")
    for png in (*plots, *images):
        assert (report / png).stat().st_size > 1000
    assert f'src="{plots[0]}"' in (report / "index.html").read_text()
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


def test_the_reference_is_every_validation_row_scored_by_the_exported_graph_with_the_shared_noise(
    diagonal_run: RunResult,
) -> None:
    # What any reader does with the bundle alone (contract/anomaly.py) reproduces training's reference exactly:
    # the threshold cannot drift between training and serving, nor with the size of the test split.
    from contract import anomaly
    from training.data import split_rows

    manifest = diagonal_run.manifest
    ref = manifest.anomaly
    x = load_table("builtin:digits").x
    val = split_rows(len(x), 0.1, 0.1, manifest.training.seed).val
    eps = anomaly.score_noise(ref.importance_samples, manifest.latent_dim, ref.noise_seed)
    rows = x[val]
    (elbo,) = _session(diagonal_run.bundle_dir, "scorer").run(
        ["elbo"], {"x": rows, "eps": np.ascontiguousarray(np.broadcast_to(eps, (len(rows), *eps.shape)))}
    )
    np.testing.assert_allclose(np.sort(anomaly.finite_scores(-elbo)), ref.sample, rtol=1e-4, atol=1e-3)
    # a row's score is the same alone as among others
    (alone,) = _session(diagonal_run.bundle_dir, "scorer").run(["elbo"], {"x": rows[5:6], "eps": eps[None]})
    assert alone[0] == pytest.approx(elbo[5], rel=1e-5, abs=1e-4)
