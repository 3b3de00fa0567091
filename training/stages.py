"""The in-memory stages of a run: load (or load_from_table) -> fit -> fit_prior -> refine -> evaluate, each taking
the run's configuration and what the stage before returned; training/pipeline.py runs them in that order and builds
and publishes the bundle from their results.

Under torchrun every rank loads (each checking its share of the rows) and fits (each its share of every minibatch);
rank 0 alone fits the prior, refines the encoder and evaluates.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from contract import AnomalyReference, Diagnostics, MixturePrior
from runtime import cpus
from training import loop
from training.checkpoint import save_run_checkpoint
from training.config import ModelConfig, RunConfig
from training.data import Split, Table, check_same_table, check_values, load_table, split_rows
from training.decorrelate import (
    TRIM_NOTE,
    chosen,
    decorrelation_candidates,
    finished_candidate,
    keep_candidate,
    resumed_phase,
)
from training.distributed import Dist, init_from_env
from training.errors import ConfigError, DataError, NonFiniteLoss, TrainingError
from training.evaluate import anomaly_reference, anomaly_scores, anomaly_terms, diagnostics, labelled_metrics
from training.features import MAX_DECORRELATED, FeatureScaling, feature_scaling
from training.loop import EpochMetrics, FitResult, TrainState
from training.model import GaussianVAE
from training.prior import VALIDATION_ROWS, choose_prior
from training.refine import Refinement, full_from_diagonal, refine_encoder, refine_steps, training_covariance
from training.resume import owns_run_file, resume_state, run_file, split_fingerprint
from training.rows import MappedRows, Rows

log = logging.getLogger(__name__)
Labelled = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (anomaly scores, bool labels: 1 = anomaly)


@dataclass(frozen=True)
class LoadedData:
    """A checked table, its split and feature scaling, and where this process computes."""

    table: Table
    split: Split
    scaling: FeatureScaling
    image_shape: tuple[int, int] | None  # the run's, else the table's own (8x8 for builtin:digits)
    ranks: Dist
    device: torch.device


@dataclass(frozen=True)
class Fitted:
    model: GaussianVAE  # with the best weights (early stopping on the validation ELBO), on LoadedData.device
    result: FitResult
    refinement: Refinement | None = None  # what refine() did to the encoder afterwards (None: not run)
    decorrelation: dict[str, float] | None = None  # --decorrelate auto: each candidate's best validation ELBO


@dataclass(frozen=True)
class Evaluation:
    """Rank 0's final evaluation of a fitted model."""

    diagnostics: dict[str, Diagnostics]  # "validation", and "test" unless test_fraction is 0
    val_rows: np.ndarray  # the validation rows the diagnostics and plots used (at most eval_rows of them)
    scores: np.ndarray  # (n_val,) anomaly score of every validation row
    reference: AnomalyReference
    labelled: Labelled  # empty unless the table's labels are 0/1


def load(config: RunConfig) -> LoadedData:
    """Read and check config.data.source (under torchrun every rank checks its share); nothing is written yet."""
    ranks, rank_device = init_from_env(config.train.device)
    d = config.data
    table = load_table(
        d.source,
        key=d.key,
        columns=list(d.columns) if d.columns else None,
        label_column=d.label_column,
        ranks=ranks,
        delimiter=d.delimiter,
        na=d.na,
        exclude_columns=d.exclude_columns,
    )
    return _prepare(config, table, ranks, rank_device)


