"""A training run end to end: the stages (training/stages.py) in order, then the verified bundle they publish.
No argv, no console."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import sklearn
import torch

from contract import (
    CHECKPOINT_FILE,
    REPORT_DIR,
    Graphs,
    GraphSpec,
    Manifest,
    ParityReport,
    Preprocessing,
    TrainingRecord,
    sha256_file,
)
from training.checkpoint import load_run_checkpoint, save_checkpoint
from training.config import LOG_VAR_MAX, LOG_VAR_MIN, RunConfig
from training.decorrelate import decorrelation_candidates
from training.errors import ConfigError, TrainingError
from training.export.bundle import loadable, publish_bundle
from training.export.onnx import OPSET, export_graphs, graph_io
from training.export.parity import check_parity
from training.features import FeatureScaling
from training.loop import EpochMetrics, FitResult
from training.refine import refines
from training.report import write_report
from training.resume import (
    candidate_file,
    check_leftover,
    claimed_run_file,
    owns_run_file,
    resolve_auto,
    run_file,
    split_fingerprint,
)
from training.stages import (
    Evaluation,
    Fitted,
    LoadedData,
    evaluate,
    fit,
    fit_prior,
    load,
    refine,
)

__all__ = ["RunResult", "build_bundle", "library_versions", "run", "run_loaded"]


@dataclass(frozen=True)
class RunResult:
    bundle_dir: Path  # on a torchrun rank other than 0: the model folder, nothing published by this rank
    manifest: Manifest | None  # None on ranks other than 0
    fit: FitResult
    rank: int = 0
    world: int = 1


def run(
    config: RunConfig,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> RunResult:
    """Load and check the data first (nothing is written if it fails), train, evaluate, export, publish.

    Under torchrun every rank loads and fits; rank 0 alone evaluates and publishes, and reports each epoch to
    on_epoch. With config.checkpoint_every > 0 a resumable checkpoint is written atomically to <repository>/<name>/
    checkpoint-latest.pt every that many epochs (and removed once the bundle is published); config.resume continues
    from such a checkpoint or from a bundle. on_phase hears each phase as it starts (for a progress display)."""
    phase = on_phase or (lambda text: None)
    config = resolve_auto(config)
    main = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank 0 alone writes --out
    if main:
        check_destination(config)
        check_leftover(config)
    if config.resume is not None:
        load_run_checkpoint(config.resume)  # a wrong --resume is found before the data are read
    phase(f"reading and checking {config.data.source}")
    data = load(config)
    with claimed_run_file(config, main):
        return run_loaded(config, data, on_epoch, on_phase)


def check_destination(config: RunConfig) -> None:
    """Refuse an --out this run could not publish into, before any work (nothing is written here): the nearest
    folder of <out>/<name> that exists must be one this process may write in."""
    folder = config.model_dir.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"--out {config.repository}: {folder} is not a folder, so no bundle can be published there")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {config.repository}: this process may not write in {folder}")


def run_loaded(
    config: RunConfig,
    data: LoadedData,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> RunResult:
    """Every stage after loading, in order: fit, fit_prior, refine (rank 0), evaluate, then the verified bundle. The
    one sequence for vae-train and the estimator (gaussian_vae), which loads its rows from memory."""
    phase = on_phase or (lambda text: None)
    twice = len(decorrelation_candidates(config, data.scaling)) > 1
    phase(
        f"training on {len(data.split.train)} rows, validating on {len(data.split.val)}"
        + (" (twice: on decorrelated features and on the features as they are, --decorrelate auto)" if twice else "")
    )
    fitted = fit(config, data, on_epoch)
    if not data.ranks.is_main:
        return RunResult(config.model_dir, None, fitted.result, data.ranks.rank, data.ranks.world)
    if config.train.prior == "mixture":
        phase("fitting a Gaussian mixture prior to the aggregate posterior, choosing its size on validation rows")
    fit_prior(config, data, fitted)
    if config.train.refine_steps > 0:
        if refines(config.train):  # else refine() records why it did not run (--objective iwae)
            full = ", made full-covariance," if fitted.model.config.covariance != config.model.covariance else ""
            phase(
                f"training the encoder{full} alone on training rows and the model's own rows (the decoder and prior "
                "fixed)"
            )
        done = refine(config, data, fitted)
        fitted = replace(fitted, refinement=done)
        phase(done.summary())
    phase("evaluating: ELBO, IWAE, active units, anomaly reference")
    evaluation = evaluate(config, data, fitted)
    phase("exporting to ONNX, checking parity with torch, writing the report, publishing")
    return build_bundle(config, data, fitted, evaluation)


def build_bundle(config: RunConfig, data: LoadedData, fitted: Fitted, evaluation: Evaluation) -> RunResult:
    """Export the graphs, check them against torch, write the checkpoint, the report and the manifest (last), publish
    them as <repository>/<name>/<next version>/ and remove the run's checkpoint-latest.pt (the bundle's replaces it)."""
    split = data.split
    parity_rows = split.test[:32] if split.test.size else split.val[:32]

    def build(tmp: Path, version: int) -> Manifest:
        export_graphs(fitted.model, tmp)
        parity = check_parity(fitted.model, tmp, np.asarray(data.table.x[parity_rows]), config.train.seed)
        extra = {
            "train_config": config.train.to_dict(),
            "data": asdict(config.data),
            "scaling": fitted.model.scaling.to_dict(),
            "decorrelated": fitted.model.decorrelating,
            "rows": split_fingerprint(data.table.x, split),  # a further run on these rows must match it
        }
        if fitted.result.state is not None:
            extra["state"] = fitted.result.state.to_dict()
        if fitted.model.prior is not None:
            extra["prior"] = fitted.model.prior.spec.model_dump()
        save_checkpoint(tmp / CHECKPOINT_FILE, fitted.model, extra)
        (tmp / REPORT_DIR).mkdir()
        _write_report(tmp / REPORT_DIR, config, data, fitted, evaluation, version)
        return loadable(_manifest(tmp, version, config, data, fitted, evaluation, parity))

    try:
        bundle_dir, manifest = publish_bundle(config.repository, config.model_name, build)
    except OSError as exc:  # a full disk, a read-only volume: one line, and where the training is kept
        kept = run_file(config)
        where = f"; the training is kept in {kept} (--resume it)" if kept.is_file() else ""
        raise TrainingError(f"cannot publish the bundle under {config.model_dir} ({exc}){where}") from exc
    if owns_run_file(config):  # another run's unfinished checkpoint stays (training/resume.py)
        run_file(config).unlink(missing_ok=True)
        candidate_file(config).unlink(missing_ok=True)
    return RunResult(bundle_dir, manifest, fitted.result, data.ranks.rank, data.ranks.world)


def _manifest(
    graphs: Path,
    version: int,
    config: RunConfig,
    data: LoadedData,
    fitted: Fitted,
    evaluation: Evaluation,
    parity: ParityReport,
) -> Manifest:
    model = fitted.model
    specs = {
        g: GraphSpec(file=f"{g}.onnx", sha256=sha256_file(graphs / f"{g}.onnx"), inputs=i, outputs=o)
        for g, (i, o) in graph_io(model).items()
    }
    return Manifest(
        name=config.model_name,
        version=version,
        created_at=datetime.now(UTC),
        input_dim=model.config.input_dim,
        latent_dim=model.config.latent_dim,
        covariance=model.config.covariance,
        feature_names=data.table.feature_names,
        image_shape=list(data.image_shape) if data.image_shape else None,
        preprocessing=_preprocessing(model.scaling),
        decoder_variance_floor=model.config.decoder_var_floor,
        log_var_bounds=(LOG_VAR_MIN, LOG_VAR_MAX),
        graphs=Graphs(**specs),
        opset=OPSET,
        parity=parity,
        training=_training_record(config, data, fitted),
        diagnostics=evaluation.diagnostics,
        anomaly=evaluation.reference,
        prior=None if model.prior is None else model.prior.spec,
    )


def _training_record(config: RunConfig, data: LoadedData, fitted: Fitted) -> TrainingRecord:
    split, result = data.split, fitted.result
    return TrainingRecord(
        arguments=dict(config.arguments),
        seed=config.train.seed,
        library_versions=library_versions(),
        epochs_run=len(result.history),
        best_epoch=result.best_epoch,
        stop_reason=result.stop_reason,
        seconds=result.seconds,
        rows={"train": len(split.train), "validation": len(split.val), "test": len(split.test)},
        decorrelation=fitted.decorrelation or {},
    )


def _preprocessing(scaling: FeatureScaling) -> Preprocessing:
    return Preprocessing(
        mean=scaling.mean.astype(np.float32).tolist(),
        std=scaling.std.astype(np.float32).tolist(),
        kinds=scaling.kinds,
        step=scaling.step.tolist(),
        dequantize=scaling.dequantize,
        bin_centres=scaling.dequantize,  # the graphs' centre_shift (training/export/onnx.py)
        near_constant=scaling.near_constant,
        decorrelate=scaling.factor is not None,
    )


def _write_report(
    report_dir: Path, config: RunConfig, data: LoadedData, fitted: Fitted, evaluation: Evaluation, version: int
) -> None:
    """report/: metrics.json, the plots that apply to this data and index.html (training/report/)."""
    write_report(report_dir, config, data, fitted, evaluation, version)


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
