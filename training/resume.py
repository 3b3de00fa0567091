"""What a run may continue from, and which run checkpoint (<out>/<name>/checkpoint-latest.pt) a run may overwrite.

A run continues (--resume) only on the model, the rows and the split its checkpoint was trained on: the same model
options, the same data options, and feature means and scales that match the checkpoint's own. Resumed on a table that
changed since, the graphs would standardise with the old scaling while the manifest records the new one; on another
split, the validation figures and the anomaly threshold would come from rows the model trained on.

A run never overwrites or removes another run's checkpoint: an interrupted run's checkpoint is what --resume needs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import RUN_CHECKPOINT, load_run_checkpoint
from training.config import DataConfig, RunConfig, flag_of
from training.errors import ConfigError
from training.loop import TrainState
from training.model import GaussianVAE

# The data options that decide the rows, their features and their split; `source` is compared as a path.
SAME_DATA = tuple(f for f in fields(DataConfig) if f.name != "source")
# A saved scaling matches this run's within this relative tolerance (mean: of the feature's scale): the same rows
# give the same figures to rounding, wherever the run continues.
SCALING_RTOL = 1e-5


def run_file(config: RunConfig) -> Path:
    return config.model_dir / RUN_CHECKPOINT


def _same_file(a: Path | None, b: Path) -> bool:
    return a is not None and os.path.realpath(a) == os.path.realpath(b)


def owns_run_file(config: RunConfig) -> bool:
    """Whether this run writes the run checkpoint or continues from it, and so removes it once published."""
    return config.checkpoint_every > 0 or _same_file(config.resume, run_file(config))


def check_run_file(config: RunConfig) -> None:
    """Refuse, before training, a run that would overwrite the checkpoint an earlier run left unfinished."""
    path = run_file(config)
    if config.checkpoint_every > 0 and path.exists() and not _same_file(config.resume, path):
        raise ConfigError(
            f"{path} holds the checkpoint of a run that did not finish, which this run would overwrite: continue it "
            f"with --resume {path}, or delete it to start anew (or pass --checkpoint-every 0 to leave it alone)"
        )


def resume_state(config: RunConfig, model: GaussianVAE, feature_names: list[str]) -> TrainState | None:
    """The training state to continue from (None without --resume), once shown to fit this run's model and data."""
    if config.resume is None:
        return None
    saved, state = load_run_checkpoint(config.resume)
    # in this order: the data options and the model's, then the rows (with the same options a changed table is the
    # one explanation left), then the networks' shapes (which the rows' constant features also decide)
    _check_data(config, saved.get("data", {}))
    _check_model(config, saved, model)
    _check_scaling(config, state, model, feature_names)
    _check_shapes(config, saved, state, model)
    return state


def _check_model(config: RunConfig, saved: dict[str, Any], model: GaussianVAE) -> None:
    # a --covariance full bundle refined from a diagonal encoder (training/refine.py) says "full", and its training
    # state holds the diagonal networks the training left: those continue, as the same run would train them
    trained_as = model.config.to_dict()
    asked = {**trained_as, "covariance": config.model.covariance}
    if saved["model_config"] not in (trained_as, asked):
        raise ConfigError(
            f"--resume {config.resume}: it was trained with model {saved['model_config']}, this run asks for {asked}"
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


def _check_data(config: RunConfig, saved: dict[str, Any]) -> None:
    source, ours = saved.get("source"), config.data.source
    if source != ours and not (_local(source) and _local(ours) and _same_file(Path(source), Path(ours))):
        raise ConfigError(f"--resume {config.resume}: it was trained on {source!r}, this run reads {ours!r}")
    asked = asdict(config.data)
    for f in SAME_DATA:
        if f.name in saved and _plain(saved[f.name]) != _plain(asked[f.name]):  # older checkpoints lack newer options
            raise ConfigError(
                f"--resume {config.resume}: it was trained with {_shown(f.name, saved[f.name])}, this run with "
                f"{_shown(f.name, asked[f.name])}; a run continues only on the rows and split it was trained on"
            )


def _check_scaling(config: RunConfig, state: TrainState, model: GaussianVAE, feature_names: list[str]) -> None:
    # The checkpoint's own feature means and scales against those of this run's training rows: a table changed
    # since (same name, other rows or values) is found here.
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


def _local(source: str | None) -> bool:
    return source is not None and not source.startswith("builtin:") and "://" not in source


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # a tuple saved by one version, a list by another


def _shown(name: str, value: Any) -> str:
    f = next(f for f in SAME_DATA if f.name == name)
    if isinstance(f.default, bool):  # a --no-... switch: the field is True when the switch is not given
        return f"{flag_of(f)} {'not given' if value else 'given'}"
    if isinstance(value, tuple | list):
        value = ",".join(map(str, value))
    return f"{flag_of(f)} {value}"
