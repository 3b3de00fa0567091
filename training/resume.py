"""What a run may continue from, and the run checkpoint (<out>/<name>/checkpoint-latest.pt) a run may write.

A run continues (--resume) only on the model, the rows and the split its checkpoint was trained on: the same model
options, the same split options, the same validation and test rows (a fingerprint of their values, kept in every
checkpoint), and feature means and scales that match the checkpoint's own. Where the file lives or how its path is
spelt does not matter; what it holds does. Resumed on a table that changed since, the graphs would standardise
with the old scaling while the manifest records the new one; on another split, the validation figures and the
anomaly threshold would come from rows the model trained on.

A run never overwrites or removes another run's checkpoint: an interrupted run's checkpoint is what --resume needs.
A run that writes or continues the run checkpoint holds an exclusive lock on <out>/<name>/.run.lock for as long as
it runs (the kernel drops it when the process dies), so two runs under one name cannot take turns on the file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import CANDIDATE_CHECKPOINT, RUN_CHECKPOINT, load_run_checkpoint
from training.config import DataConfig, RunConfig, flag_of
from training.data import Split
from training.errors import ConfigError
from training.loop import TrainState
from training.model import GaussianVAE

# The data options that decide the split and how the features are modelled, compared by name for a clear message;
# which columns and which rows the fingerprint and the scaling decide, however the options spelt them.
SAME_DATA = tuple(
    f
    for f in fields(DataConfig)
    if f.name in ("seed", "val_fraction", "test_fraction", "na", "detect_lattice", "dequantize")
)
# A saved scaling matches this run's within this relative tolerance (mean: of the feature's scale): the same rows
# give the same figures to rounding, wherever the run continues.
SCALING_RTOL = 1e-5
LOCK_FILE = ".run.lock"
_FINGERPRINT_ROWS = 65536  # rows hashed at a time: a memory-mapped table is never read whole


def run_file(config: RunConfig) -> Path:
    return config.model_dir / RUN_CHECKPOINT


def candidate_file(config: RunConfig) -> Path:
    """--decorrelate auto: where the finished decorrelated model waits while the plain one trains (written and
    removed with the run checkpoint)."""
    return config.model_dir / CANDIDATE_CHECKPOINT


def _same_file(a: Path | None, b: Path) -> bool:
    return a is not None and os.path.realpath(a) == os.path.realpath(b)


def owns_run_file(config: RunConfig) -> bool:
    """Whether this run writes the run checkpoint or continues from it, and so removes it once published."""
    return config.checkpoint_every > 0 or _same_file(config.resume, run_file(config))


def resolve_auto(config: RunConfig) -> RunConfig:
    """--resume auto as a path: the run checkpoint when there is one, else none (a fresh start)."""
    if not config.resumes_if_any:
        return config
    path = run_file(config)
    return replace(config, resume=path if path.is_file() else None)


def check_leftover(config: RunConfig) -> None:
    """Refuse, before anything is read or written, a run that would overwrite an unfinished run's checkpoint."""
    path = run_file(config)
    if owns_run_file(config) and path.exists() and not _same_file(config.resume, path):
        raise ConfigError(
            f"{path} holds the checkpoint of a run that did not finish, which this run would overwrite: continue "
            f"it with --resume {path} (or --resume auto), or delete it to start anew (or pass --checkpoint-every "
            "0 to leave it alone)"
        )


@contextmanager
def claimed_run_file(config: RunConfig, is_main: bool) -> Iterator[None]:
    """While the run lasts (from after its data are read, so that a data error writes nothing): refuse a run that
    starts while another run under this name writes a checkpoint, or that would overwrite one left unfinished. A
    lock only rank 0 takes: it alone writes the file."""
    if not owns_run_file(config) or not is_main:
        yield
        return
    path = run_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise ConfigError(
                f"another run under the name {config.model_name!r} is training into {path.parent} now; wait for it, "
                "or give this one another --name"
            ) from None
        check_leftover(config)  # again, under the lock: a run that ended meanwhile may have left one
        yield
    finally:
        os.close(fd)  # the lock goes with it; the empty lock file stays, as a lock file must


def split_fingerprint(x: Any, split: Split) -> str:
    """sha256 of the table's shape and of its validation and test rows' float32 values, in row order: the same rows
    split the same way give the same digest; another table, other rows or another split do not."""
    digest = hashlib.sha256(f"{x.shape[0]}x{x.shape[1]}".encode())
    for rows in (np.sort(split.val), np.sort(split.test)):
        digest.update(b"|")
        for start in range(0, rows.size, _FINGERPRINT_ROWS):
            digest.update(np.ascontiguousarray(x[rows[start : start + _FINGERPRINT_ROWS]], dtype=np.float32).data)
    return digest.hexdigest()


