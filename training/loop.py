"""train_epoch(), evaluate_elbo() and fit(): the optimisation, with progress reported through a callback."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from training.config import TrainConfig
from training.distributed import SINGLE, Dist
from training.errors import ConfigError, NonFiniteLoss
from training.losses import ScoreTerms, iwae_loss, score_terms, training_loss, trimmed, trimmed_count
from training.model import GaussianVAE
from training.rows import Rows

FUSED_ADAM = ("cpu", "cuda")  # devices with torch's fused Adam kernel


@dataclass
class EpochMetrics:
    epoch: int
    beta: float
    train_elbo: float  # nats per example, raw space, averaged over the epoch's minibatches
    train_reconstruction: float
    train_kl: float
    val_elbo: float
    val_reconstruction: float
    val_kl: float
    seconds: float


@dataclass
class FitResult:
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = 0
    best_val_elbo: float = -math.inf
    stop_reason: str = ""
    seconds: float = 0.0
    state: TrainState | None = None  # where the run ended (last weights, optimiser, generator), for --resume


class Objective(nn.Module):
    """The ELBO terms as a module's forward, so DistributedDataParallel can hook the gradient all-reduce."""

    def __init__(self, model: GaussianVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, eps: Tensor) -> ScoreTerms:
        return score_terms(self.model, x, eps)


def objective(model: GaussianVAE, ranks: Dist) -> nn.Module:
    wrapped = Objective(model)
    if not ranks.enabled:
        return wrapped
    device_ids = [model.data_mean.device.index] if model.data_mean.is_cuda else None
    return nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids)


def make_optimizer(model: GaussianVAE, cfg: TrainConfig) -> torch.optim.Adam:
    # fused: one kernel per step for every parameter instead of a dozen small ops per tensor; the update is the
    # same Adam. With this model's few small tensors the per-op cost dominates: 15% of an epoch on digits.
    fused = model.data_mean.device.type in FUSED_ADAM
    return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)


