"""--decorrelate: which models a run trains (auto: the decorrelated one, then the plain one), the choice between
them, and the finished first model kept beside the run checkpoint while the second trains, so that an interrupted
auto run resumes to the two models and the choice of a run never interrupted (training/stages.py trains them)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from training.checkpoint import CANDIDATE_CHECKPOINT, load_run_checkpoint, save_run_checkpoint
from training.config import RunConfig
from training.errors import ConfigError, TrainingError
from training.features import FeatureScaling
from training.loop import FitResult
from training.model import GaussianVAE
from training.resume import candidate_file

log = logging.getLogger(__name__)
# --decorrelate auto keeps the decorrelated model only when its validation ELBO is this many nats a row higher: it
# costs a D x D product in every graph and reads feature_nll as marginals, so a near tie goes to the plain model
DECORRELATION_MARGIN = 0.5
TRIM_NOTE = (
    "with which --trim does little: anomalies that follow the features' linear relations fit it well and are not the "
    "rows trimmed. For training rows that hold anomalies, --decorrelate off has done better (README, --trim)"
)


def decorrelation_candidates(config: RunConfig, scaling: FeatureScaling) -> dict[str, FeatureScaling]:
    """The scalings to train with, by --decorrelate value: both for auto (when the table has a factor), else one.
    A resumed run continues as it was trained (a checkpoint that does not say was not decorrelated); an interrupted
    auto run (its checkpoint says `auto`) trains both, as it would have."""
    asked = config.data.decorrelate
    if config.resume is not None:
        saved, _ = load_run_checkpoint(config.resume)
        was = "on" if saved.get("decorrelated", False) else "off"
        if asked not in ("auto", was):
            raise ConfigError(
                f"--resume {config.resume}: it was trained with --decorrelate {was}, this run asks for {asked}"
            )
        if asked == "auto" and saved.get("auto") is not None:
            return {"on": scaling, "off": scaling.plain()}
        if asked == "auto":  # a bundle, or a run with --decorrelate on or off: it goes on as it was trained
            log.info("--resume: continuing the %s model it was trained as, without training the other", was)
        asked = was
    if scaling.factor is None or asked == "off":
        return {"off": scaling.plain()}
    if asked == "on":
        return {"on": scaling}
    return {"on": scaling, "off": scaling.plain()}


def chosen(record: dict[str, float], trim: float, say: bool = True) -> str:
    """ "on" or "off" from both candidates' best validation ELBOs; under --trim a kept decorrelated model is said
    (where `say`: torchrun's rank 0)."""
    kept = "on" if record["on"] > record["off"] + DECORRELATION_MARGIN else "off"
    if kept == "on" and trim > 0 and say:
        log.warning("--decorrelate auto kept the decorrelated model, %s", TRIM_NOTE)
    return kept


def resumed_phase(config: RunConfig) -> dict[str, Any] | None:
    """Where a resumed auto run stopped ({"phase": "on"} or {"phase": "off", "on": the first's best ELBO or None});
    None for a fresh run."""
    if config.resume is None:
        return None
    saved, _ = load_run_checkpoint(config.resume)
    return saved.get("auto")


def keep_candidate(config: RunConfig, model: GaussianVAE, result: FitResult) -> None:
    """Write the finished decorrelated model (its best weights and figures) to candidate_file(config)."""
    assert result.state is not None
    finished = {k: getattr(result, k) for k in ("best_epoch", "best_val_elbo", "stop_reason", "seconds")}
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    extra = {"decorrelated": True, "finished": finished, "weights": weights, "train_config": config.train.to_dict()}
    try:
        save_run_checkpoint(candidate_file(config), model.config.to_dict(), extra, result.state)
    except OSError as exc:
        raise TrainingError(f"cannot write the run's checkpoint {candidate_file(config)} ({exc})") from exc


def finished_candidate(
    config: RunConfig, best_val_elbo: float, model_config: dict[str, Any]
) -> tuple[dict[str, Any], FitResult]:
    """The decorrelated model a resumed auto run had finished, as it ended: (its weights, its FitResult), from beside
    the checkpoint resumed (or the run's folder); refused when it is gone, holds another model than the run
    checkpoint recorded, or another model than model_config (this run's options)."""
    assert config.resume is not None
    beside = Path(config.resume).parent / CANDIDATE_CHECKPOINT
    path = beside if beside.is_file() else candidate_file(config)
    if not path.is_file():
        raise ConfigError(
            f"--resume {config.resume}: the run had finished its decorrelated model and kept it in "
            f"{CANDIDATE_CHECKPOINT} beside it, which is gone; resume with --decorrelate off to finish the plain model "
            "alone, or train anew"
        )
    saved, state = load_run_checkpoint(path)
    if saved.get("finished", {}).get("best_val_elbo") != best_val_elbo:
        raise ConfigError(
            f"--resume {config.resume}: {path} is not the decorrelated model this run trained (another validation "
            "ELBO); resume with --decorrelate off to finish the plain model alone, or train anew"
        )
    if saved["model_config"] != model_config:
        differ = sorted(k for k in model_config if saved["model_config"].get(k) != model_config[k])
        raise ConfigError(
            f"--resume {config.resume}: its model options differ from this run's ({', '.join(differ)}); a run "
            "continues with the options it was trained with"
        )
    trained = saved.get("train_config", {})
    changed = sorted(k for k, v in config.train.to_dict().items() if k in trained and trained[k] != v)
    if changed:  # a resume may change them (training further); the two models then differ in more than decorrelation
        log.warning(
            "--resume: the decorrelated model was trained with other %s than this run gives the plain one; auto "
            "compares them as they are",
            ", ".join(changed),
        )
    return saved["weights"], FitResult(history=list(state.history), state=state, **saved["finished"])