def load_from_table(config: RunConfig, table: Table) -> LoadedData:
    """A table already in memory (x (N, D) real numbers), checked like a file's; config.data.source names it in messages
    and the reading options of config.data (key, columns, delimiter, na, ...) do not apply."""
    ranks, rank_device = init_from_env(config.train.device)
    if not isinstance(table.x, np.memmap):
        try:
            table = replace(table, x=np.asarray(table.x, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{config.data.source}: expected real numbers ({exc})") from exc
    check_values(table.x, table.feature_names, config.data.source, ranks)
    return _prepare(config, table, ranks, rank_device)


def _prepare(config: RunConfig, table: Table, ranks: Dist, rank_device: torch.device | None) -> LoadedData:
    d, features = config.data, table.x.shape[1]
    check_same_table(table, d.source, ranks)  # first: a check below may fail on another copy's ranks alone
    image_shape = config.image_shape or table.image_shape
    if image_shape is not None and image_shape[0] * image_shape[1] != features:
        raise DataError(f"--image-shape {image_shape[0]}x{image_shape[1]} does not match {features} features")
    if config.model.input_dim not in (None, features):
        raise DataError(f"{d.source}: {features} features, but the model is configured for {config.model.input_dim}")
    split = split_rows(table.x.shape[0], d.val_fraction, d.test_fraction, d.seed)
    scaling = feature_scaling(
        table.x,
        split.train,
        detect_lattice=d.detect_lattice,
        dequantize=d.dequantize,
        seed=d.seed,
        ranks=ranks,
        decorrelate=d.decorrelate != "off",
    )
    if scaling.active.size == 0:
        raise DataError(f"{d.source}: every feature is constant on the training rows; there is nothing to learn")
    if d.decorrelate == "on" and scaling.active.size == 1:
        log.warning("--decorrelate on: %s has one non-constant feature, nothing to decorrelate", d.source)
    if d.decorrelate == "on" and config.train.trim > 0 and ranks.is_main:
        log.warning("--decorrelate on: a decorrelated model, %s", TRIM_NOTE)
    if d.decorrelate == "on" and scaling.active.size > MAX_DECORRELATED:
        raise ConfigError(
            f"--decorrelate on: {d.source} has {scaling.active.size} non-constant features, more than the "
            f"{MAX_DECORRELATED} decorrelation takes (its factor holds their square); use --decorrelate off"
        )
    return LoadedData(table, split, scaling, image_shape, ranks, rank_device or resolve_device(config.train.device))


def fit(config: RunConfig, data: LoadedData, on_epoch: Callable[[EpochMetrics], None] | None = None) -> Fitted:
    """Train from the seed (or from config.resume) with early stopping; on rank 0, on_epoch sees every epoch and a
    resumable checkpoint goes to <repository>/<name>/checkpoint-latest.pt every config.checkpoint_every epochs.
    With --decorrelate auto, a model on the decorrelated features and one on the features as they are, each from
    the same seed; the decorrelated one is kept when its best validation ELBO is higher by more than
    DECORRELATION_MARGIN (training/decorrelate.py) nats a row (every rank sees the same all-reduced figures).

    Sets torch's thread count for the process (config.train.threads; auto: the CPUs it may use, shared among
    torchrun's local ranks), which the evaluation and the export's check then use too."""
    threads = cpus.threads(config.train.threads, share=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if threads != torch.get_num_threads():  # only a change: re-sizing the pool has aborted a torchrun rank at exit
        torch.set_num_threads(threads)
    candidates = decorrelation_candidates(config, data.scaling)
    if len(candidates) == 1:
        return _fit(config, data, next(iter(candidates.values())), on_epoch)
    return _fit_both(config, data, candidates, on_epoch)


def _fit_both(
    config: RunConfig,
    data: LoadedData,
    candidates: dict[str, FeatureScaling],
    on_epoch: Callable[[EpochMetrics], None] | None,
) -> Fitted:
    """--decorrelate auto: the decorrelated model, then the plain one, each from the seed. The run checkpoint says
    which of the two it holds (`auto`); when the first ends, the run keeps it in checkpoint-decorrelated.pt
    (training/decorrelate.py) while the second trains. Resumed in the first, that one goes on and the plain one
    then trains from the seed; resumed in the second, the finished decorrelated model is read back and the plain
    one goes on: either way the same two models, compared, as a run never interrupted."""
    phase = resumed_phase(config)
    decorrelated: Fitted | None = None
    if phase is not None and phase["phase"] == "off":
        if phase["on"] is not None:
            model_config = _model_config(config, data)
            weights, result = finished_candidate(config, phase["on"], model_config.to_dict())
            model = build_model(model_config, candidates["on"], config.train.seed).to(data.device)
            model.load_state_dict(weights)
            decorrelated = Fitted(model, result)
    else:
        try:
            decorrelated = _fit(config, data, candidates["on"], on_epoch, {"phase": "on"})
        except NonFiniteLoss as exc:  # the default must not fail a table the plain model trains on
            log.warning("--decorrelate auto: the decorrelated model's training failed (%s); keeping the plain one", exc)
        else:
            if owns_run_file(config) and data.ranks.is_main:  # rank 0 writes the run's files
                keep_candidate(config, decorrelated.model, decorrelated.result)
        config = replace(config, resume=None)  # the plain model starts from the seed
    on = None if decorrelated is None else decorrelated.result.best_val_elbo
    plain = _fit(config, data, candidates["off"], on_epoch, {"phase": "off", "on": on})
    if decorrelated is None:
        return replace(plain, decorrelation={"off": plain.result.best_val_elbo})
    record = {"on": decorrelated.result.best_val_elbo, "off": plain.result.best_val_elbo}
    kept = chosen(record, config.train.trim, say=data.ranks.is_main)
    return replace(decorrelated if kept == "on" else plain, decorrelation=record)


def _fit(
    config: RunConfig,
    data: LoadedData,
    scaling: FeatureScaling,
    on_epoch: Callable[[EpochMetrics], None] | None,
    auto: dict[str, Any] | None = None,
) -> Fitted:
    """One training; `auto` (where --decorrelate auto trains two) goes into its run checkpoint."""
    model = build_model(_model_config(config, data), scaling, config.train.seed).to(data.device)
    ranks = data.ranks
    x_train = training_rows(model, data, data.split.train)
    # Each rank scores only its share of the validation rows every epoch (the sums are all-reduced).
    x_val_share = training_rows(model, data, data.split.val[ranks.rank :: ranks.world])
    # the validation and test rows' fingerprint, which a resumed run must match (training/resume.py)
    rows = split_fingerprint(data.table.x, data.split) if config.resume or config.checkpoint_every else None
    state = resume_state(config, model, data.table.feature_names or [], rows or "")
    path = run_file(config)

    def on_checkpoint(s: TrainState) -> None:
        extra = {
            "train_config": config.train.to_dict(),
            "data": asdict(config.data),
            "rows": rows,
            "decorrelated": model.decorrelating,
            "auto": auto,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_run_checkpoint(path, model.config.to_dict(), extra, s)
        except OSError as exc:  # a full disk or a read-only volume: say so in one line, not a traceback
            raise TrainingError(f"cannot write the run's checkpoint {path} ({exc})") from exc

    result = loop.fit(
        model,
        x_train,
        x_val_share,
        config.train,
        on_epoch if ranks.is_main else None,
        resume=state,
        on_checkpoint=on_checkpoint,
        checkpoint_every=config.checkpoint_every if ranks.is_main else 0,
        ranks=ranks,
    )
    return Fitted(model, result)


def _model_config(config: RunConfig, data: LoadedData) -> ModelConfig:
    # a full encoder is trained diagonal when the refinement will make it full (training/refine.py)
    covariance = training_covariance(config.model, config.train)
    return replace(config.model, input_dim=data.table.x.shape[1], covariance=covariance)


def fit_prior(config: RunConfig, data: LoadedData, fitted: Fitted) -> MixturePrior | None:
    """With --prior mixture, the Gaussian mixture fitted to the aggregate posterior that beats N(0, I) on the
    validation ELBO, set on the model (training/prior.py); None, and the model keeps N(0, I), otherwise. Rank 0."""
    train, model = config.train, fitted.model
    if train.prior == "standard":
        return None
    cap = min(train.eval_rows or VALIDATION_ROWS, VALIDATION_ROWS)
    x_val = training_rows(model, data, evaluation_rows(data.split.val, cap, train.seed))
    spec = choose_prior(model, training_rows(model, data, data.split.train), x_val, train)
    model.set_prior(spec)
    return spec


def refine(config: RunConfig, data: LoadedData, fitted: Fitted) -> Refinement:
    """The encoder alone trained further, the decoder and the prior fixed (training/refine.py), for at most
    --refine-steps and TRAINING_RATIO times training's own steps; with --covariance full, the diagonal encoder the
    training used made full first. Rank 0, after fit_prior."""
    train, model = config.train, fitted.model
    training_steps = len(fitted.result.history) * math.ceil(len(data.split.train) / train.batch_size)
    cap = min(train.eval_rows or VALIDATION_ROWS, VALIDATION_ROWS)
    x_val = training_rows(model, data, evaluation_rows(data.split.val, cap, train.seed))
    x_train = training_rows(model, data, data.split.train)
    if config.model.covariance != model.config.covariance:
        full_from_diagonal(model, x_train, train.seed)
    return refine_encoder(model, x_train, x_val, train, *refine_steps(train, training_steps))


def evaluate(config: RunConfig, data: LoadedData, fitted: Fitted) -> Evaluation:
    """Diagnostics on at most eval_rows rows of each split, each with its own random stream; the anomaly reference
    scores every validation row with the noise block the service shares across rows. Rank 0 only."""
    train, split, model = config.train, data.split, fitted.model
    evaluated = {"validation": evaluation_rows(split.val, train.eval_rows, train.seed)}
    if split.test.size:
        evaluated["test"] = evaluation_rows(split.test, train.eval_rows, train.seed + 1)
    diag = {}
    for i, (part, idx) in enumerate(evaluated.items()):
        gen = torch.Generator(device=data.device).manual_seed(stream(train.seed, 2 + i))
        diag[part] = diagnostics(model, standardized(model, data, idx), train.eval_samples, gen)
    scores, nll_mean, nll_std = anomaly_terms(model, training_rows(model, data, split.val), train.score_samples)
    reference = anomaly_reference(scores, train.score_samples, train.threshold_quantile, (nll_mean, nll_std))
    labelled = _labelled(config, data, model, scores)
    for part, (s, y) in labelled.items():
        diag[part] = diag[part].model_copy(update={"labelled": labelled_metrics(s, y, reference.threshold)})
    return Evaluation(diag, evaluated["validation"], scores, reference, labelled)


def _labelled(config: RunConfig, data: LoadedData, model: GaussianVAE, val_scores: np.ndarray) -> Labelled:
    labels, split = binary_labels(data.table.labels), data.split
    if labels is None:
        return {}
    labelled = {"validation": (val_scores, labels[split.val])}
    if split.test.size:
        test_scores = anomaly_scores(model, training_rows(model, data, split.test), config.train.score_samples)
        labelled["test"] = (test_scores, labels[split.test])
    return labelled


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


def standardized(model: GaussianVAE, data: LoadedData, idx: np.ndarray) -> torch.Tensor:
    # rows idx of the table, standardised on the model's device: (n,) -> (n, D)
    rows: torch.Tensor = model.standardize(
        torch.from_numpy(np.asarray(data.table.x[idx], dtype=np.float32)).to(data.device)
    )
    return rows


def training_rows(model: GaussianVAE, data: LoadedData, idx: np.ndarray) -> Rows:
    # A memory-mapped table (.npy, or .parquet's scratch copy) stays on disk: rows are read as they are used.
    if not isinstance(data.table.x, np.memmap):
        return standardized(model, data, idx)
    mean, std = data.scaling.mean.astype(np.float32), data.scaling.std.astype(np.float32)
    return MappedRows(data.table.x, idx, mean, std, data.device)


def stream(seed: int, purpose: int) -> int:
    # an independent seed for each purpose (validation and test diagnostics, plots), whatever the split sizes
    return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])


def binary_labels(labels: np.ndarray | None) -> np.ndarray | None:
    """A label column of 0/1 values (1 = anomaly) as a bool array; None for none or any other labels."""
    if labels is None:
        return None
    values = {str(v).strip() for v in np.unique(labels)}
    binary = {"0", "1", "0.0", "1.0", "True", "False", "true", "false"}
    if not values <= binary:
        gaps = {"", "nan", "None"}  # a text label's empty cell, a Parquet number's null
        if values & gaps and values - gaps <= binary:  # 0/1 with gaps: say why no AUROC is reported
            missing = sum(1 for v in labels if str(v).strip() in gaps)
            log.warning(
                "the label column holds 0/1 but %d rows have no label, so AUROC, average precision and precision/"
                "recall are not reported; fill or drop those rows to have them",
                missing,
            )
        return None
    return np.array([str(v).strip() in {"1", "1.0", "True", "true"} for v in labels])


def evaluation_rows(idx: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """idx itself when it has at most cap rows (or cap is 0), else a seeded sample of cap of them, in idx order."""
    if cap <= 0 or idx.size <= cap:
        return idx
    return idx[np.sort(np.random.default_rng(seed).choice(idx.size, cap, replace=False))]
