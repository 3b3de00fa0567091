"""After training: the encoder alone trained further, the decoder and the prior fixed (`--refine-steps`).

The variational gap log p(x) - ELBO has two parts (Cremer, Li & Duvenaud 2018): the approximation gap, from q being
Gaussian, and the amortisation gap, from one encoder network answering for every row. On held-out digits the second
is most of it (benchmarks/gap.py: about 5.6 of 6.7 nats, against 2.8 of 3.9 on training rows): the encoder fits
the rows it was trained on better than rows it has not seen. Training it further on the model's own rows, of which
there is no end, narrows that:

    each step: B training rows (dequantised afresh, as in training),
               R·B rows drawn from the model:   z ~ p(z) (the prior the model ships with), x ~ p(x|z),
               3B rows around training rows:    z ~ q(z|x) of each of the B rows (those --trim keeps), three draws,
                                                x' ~ p(x'|z),
               B rows between training rows:    z = λ·mean(x_i) + (1 - λ)·mean(x_j), λ ~ U(0, 1), x' ~ p(x'|z);
               every row jittered by N(0, σ²) per modelled feature (standardised units, σ = INPUT_NOISE);
               the encoder's parameters take an Adam step on -mean ELBO_1 of the jittered rows
               (with --trim, less the training rows' worst-fitting share, as in training).

The prior's rows cover the model's whole density; the rows around and between real rows are the model's variations
on them, the region where unseen real rows fall; the jitter keeps the encoder from answering well only at the exact
rows it saw. On held-out digits (seeds 0-2, 5,000 steps) the mix closed 0.15 nats more of the gap than seven prior rows
and one draw around each row, for 30% more time (README, "The variational gap"); no one part of it did alone.

With the decoder and the prior fixed, log p(x) is fixed, so every nat of ELBO gained is a nat of gap closed; the
encoder kept is the one of best validation ELBO (the trained encoder included, compared on the same noise), so it
never leaves the validation gap wider. It runs `--refine-steps` steps, but no more than TRAINING_RATIO times the steps
training took (a small table's short training gets a short refinement), with the learning rate cosine-decayed from
`--lr` x LR_SCALE to 0. Its gains come late, as the rate decays, so it does not stop early. The default, 10,000
steps, took the validation ELBO higher than 5,000 in each of seeds 0-2 on digits and the held-out gap from 3.13 to 3.00
nats (task c's split, the screen's measure), for twice the refinement's time; twice the rows in each step, another
learning rate, less jitter or smaller batches for more steps moved it at most 0.04 nats or widened it (README, "The
variational gap").
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from contract.prior import MixtureArrays, draw_latents
from training.config import Covariance, ModelConfig, TrainConfig
from training.loop import evaluate_elbo
from training.losses import score_terms, trimmed_rows
from training.model import Encoder, GaussianVAE, Posterior
from training.rows import Rows

MODEL_ROWS = 5  # R: rows drawn from the prior through the decoder per training row in each step
AROUND = 3  # rows per training row drawn from its posterior through the decoder
BETWEEN = 1  # rows per training row decoded from between its posterior mean and another row's
INPUT_NOISE = 0.1  # σ of the jitter on every row the encoder is refined on (standardised units); 0.2 hurt
LR_SCALE = 3.0  # the refinement's initial learning rate, in units of --lr
CHECKS = 10  # validation ELBOs taken over the run (and one before it)
# the refinement's steps are at most this many times training's: digits trains about 2,100-2,700 steps, so the default
# 10,000 runs whole (nine digits of ten: about 7,800 or more); a small table's short training gets a short refinement
# (--refine-steps' help says 5 times)
TRAINING_RATIO = 5
HEAD_FIT_STEPS, HEAD_FIT_ROWS = 500, 1024  # fitting a full encoder's Cholesky diagonal to the diagonal one's sd


@dataclass(frozen=True)
class Refinement:
    steps: int  # steps run (0: off, nothing to run, or the first step's ELBO was not finite)
    best_step: int  # the step whose encoder was kept (0: the trained encoder)
    val_elbo_before: float  # validation ELBO_K of the trained encoder (nats)
    val_elbo_after: float  # of the encoder kept
    stop_reason: str = ""  # why it ran that many steps
    seconds: float = 0.0

    def summary(self) -> str:
        if self.steps == 0:
            return f"encoder not refined ({self.stop_reason})"
        return (
            f"encoder refined for {self.steps} steps ({self.stop_reason}; {self.seconds:.1f}s): validation ELBO "
            f"{self.val_elbo_before:.3f} -> {self.val_elbo_after:.3f} nats (kept step {self.best_step})"
        )


def refine_steps(cfg: TrainConfig, training_steps: int) -> tuple[int, str]:
    """The steps the refinement runs, and why that many: --refine-steps, and no more than TRAINING_RATIO times
    training's steps; none for --objective iwae, whose encoder is trained for the IWAE bound, which a refinement on
    the ELBO would loosen."""
    if cfg.objective == "iwae":
        return 0, "not run with --objective iwae"
    cap = TRAINING_RATIO * training_steps
    if cfg.refine_steps <= cap:
        return max(0, cfg.refine_steps), "--refine-steps"
    return cap, f"{TRAINING_RATIO} times training's {training_steps} steps"


def refines(cfg: TrainConfig) -> bool:
    """Whether the refinement runs after training (--refine-steps > 0, not --objective iwae)."""
    return cfg.refine_steps > 0 and cfg.objective != "iwae"


def training_covariance(model: ModelConfig, train: TrainConfig) -> Covariance:
    """The encoder covariance the joint training uses. A full (Cholesky) encoder asked for is trained diagonal and
    made full before the refinement (full_from_diagonal), when there is one: on held-out digits (seeds 0-2) that
    gave a narrower gap and a better density than training the full encoder with the decoder, whose joint training
    cost 0.04 bits/dim (README, "The variational gap"). Without a refinement it trains as asked."""
    return "diagonal" if model.covariance == "full" and refines(train) else model.covariance


def full_from_diagonal(model: GaussianVAE, x_std: Rows, seed: int) -> None:
    """Give the model a full-covariance encoder answering as its diagonal one does: the same hidden layers and mean,
    no correlations (the Cholesky factor's off-diagonal head 0), and the factor's diagonal head fitted (Adam,
    HEAD_FIT_STEPS steps on up to HEAD_FIT_ROWS training rows) so that L_jj = softplus(b_j) + scale_tril_min
    matches the diagonal encoder's σ_j = exp(log_var_j / 2), which no linear map of the same features gives
    exactly. The refinement then learns the correlations. The model's config says "full" afterwards."""
    old = model.encoder
    cfg = replace(model.config, covariance="full")
    with torch.random.fork_rng(devices=[]):  # its initial weights are all overwritten: leave the caller's RNG be
        new = Encoder(cfg, old.net[0].in_features).to(model.data_mean.device)
    d = cfg.latent_dim
    with torch.no_grad():
        for source, target in zip(old.net[:-1], new.net[:-1], strict=True):
            target.load_state_dict(source.state_dict())
        head, last = old.net[-1], new.net[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.weight[:d], last.bias[:d] = head.weight[:d], head.bias[:d]  # the mean
        # softplus(b) ≈ exp(b) for b ≪ 0: log L_jj ≈ log_var_j / 2, the start of the fit below
        last.weight[d : 2 * d], last.bias[d : 2 * d] = 0.5 * head.weight[d:], 0.5 * head.bias[d:]
    gen = torch.Generator(device=model.data_mean.device).manual_seed(seed + 2)
    rows = x_std[torch.randperm(x_std.shape[0], generator=gen, device=gen.device)[:HEAD_FIT_ROWS]]
    features = model.encoder_input(rows)
    with torch.no_grad():
        target_log_sd = 0.5 * old(features).log_var
    frozen = [p for p in new.parameters() if p is not last.weight and p is not last.bias]
    for p in frozen:
        p.requires_grad_(False)
    diag_rows = torch.zeros(last.weight.shape[0], 1, device=last.weight.device)
    diag_rows[d : 2 * d] = 1.0  # only the factor's diagonal head learns here
    optimizer = torch.optim.Adam([last.weight, last.bias], lr=3e-3)
    for _ in range(HEAD_FIT_STEPS):
        loss = (new(features).log_diag - target_log_sd).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert last.weight.grad is not None and last.bias.grad is not None
        last.weight.grad.mul_(diag_rows)
        last.bias.grad.mul_(diag_rows[:, 0])
        optimizer.step()
    for p in frozen:
        p.requires_grad_(True)
    model.encoder, model.config = new, cfg


@torch.no_grad()
def decoded(model: GaussianVAE, z: Tensor, gen: torch.Generator) -> Tensor:
    """z (n, d) -> standardised rows (n, D): x ~ p(x|z) over the modelled features; a constant feature gets its
    standardised value 0."""
    mean, log_var = model.decoder(z)
    noise = torch.randn(mean.shape, generator=gen, device=mean.device)
    return model.full(model.draw(mean, log_var, noise))


def model_rows(
    model: GaussianVAE, prior: MixtureArrays | None, n: int, rng: np.random.Generator, gen: torch.Generator
) -> Tensor:
    """n standardised rows (n, D) from the model: z ~ p(z) (contract.prior's draw; prior is
    MixtureArrays.of(model.prior.spec), built once by the caller, None for N(0, I)), then decoded."""
    z = torch.from_numpy(draw_latents(prior, n, model.config.latent_dim, 1.0, rng)).to(model.data_mean.device)
    return decoded(model, z, gen)


@torch.no_grad()
def latents_near(post: Posterior, gen: torch.Generator, around: int, between: int) -> Tensor:
    """Codes near B rows from their posterior q(z|x) (mean (B, d)): `around` per row drawn from it (draw-major: the
    first B are one draw for each row), then `between` per row, z = λ·mean_i + (1 - λ)·mean_j with λ ~ U(0, 1) and
    j a random row: ((around + between)·B, d)."""
    (b, d), device = post.mean.shape, post.mean.device
    z = [post.sample(torch.randn(b, around, d, generator=gen, device=device)).transpose(0, 1).reshape(-1, d)]
    for _ in range(between):
        lam = torch.rand(b, 1, generator=gen, device=device)
        z.append(lam * post.mean + (1 - lam) * post.mean[torch.randint(b, (b,), generator=gen, device=device)])
    return torch.cat(z)


@torch.no_grad()
def rows_near(model: GaussianVAE, x_std: Tensor, gen: torch.Generator, around: int, between: int) -> Tensor:
    """Rows from the model near the rows of x_std (B, D), decoded from latents_near: ((around + between)·B, D)."""
    return decoded(model, latents_near(model.encode(x_std), gen, around, between), gen)


def jittered(model: GaussianVAE, x_std: Tensor, gen: torch.Generator) -> Tensor:
    """x_std (B, D) plus N(0, INPUT_NOISE²) on each modelled feature (standardised units); constants stay 0."""
    noise = torch.zeros_like(x_std)
    noise[:, model.active] = INPUT_NOISE * torch.randn(
        x_std.shape[0], len(model.active), generator=gen, device=x_std.device
    )
    return x_std + noise


def refine_encoder(
    model: GaussianVAE, x_train: Rows, x_val: Rows, cfg: TrainConfig, steps: int, why: str = ""
) -> Refinement:
    """Train model.encoder alone for `steps` steps as the module docstring says; leave the model with the encoder of
    best validation ELBO_K (K = cfg.score_samples) and its decoder and prior exactly as they were."""
    device = model.data_mean.device
    val_gen = torch.Generator(device=device)

    def validation_elbo() -> float:
        val_gen.manual_seed(cfg.seed)  # the same dequantisation and noise for every encoder compared
        return evaluate_elbo(model, x_val, cfg.score_samples, val_gen)[0]

    start = time.perf_counter()
    before = validation_elbo()
    if steps <= 0:
        return Refinement(0, 0, before, before, why or "off", time.perf_counter() - start)
    best_state, best_elbo, best_step = copy.deepcopy(model.encoder.state_dict()), before, 0
    frozen = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("encoder.")]
    for p in frozen:
        p.requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    rng = np.random.default_rng([cfg.seed, 70])
    prior = MixtureArrays.of(model.prior.spec) if model.prior is not None else None
    optimizer = torch.optim.Adam(model.encoder.parameters(), lr=cfg.learning_rate * LR_SCALE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    check_every, n, d = max(1, math.ceil(steps / CHECKS)), x_train.shape[0], model.config.latent_dim
    batch = min(cfg.batch_size, n)
    ran, stop_reason = 0, why or f"{steps} steps"
    try:
        for step in range(1, steps + 1):
            model.train()
            x = x_train[torch.randint(n, (batch,), generator=gen, device=device)]
            if model.dequantize_training:
                x = model.dequantize(x, gen)
            near = x
            if cfg.trim > 0:  # the rows --trim leaves out do not come back as the model's variations on them
                with torch.no_grad():
                    ranked = score_terms(model, x, torch.randn(batch, 1, d, generator=gen, device=device)).elbo
                near = x[trimmed_rows(ranked, cfg.trim)]
            x = torch.cat(
                [
                    x,
                    model_rows(model, prior, MODEL_ROWS * batch, rng, gen),
                    rows_near(model, near, gen, AROUND, BETWEEN),
                ]
            )
            x = jittered(model, x, gen)
            eps = torch.randn(x.shape[0], 1, d, generator=gen, device=device)
            elbo = score_terms(model, x, eps).elbo  # (B + R·B + (AROUND + BETWEEN)·B_kept,)
            # a row left out by --trim counts here too: its inf would still turn the gradients to NaN
            if not torch.isfinite(elbo).all():  # the encoder kept so far stands
                stop_reason = f"a non-finite ELBO at step {step}"
                break
            own = elbo[:batch]  # with --trim the worst-fitting training rows stay out here too, as in training
            loss = -torch.cat([own[trimmed_rows(own, cfg.trim)], elbo[batch:]]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            ran = step
            if step % check_every == 0 or step == steps:
                val = validation_elbo()
                if math.isfinite(val) and val > best_elbo:
                    best_state, best_elbo, best_step = copy.deepcopy(model.encoder.state_dict()), val, step
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.encoder.load_state_dict(best_state)
        model.eval()
    return Refinement(ran, best_step, before, best_elbo, stop_reason, time.perf_counter() - start)
