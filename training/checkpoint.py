"""checkpoint.pt: weights and configs, for re-exporting a bundle or inspecting it (the service never reads it)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from contract import MixturePrior
from training.config import ModelConfig
from training.errors import ConfigError
from training.features import FeatureScaling
from training.loop import TrainState
from training.model import GaussianVAE


def save_checkpoint(path: Path, model: GaussianVAE, extra: dict[str, Any]) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model_config": model.config.to_dict(), "state_dict": state, **extra}, path)


def load_model(path: Path) -> GaussianVAE:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg_dict = dict(ckpt["model_config"])
    cfg_dict["hidden"] = tuple(cfg_dict["hidden"])
    model = GaussianVAE(ModelConfig(**cfg_dict), FeatureScaling.from_dict(ckpt["scaling"]))
    model.set_prior(MixturePrior.model_validate(ckpt["prior"]) if ckpt.get("prior") else None)
    # the prior's buffers follow from its spec (set above); checkpoints written while they were stored still load
    model.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if not k.startswith("prior.")})
    return model.eval()


RUN_CHECKPOINT = "checkpoint-latest.pt"  # periodic checkpoint of a run in progress: <out>/<name>/checkpoint-latest.pt
CANDIDATE_CHECKPOINT = "checkpoint-decorrelated.pt"  # --decorrelate auto: the first model, finished, beside it


def save_run_checkpoint(path: Path, model_config: dict[str, Any], extra: dict[str, Any], state: TrainState) -> None:
    """Atomically write a resumable checkpoint (weights, optimiser, generator, epoch, best-so-far, configs)."""
    part = path.with_name(path.name + ".part")
    try:
        with part.open("wb") as f:
            torch.save({"model_config": model_config, **extra, "state": state.to_dict()}, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a machine that crashes then keeps the last whole one
        os.replace(part, path)
    except BaseException:  # a full disk or an interrupt mid-write: no half-written file left beside the checkpoint
        part.unlink(missing_ok=True)
        raise


def load_run_checkpoint(path: Path) -> tuple[dict[str, Any], TrainState]:
    """A periodic checkpoint, a bundle's checkpoint.pt, or a bundle folder -> (saved configs, TrainState)."""
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(f"--resume {path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ConfigError(f"--resume {path}: cannot read it ({exc})") from exc
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        # a manifest.json, a .onnx or a table given by mistake: torch's own message is about pickling
        raise ConfigError(
            f"--resume {path}: not a vae-train checkpoint (give a bundle folder, its checkpoint.pt, or a run's "
            "checkpoint-latest.pt)"
        ) from exc
    if not isinstance(ckpt, dict) or "state" not in ckpt or "model_config" not in ckpt:
        raise ConfigError(f"--resume {path}: the checkpoint holds no training state")
    try:
        return ckpt, TrainState.from_dict(ckpt["state"])
    except (KeyError, TypeError) as exc:  # a field this version has and that one did not, or the reverse
        raise ConfigError(f"--resume {path}: written by another version of vae-train ({exc}); train anew") from exc