def local_batch(cfg: TrainConfig, ranks: Dist) -> int:
    # rows per minibatch on this rank: --batch-size is global, shared among torchrun's ranks
    return max(1, cfg.batch_size // ranks.world)


def check_trim(cfg: TrainConfig, ranks: Dist, train_rows: int) -> None:
    """--trim cuts within each rank's minibatch, which is smaller than --batch-size when the training rows are
    fewer; a share too small to leave out one row of it is refused, not ignored."""
    batch = min(local_batch(cfg, ranks), max(1, train_rows // ranks.world))
    if cfg.trim > 0 and trimmed_count(batch, cfg.trim) == 0:
        per_rank = f" per rank ({cfg.batch_size} over {ranks.world} ranks)" if ranks.enabled else ""
        if batch < local_batch(cfg, ranks):
            why, larger = f" (the training split has {train_rows} rows)", "more training rows"
        else:
            why, larger = per_rank, "a larger --batch-size"
        raise ConfigError(
            f"--trim {cfg.trim} leaves no row out of a minibatch of {batch} rows{why}; ask for at least "
            f"{1 / batch:.4g}, or {larger}"
        )


def kl_weight(epoch: int, warmup_epochs: int) -> float:
    # beta rises linearly from 1/warmup to 1 over the first warmup_epochs epochs (epoch counts from 1)
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch / warmup_epochs)


def train_epoch(
    model: GaussianVAE,
    optimizer: torch.optim.Optimizer,
    x_train: Rows,
    cfg: TrainConfig,
    beta: float,
    gen: torch.Generator,
    ranks: Dist = SINGLE,
    step: nn.Module | None = None,
    noise: torch.Generator | None = None,
) -> tuple[float, float, float]:
    """One pass over shuffled minibatches of standardised rows; returns mean (elbo, reconstruction, kl) in nats.

    Under torchrun every rank draws the same permutation from `gen`, takes its shard of it, and draws its own
    noise from `noise`; `step` is the DistributedDataParallel-wrapped objective and `--batch-size` is global.
    """
    model.train()
    step = step if step is not None else Objective(model)
    noise = noise if noise is not None else gen
    n = x_train.shape[0]
    perm = ranks.shard(torch.randperm(n, generator=gen, device=gen.device))
    batch = local_batch(cfg, ranks)
    sums = torch.zeros(3, dtype=torch.float64, device=x_train.device)
    d = model.config.latent_dim
    for start in range(0, perm.numel(), batch):
        x = x_train[perm[start : start + batch]]
        if model.dequantize_training:
            x = model.dequantize(x, noise)
        eps = torch.randn(x.shape[0], cfg.samples, d, generator=noise, device=x.device)
        terms = step(x, eps)
        fitted = trimmed(terms, cfg.trim)  # every row, unless --trim leaves the worst-fitting out
        if cfg.objective == "iwae":
            loss = iwae_loss(fitted, beta)
        else:
            loss = training_loss(fitted, beta, cfg.free_bits)
        # a row left out by --trim is checked too: its inf would still turn the gradients to NaN
        failed = None
        if not torch.isfinite(loss) or (fitted is not terms and not torch.isfinite(terms.elbo).all()):
            value = terms.elbo[~torch.isfinite(terms.elbo)][0].item() if torch.isfinite(loss) else loss.item()
            failed = NonFiniteLoss(
                f"the training loss became {value} at rows {start}..{start + x.shape[0] - 1} of the epoch; "
                "try a lower --lr, a larger --decoder-var-floor, or check the data's scale"
            )
            if not ranks.enabled:
                raise failed
            # Under torchrun the other ranks wait in this step's gradient all-reduce: this rank takes part with
            # NaN gradients, so that every rank finds them below and stops at the same step.
            loss = math.nan * sum(p.sum() for p in model.parameters() if p.requires_grad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        elif ranks.enabled:
            norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        if ranks.enabled and not torch.isfinite(norm):  # the same all-reduced gradients on every rank
            raise failed or NonFiniteLoss(
                f"the gradients became non-finite at rows {start}..{start + x.shape[0] - 1} of this rank's share of "
                "the epoch (another rank's loss did, and its message names its rows, or they overflowed); try a "
                "lower --lr, a larger --decoder-var-floor, or check the data's scale"
            )
        optimizer.step()
        with torch.no_grad():
            sums += torch.stack([terms.elbo.sum(), terms.reconstruction.sum(), terms.kl.sum()]).double()
    counted = torch.tensor(float(perm.numel()), dtype=torch.float64, device=x_train.device)
    total = ranks.all_sum(torch.cat([sums, counted.reshape(1)]))
    elbo, rec, kl = (total[:3] / total[3]).tolist()
    return elbo, rec, kl


@torch.no_grad()
def evaluate_elbo(
    model: GaussianVAE, x_std: Rows, samples: int, gen: torch.Generator, chunk: int = 4096, ranks: Dist = SINGLE
) -> tuple[float, float, float]:
    """Mean (elbo, reconstruction, kl) in raw-space nats over standardised rows, with K = samples; lattice features
    are dequantised when training dequantises them (noise from gen): a density, not the height of a spike.

    Under torchrun x_std holds this rank's share of the rows and the sums are all-reduced, so every rank sees
    the same numbers over all of them and takes the same early-stopping decision."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=x_std.device)
    for start in range(0, x_std.shape[0], chunk):
        x = x_std[start : start + chunk]
        if model.dequantize_training:
            x = model.dequantize(x, gen)
        eps = torch.randn(x.shape[0], samples, model.config.latent_dim, generator=gen, device=x.device)
        raw = score_terms(model, x, eps)
        sums[:3] += torch.stack([raw.elbo.sum(), raw.reconstruction.sum(), raw.kl.sum()]).double()
    sums[3] = x_std.shape[0]
    total = ranks.all_sum(sums)
    elbo, rec, kl = (total[:3] / total[3]).tolist()
    return elbo, rec, kl


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped (saved in checkpoints)."""

    epoch: int  # epochs completed
    model: dict[str, Any]
    optimizer: dict[str, Any]
    generator: Tensor  # the minibatch/noise generator's state
    best_model: dict[str, Any]
    best_val_elbo: float
    best_epoch: int
    history: list[EpochMetrics]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["history"] = [asdict(m) for m in self.history]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainState:
        return cls(**{**raw, "history": [EpochMetrics(**m) for m in raw["history"]]})


def rank_epoch_seed(seed: int, rank: int, epoch: int) -> int:
    # Independent streams for every (seed, rank, epoch), as NumPy's SeedSequence spreads them.
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, dtype=np.uint64)[0])


def _cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in state.items()}


