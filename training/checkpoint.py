"""checkpoint.pt: weights and configs, for re-exporting a bundle or inspecting it (the service never reads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.config import ModelConfig
from training.model import GaussianVAE


def save_checkpoint(path: Path, model: GaussianVAE, extra: dict[str, Any]) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model_config": model.config.to_dict(), "state_dict": state, **extra}, path)


def load_model(path: Path) -> GaussianVAE:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg_dict = dict(ckpt["model_config"])
    cfg_dict["hidden"] = tuple(cfg_dict["hidden"])
    model = GaussianVAE(ModelConfig(**cfg_dict))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