def resume_state(
    config: RunConfig, model: GaussianVAE, feature_names: list[str], fingerprint: str
) -> TrainState | None:
    """The training state to continue from (None without --resume), once shown to fit this run's model and data."""
    if config.resume is None:
        return None
    saved, state = load_run_checkpoint(config.resume)
    # in this order: the split options, the number of features, the model's options, the rows (with the same options
    # a changed table is the one explanation left), then the networks' shapes (the rows' constant features decide
    # them too)
    _check_options(config, saved.get("data", {}))
    _check_width(config, saved, model.config.input_dim)
    _check_model(config, saved, model)
    _check_rows(config, saved.get("rows"), fingerprint)
    _check_scaling(config, state, model, feature_names)
    _check_shapes(config, saved, state, model)
    return state


def _check_options(config: RunConfig, saved: dict[str, Any]) -> None:
    asked = {f.name: getattr(config.data, f.name) for f in SAME_DATA}
    for f in SAME_DATA:
        if f.name in saved and saved[f.name] != asked[f.name]:  # older checkpoints lack newer options
            raise ConfigError(
                f"--resume {config.resume}: it was trained with {_shown(f, saved[f.name])}, this run with "
                f"{_shown(f, asked[f.name])}; a run continues only on the rows and split it was trained on"
            )


def _check_width(config: RunConfig, saved: dict[str, Any], width: int | None) -> None:
    trained = saved["model_config"].get("input_dim")
    if trained is not None and trained != width:
        raise ConfigError(
            f"--resume {config.resume}: it was trained on {trained} features, this run's table gives {width}; the "
            "data or the column options changed since"
        )


def _check_model(config: RunConfig, saved: dict[str, Any], model: GaussianVAE) -> None:
    # a --covariance full bundle refined from a diagonal encoder (training/refine.py) says "full", and its training
    # state holds the diagonal networks the training left: those continue, as the same run would train them
    trained_as = model.config.to_dict()
    asked = {**trained_as, "covariance": config.model.covariance}
    if saved["model_config"] not in (trained_as, asked):
        differ = {k: (saved["model_config"].get(k), v) for k, v in asked.items() if saved["model_config"].get(k) != v}
        shown = ", ".join(f"{k} {then!r} then, {now!r} now" for k, (then, now) in differ.items())
        raise ConfigError(f"--resume {config.resume}: its model options differ from this run's ({shown})")


def _check_rows(config: RunConfig, saved: str | None, fingerprint: str) -> None:
    if saved is not None and saved != fingerprint:  # older checkpoints have none: the scaling check stands alone
        raise ConfigError(
            f"--resume {config.resume}: this run's validation and test rows are not those it was trained with (the "
            "table's values, its rows or their order changed since); train anew on these rows"
        )


def _check_scaling(config: RunConfig, state: TrainState, model: GaussianVAE, feature_names: list[str]) -> None:
    # The checkpoint's own feature means and scales against those of this run's training rows: a table changed
    # since (same name, other rows or values) is found here, also for checkpoints without a fingerprint.
    saved_mean, saved_std = (state.model[k].double().cpu() for k in ("data_mean", "data_std"))
    mean, std = model.data_mean.double().cpu(), model.data_std.double().cpu()
    off = ((saved_mean - mean).abs() > SCALING_RTOL * std) | ((saved_std - std).abs() > SCALING_RTOL * std)
    if bool(off.any()):
        j = int(torch.nonzero(off)[0])
        name = feature_names[j] if j < len(feature_names) else f"column_{j}"
        raise ConfigError(
            f"--resume {config.resume}: this run's rows are not those it was trained on (feature {name!r}: mean "
            f"{mean[j]:.6g} and scale {std[j]:.6g}, against {saved_mean[j]:.6g} and {saved_std[j]:.6g} then); the "
            "data changed since. Train anew on these rows"
        )


def _check_shapes(config: RunConfig, saved: dict[str, Any], state: TrainState, model: GaussianVAE) -> None:
    if {k: tuple(v.shape) for k, v in model.state_dict().items()} != {
        k: tuple(v.shape) for k, v in state.model.items()
    }:
        # --covariance full trains the encoder diagonal when the refinement runs and full when it does not
        # (training_covariance): a saved training state of the other kind cannot continue as this run trains
        if model.config.covariance == "diagonal":  # the saved one was trained full, beside the decoder
            trained = "a full encoder trained beside the decoder"
            hint = "--refine-steps 0 (it then trains on as it was)"
        else:  # a diagonal training state, to be made full by the refinement
            trained = "a diagonal encoder made full after training"
            hint = "the refinement on (--refine-steps > 0, --objective elbo)"
        raise ConfigError(
            f"--resume {config.resume}: it was trained with model {saved['model_config']}, {trained}; this run "
            f"trains a {model.config.covariance} encoder beside the decoder. Resume it with {hint}, or train anew"
        )


def _shown(f: Any, value: Any) -> str:
    if isinstance(f.default, bool):  # a --no-... switch: the field is True when the switch is not given
        return f"{flag_of(f)} {'not given' if value else 'given'}"
    return f"{flag_of(f)} {value}"