def fit(
    model: GaussianVAE,
    x_train: Rows,
    x_val: Rows,
    cfg: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    resume: TrainState | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    checkpoint_every: int = 0,
    ranks: Dist = SINGLE,
) -> FitResult:
    """Adam on the (warmed-up, free-bits) ELBO with early stopping on validation ELBO; loads the best weights.

    x_train, x_val: standardised rows on the model's device. Deterministic on CPU for a given cfg.seed, and a run
    resumed from a TrainState reaches the same weights as one that was never interrupted. Every
    `checkpoint_every` epochs (0 = never) the state is handed to `on_checkpoint`.
    """
    check_trim(cfg, ranks, x_train.shape[0])
    device = x_train.device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    # One process: one generator for shuffling and noise. Under torchrun the shuffle generator is shared (every
    # rank draws the same permutation) and the noise generator is reseeded per rank and epoch, so a resumed run
    # draws the same noise on every rank without the checkpoint holding each rank's generator.
    noise = torch.Generator(device=device) if ranks.enabled else gen
    step = objective(model, ranks)
    val_gen = torch.Generator(device=device)
    optimizer = make_optimizer(model, cfg)
    result = FitResult()
    best_state = _cpu(model.state_dict())
    first_epoch, seconds_before = 1, 0.0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        for group in optimizer.param_groups:  # Adam's moments resume; its settings are this run's, as recorded
            group["lr"], group["weight_decay"] = cfg.learning_rate, cfg.weight_decay
        try:
            gen.set_state(resume.generator)
        except RuntimeError:  # a CUDA generator's state (16 bytes) given to a CPU one, or the reverse
            raise ConfigError(
                f"the checkpoint's random state is a generator's of another device than this run's ({device.type}): "
                "resume it with the --device it was trained on, so that it continues as it would have"
            ) from None
        best_state = resume.best_model
        result.best_val_elbo, result.best_epoch = resume.best_val_elbo, resume.best_epoch
        result.history = list(resume.history)
        first_epoch, seconds_before = resume.epoch + 1, resume.seconds
    started = time.perf_counter()

    def snapshot() -> TrainState:
        return TrainState(
            result.history[-1].epoch,
            _cpu(model.state_dict()),
            copy.deepcopy(optimizer.state_dict()),
            gen.get_state(),
            best_state,
            result.best_val_elbo,
            result.best_epoch,
            list(result.history),
            seconds_before + time.perf_counter() - started,
        )

    for epoch in range(first_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        beta = kl_weight(epoch, cfg.warmup_epochs)
        if ranks.enabled:
            noise.manual_seed(rank_epoch_seed(cfg.seed, ranks.rank, epoch))
        train = train_epoch(model, optimizer, x_train, cfg, beta, gen, ranks, step, noise)
        val_gen.manual_seed(cfg.seed + 1)  # the same eps every epoch: epochs are compared on equal terms
        val = evaluate_elbo(model, x_val, 1, val_gen, ranks=ranks)
        if not math.isfinite(val[0]):
            raise NonFiniteLoss(f"the validation ELBO became {val[0]} at epoch {epoch}")
        metrics = EpochMetrics(epoch, beta, *train, *val, seconds=time.perf_counter() - t0)
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        # Only a fully weighted (beta = 1) ELBO is a fair candidate for "best".
        stop = False
        if beta >= 1.0 and val[0] > result.best_val_elbo + cfg.min_delta:
            result.best_val_elbo, result.best_epoch = val[0], epoch
            best_state = _cpu(model.state_dict())
        elif beta >= 1.0 and epoch - max(result.best_epoch, cfg.warmup_epochs) >= cfg.patience:
            result.stop_reason = f"no validation ELBO improvement for {cfg.patience} epochs"
            stop = True
        if on_checkpoint is not None and checkpoint_every > 0 and epoch % checkpoint_every == 0 and not stop:
            on_checkpoint(snapshot())
        if stop:
            break
    else:
        result.stop_reason = f"reached the epoch limit ({cfg.epochs})"
    result.state = snapshot()
    if result.best_epoch == 0:  # the run ended inside warm-up: keep the last weights
        result.best_epoch = result.history[-1].epoch
        result.best_val_elbo = result.history[-1].val_elbo
        best_state = _cpu(model.state_dict())
    model.load_state_dict(best_state)
    result.seconds = seconds_before + time.perf_counter() - started
    return result
