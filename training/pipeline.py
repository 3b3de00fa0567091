"""One training run end to end: data -> model -> fit -> diagnostics -> verified bundle. No argv, no console."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    Preprocessing,
    TrainingRecord,
    is_valid_name,
    sha256_file,
)
from training import report
from training.checkpoint import RUN_CHECKPOINT, load_run_checkpoint, save_checkpoint, save_run_checkpoint
from training.config import CHECKPOINT_EVERY, LOG_VAR_MAX, LOG_VAR_MIN, DataConfig, ModelConfig, TrainConfig
from training.data import Table, load_table, split_rows
from training.distributed import Dist, init_from_env
from training.errors import ConfigError, DataError
from training.evaluate import anomaly_reference, anomaly_scores, diagnostics, labelled_metrics
from training.export.bundle import publish_bundle
from training.export.onnx import OPSET, export_graphs, graph_io
from training.export.parity import check_parity
from training.features import FeatureScaling, feature_scaling
from training.loop import EpochMetrics, FitResult, TrainState, fit
from training.model import GaussianVAE
from training.rows import MappedRows, Rows


@dataclass(frozen=True)
class RunResult:
    bundle_dir: Path  # on a torchrun rank other than 0: the model folder, nothing published by this rank
    manifest: Manifest | None  # None on ranks other than 0
    fit: FitResult
    rank: int = 0
    world: int = 1


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


def build_model(cfg: ModelConfig, scaling: FeatureScaling, seed: int) -> GaussianVAE:
    # Initial weights from the seed without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GaussianVAE(cfg, scaling)


def stream(seed: int, purpose: int) -> int:
    # an independent seed for each purpose (validation and test diagnostics, plots), whatever the split sizes
    return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])


def train_and_export(
    data: DataConfig,
    model_options: dict[str, Any],
    train: TrainConfig,
    repository: Path,
    name: str,
    image_shape: tuple[int, int] | None = None,
    arguments: dict[str, Any] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    resume: Path | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> RunResult:
    """Load and check the data first (nothing is written if it fails), train, evaluate, export, publish.

    With checkpoint_every > 0 a resumable checkpoint is written atomically to <repository>/<name>/
    checkpoint-latest.pt every that many epochs (and removed once the bundle is published); `resume` continues
    from such a checkpoint or from a bundle."""
    if not is_valid_name(name):
        raise ConfigError(f"model name {name!r} must match [a-z0-9][a-z0-9_-]{{0,63}} (lower case, digits, _ and -)")
    ranks, rank_device = init_from_env(train.device)
    table = load_table(
        data.source,
        key=data.key,
        columns=list(data.columns) if data.columns else None,
        label_column=data.label_column,
        ranks=ranks,
        delimiter=data.delimiter,
        na=data.na,
        exclude_columns=data.exclude_columns,
    )
    image_shape = image_shape or table.image_shape
    if image_shape is not None and image_shape[0] * image_shape[1] != table.x.shape[1]:
        raise DataError(f"--image-shape {image_shape[0]}x{image_shape[1]} does not match {table.x.shape[1]} features")
    split = split_rows(table.x.shape[0], data.val_fraction, data.test_fraction, data.seed)
    scaling = feature_scaling(
        table.x,
        split.train,
        detect_lattice=data.detect_lattice,
        dequantize=data.dequantize,
        seed=data.seed,
        ranks=ranks,
    )
    if scaling.active.size == 0:
        raise DataError(f"{data.source}: every feature is constant on the training rows; there is nothing to learn")
    mean, std = scaling.mean.astype(np.float32), scaling.std.astype(np.float32)
    device = rank_device or resolve_device(train.device)
    model = build_model(ModelConfig(input_dim=table.x.shape[1], **model_options), scaling, train.seed).to(device)

    def rows(idx: np.ndarray) -> torch.Tensor:
        return model.standardize(torch.from_numpy(np.asarray(table.x[idx], dtype=np.float32)).to(device))

    def rows_for_training(idx: np.ndarray) -> Rows:
        # A memory-mapped table (.npy, or .parquet's scratch copy) stays on disk: rows are read as they are used.
        return MappedRows(table.x, idx, mean, std, device) if isinstance(table.x, np.memmap) else rows(idx)

    x_train = rows_for_training(split.train)
    # Each rank scores only its share of the validation rows every epoch (the sums are all-reduced).
    x_val_share = rows_for_training(split.val[ranks.rank :: ranks.world])
    run_file = repository / name / RUN_CHECKPOINT
    result = _fit_resumable(
        model,
        x_train,
        x_val_share,
        train,
        data,
        on_epoch if ranks.is_main else None,
        resume,
        checkpoint_every if ranks.is_main else 0,
        run_file,
        ranks,
    )
    if not ranks.is_main:  # rank 0 evaluates, exports and publishes
        return RunResult(repository / name, None, result, ranks.rank, ranks.world)
    # Rank 0 alone evaluates, on at most eval_rows rows of each split, each with its own random stream; the anomaly
    # reference scores every validation row with the noise block the service shares across rows.
    evaluated = {"validation": evaluation_rows(split.val, train.eval_rows, train.seed)}
    if split.test.size:
        evaluated["test"] = evaluation_rows(split.test, train.eval_rows, train.seed + 1)
    diag = {}
    for i, (part, idx) in enumerate(evaluated.items()):
        gen = torch.Generator(device=device).manual_seed(stream(train.seed, 2 + i))
        diag[part] = diagnostics(model, rows(idx), train.eval_samples, gen)
    scores = anomaly_scores(model, rows_for_training(split.val), train.score_samples)
    reference = anomaly_reference(scores, train.score_samples, train.threshold_quantile)
    labels = binary_labels(table.labels)
    scored = {"validation": (split.val, scores)}
    if labels is not None:
        if split.test.size:
            scored["test"] = (split.test, anomaly_scores(model, rows_for_training(split.test), train.score_samples))
        for part, (idx, s) in scored.items():
            diag[part] = diag[part].model_copy(
                update={"labelled": labelled_metrics(s, labels[idx], reference.threshold)}
            )
    val_idx = evaluated["validation"]
    x_val = rows(val_idx)
    parity_rows = split.test[:32] if split.test.size else split.val[:32]

    def build(tmp: Path, version: int) -> Manifest:
        export_graphs(model, tmp)
        parity = check_parity(model, tmp, np.asarray(table.x[parity_rows]), train.seed)
        specs = {
            g: GraphSpec(file=f"{g}.onnx", sha256=sha256_file(tmp / f"{g}.onnx"), inputs=i, outputs=o)
            for g, (i, o) in graph_io(model).items()
        }
        extra = {"train_config": train.to_dict(), "data": asdict(data), "scaling": scaling.to_dict()}
        if result.state is not None:
            extra["state"] = result.state.to_dict()
        save_checkpoint(tmp / CHECKPOINT_FILE, model, extra)
        report_dir = tmp / REPORT_DIR
        report_dir.mkdir()
        _write_report(
            report_dir,
            model,
            table,
            val_idx,
            x_val,
            result,
            diag,
            scores,
            reference.threshold,
            train,
            image_shape,
            {part: (s, labels[idx]) for part, (idx, s) in scored.items()} if labels is not None else {},
        )
        return Manifest(
            name=name,
            version=version,
            created_at=datetime.now(UTC),
            input_dim=table.x.shape[1],
            latent_dim=model.config.latent_dim,
            covariance=model.config.covariance,
            feature_names=table.feature_names,
            image_shape=list(image_shape) if image_shape else None,
            preprocessing=Preprocessing(
                mean=mean.tolist(),
                std=std.tolist(),
                kinds=scaling.kinds,
                step=scaling.step.tolist(),
                dequantize=scaling.dequantize,
                near_constant=scaling.near_constant,
            ),
            decoder_variance_floor=model.config.decoder_var_floor,
            log_var_bounds=(LOG_VAR_MIN, LOG_VAR_MAX),
            graphs=Graphs(**specs),
            opset=OPSET,
            parity=parity,
            training=TrainingRecord(
                arguments=arguments or {},
                seed=train.seed,
                library_versions=library_versions(),
                epochs_run=len(result.history),
                best_epoch=result.best_epoch,
                stop_reason=result.stop_reason,
                seconds=result.seconds,
                rows={"train": len(split.train), "validation": len(split.val), "test": len(split.test)},
            ),
            diagnostics=diag,
            anomaly=reference,
        )

    bundle_dir, manifest = publish_bundle(repository, name, build)
    run_file.unlink(missing_ok=True)  # the bundle's checkpoint.pt holds the final state
    return RunResult(bundle_dir, manifest, result, ranks.rank, ranks.world)


def binary_labels(labels: np.ndarray | None) -> np.ndarray | None:
    """A label column of 0/1 values (1 = anomaly) as a bool array; None for none or any other labels."""
    if labels is None:
        return None
    values = {str(v).strip() for v in np.unique(labels)}
    if not values <= {"0", "1", "0.0", "1.0", "True", "False", "true", "false"}:
        return None
    return np.array([str(v).strip() in {"1", "1.0", "True", "true"} for v in labels])


def evaluation_rows(idx: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """idx itself when it has at most cap rows (or cap is 0), else a seeded sample of cap of them, in idx order."""
    if cap <= 0 or idx.size <= cap:
        return idx
    return idx[np.sort(np.random.default_rng(seed).choice(idx.size, cap, replace=False))]


def _fit_resumable(
    model: GaussianVAE,
    x_train: Rows,
    x_val: Rows,
    train: TrainConfig,
    data: DataConfig,
    on_epoch: Callable[[EpochMetrics], None] | None,
    resume: Path | None,
    checkpoint_every: int,
    run_file: Path,
    ranks: Dist,
) -> FitResult:
    state = None
    if resume is not None:
        saved, state = load_run_checkpoint(resume)
        if saved["model_config"] != model.config.to_dict():
            raise ConfigError(
                f"--resume {resume}: it was trained with model {saved['model_config']}, "
                f"this run asks for {model.config.to_dict()}"
            )
        if saved.get("data", {}).get("source") != data.source:
            raise ConfigError(
                f"--resume {resume}: it was trained on {saved.get('data', {}).get('source')!r}, "
                f"this run reads {data.source!r}"
            )

    def on_checkpoint(s: TrainState) -> None:
        run_file.parent.mkdir(parents=True, exist_ok=True)
        extra = {"train_config": train.to_dict(), "data": asdict(data)}
        save_run_checkpoint(run_file, model.config.to_dict(), extra, s)

    return fit(
        model,
        x_train,
        x_val,
        train,
        on_epoch,
        resume=state,
        on_checkpoint=on_checkpoint,
        checkpoint_every=checkpoint_every,
        ranks=ranks,
    )


def _write_report(
    report_dir: Path,
    model: GaussianVAE,
    table: Table,
    val_idx: np.ndarray,
    x_val: torch.Tensor,
    result: FitResult,
    diag: dict[str, Any],
    scores: np.ndarray,
    threshold: float,
    train: TrainConfig,
    image_shape: tuple[int, int] | None,
    labelled: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    report.write_metrics(
        report_dir,
        {
            "diagnostics": {k: v.model_dump() for k, v in diag.items()},
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "history": [asdict(m) for m in result.history],
        },
    )
    report.plot_curves(report_dir / "curves.png", result.history, result.best_epoch)
    labels = table.labels[val_idx] if table.labels is not None else None
    report.plot_latent(report_dir / "latent.png", model, x_val, labels)
    report.plot_scores(report_dir / "scores.png", scores, threshold, train.threshold_quantile)
    if labelled:
        report.plot_roc_pr(report_dir / "roc_pr.png", labelled, threshold)
    if image_shape is not None:
        gen = torch.Generator(device=x_val.device).manual_seed(train.seed + 3)
        report.plot_images(report_dir, model, x_val, image_shape, gen)


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
