"""Where the variational gap on held-out digits comes from, and what training the encoder longer buys.

    .venv/bin/python benchmarks/gap.py [--seeds 0 1 2] [--rows 200] [--classes 1 8 9] [--refine-steps 2000]

The gap log p(x) - ELBO splits in two (Cremer, Li & Duvenaud 2018, "Inference suboptimality in VAEs"):

    approximation gap  log p(x) - ELBO(q*)            q* = the best diagonal Gaussian for this row alone
    amortisation gap   ELBO(q*) - ELBO(q_encoder)     what the encoder network loses against q*

For `vae-train` with its defaults on task c's split (quality.py: 80% of digits trained on, the rest held out and
dequantised), per seed, on --rows held-out rows and as many training rows (each in nats; log p(x) as IWAE_1024):

- the gap of the encoder, of q* (per row: Adam on mean and log-variance from the encoder's answer, 32 draws a step,
  1,500 steps; the decoder and the prior fixed), and the split into the two parts above;
- a variant, the encoder refined: after training, the encoder alone trained further (--refine-steps of Adam,
  cosine-decayed from 3e-3) on minibatches of training rows and three times as many rows drawn from the model
  itself (z from the prior, x from p(x|z)). The decoder and the prior are fixed, so log p(x) is too, and every nat
  of ELBO gained is a nat of gap closed; the model's own rows are unlimited, so the encoder cannot overfit them.
  Reported with its held-out bits/dim (IWAE_256 with the refined encoder as proposal), corrupted-digits AUROC (task
  b) and, per --classes, leave-one-class-out AUROC (task a) with the service's statistic -ELBO_16 (one noise block
  shared by every row), against the encoder as trained.

Prints mean ± std over seeds and writes benchmarks/results/gap.json. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines import auroc, bits_per_dim, dequantise  # noqa: E402
from machine import machine_record  # noqa: E402
from quality import VAL_FRACTION, Case, digits_case  # noqa: E402

LOG_PX_K = 1024  # draws of the IWAE bound taken as log p(x)
BITS_K = 256  # quality.py's IWAE_K for bits/dim
SCORE_K = 16  # the service's -ELBO_K
OPTIMAL_STEPS, OPTIMAL_DRAWS, OPTIMAL_LR = 1500, 32, 3e-3
REFINE_BATCH, REFINE_SLEEP, REFINE_LR = 256, 3, 3e-3  # training rows a step, model rows per training row


def train(case: Case, seed: int, work: Path) -> Any:
    """vae-train with its defaults on case.pool, as quality.py runs it; the trained model from the bundle."""
    from training import pipeline
    from training.checkpoint import load_model
    from training.config import DataConfig, RunConfig, TrainConfig

    path = work / f"{case.name}-{seed}.npy"
    np.save(path, case.pool)
    data = DataConfig(source=str(path), seed=seed, val_fraction=VAL_FRACTION, test_fraction=0.0)
    config = RunConfig(data=data, train=TrainConfig(seed=seed), name=f"gap-{case.name}-{seed}", repository=work)
    model = load_model(pipeline.run(config).bundle_dir / "checkpoint.pt")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def log_weights(model: Any, x_std: Tensor, mean: Tensor, log_var: Tensor, eps: Tensor) -> Tensor:
    """log p(x|z) + log p(z) - log q(z|x) at z = mean + exp(log_var / 2) eps, in raw-space nats: (B, K)."""
    from training import gaussian as G

    z = G.reparameterize_diag(mean, log_var, eps)  # (B, K, d)
    dec_mean, dec_log_var = model.decoder(z)
    log_px = G.log_normal(x_std.unsqueeze(-2), model.full(dec_mean), model.full(dec_log_var))
    log_px = (log_px + model.feature_log_offset).sum(-1)
    return log_px + model.log_prior(z) - G.log_q_from_eps(eps, 0.5 * log_var)


def encoded(model: Any, x_std: Tensor) -> tuple[Tensor, Tensor]:
    post = model.encoder(model.select(x_std))
    return post.mean, post.log_var


def bounds(model: Any, x_std: Tensor, q: tuple[Tensor, Tensor], k: int, seed: int) -> tuple[Tensor, Tensor]:
    """ELBO and IWAE_k per row from k independent draws of q per row (in chunks of 256 draws)."""
    from training import gaussian as G

    gen, d = torch.Generator().manual_seed(seed), model.config.latent_dim
    with torch.no_grad():
        parts = [
            log_weights(model, x_std, *q, torch.randn(len(x_std), min(256, k - i), d, generator=gen))
            for i in range(0, k, 256)
        ]
    log_w = torch.cat(parts, 1)
    return log_w.mean(1), G.log_mean_exp(log_w)


def optimal_gaussian(model: Any, x_std: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """q* per row: the diagonal Gaussian of highest ELBO for that row alone, by Adam from the encoder's answer."""
    gen, d = torch.Generator().manual_seed(seed), model.config.latent_dim
    mean, log_var = (t.detach().clone().requires_grad_(True) for t in encoded(model, x_std))
    opt = torch.optim.Adam([mean, log_var], lr=OPTIMAL_LR)
    for _ in range(OPTIMAL_STEPS):
        opt.zero_grad()
        eps = torch.randn(len(x_std), OPTIMAL_DRAWS, d, generator=gen)
        (-log_weights(model, x_std, mean, log_var, eps).mean()).backward()
        opt.step()
    return mean.detach(), log_var.detach()


def model_rows(model: Any, n: int, gen: torch.Generator) -> Tensor:
    """n standardised rows drawn from the model: z from its prior (the mixture or N(0, I)), x from p(x|z)."""
    d = model.config.latent_dim
    if model.prior is None:
        z = torch.randn(n, d, generator=gen)
    else:
        spec = model.prior.spec
        component = torch.multinomial(torch.tensor(spec.weights), n, replacement=True, generator=gen)
        means = torch.tensor(spec.means, dtype=torch.float32)[component]
        scale_tril = torch.tensor(spec.scale_tril, dtype=torch.float32)[component]
        z = means + (scale_tril @ torch.randn(n, d, 1, generator=gen)).squeeze(-1)
    dec_mean, dec_log_var = model.decoder(z)
    x = dec_mean + torch.exp(0.5 * dec_log_var) * torch.randn(dec_mean.shape, generator=gen)
    return model.full(x)


def refine_encoder(model: Any, x_train_std: Tensor, steps: int, seed: int) -> Any:
    """A copy of model whose encoder alone is trained further on training rows (dequantised afresh each step, as in
    training) and on rows drawn from the model; the decoder and the prior are the trained ones, fixed."""
    refined = copy.deepcopy(model)
    for p in refined.encoder.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(refined.encoder.parameters(), lr=REFINE_LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen, d = torch.Generator().manual_seed(seed), model.config.latent_dim
    for _ in range(steps):
        idx = torch.randint(len(x_train_std), (REFINE_BATCH,), generator=gen)
        with torch.no_grad():
            drawn = model_rows(refined, REFINE_SLEEP * len(idx), gen)
            rows = torch.cat([refined.dequantize(x_train_std[idx], gen), drawn])
        opt.zero_grad()
        eps = torch.randn(len(rows), 1, d, generator=gen)
        (-log_weights(refined, rows, *encoded(refined, rows), eps).mean()).backward()
        opt.step()
        schedule.step()
    for p in refined.encoder.parameters():
        p.requires_grad_(False)
    return refined


def anomaly_scores(model: Any, x: np.ndarray) -> np.ndarray:
    """-ELBO_16 with one noise block shared by every row, as the service scores."""
    x_std = model.standardize(torch.from_numpy(x))
    eps = torch.randn(1, SCORE_K, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = -log_weights(model, x_std, *encoded(model, x_std), eps.expand(len(x), -1, -1)).mean(1)
    return scores.numpy().astype(np.float64)


def gap_figures(model: Any, x_std: Tensor, seed: int, prefix: str, optimal: bool) -> dict[str, float]:
    """Mean ELBO, log p(x) and the gap of the encoder (and of q*, and the split, when optimal) on rows x_std."""
    elbo, log_px = bounds(model, x_std, encoded(model, x_std), LOG_PX_K, seed)
    out = {f"{prefix}elbo": elbo.mean().item(), f"{prefix}gap": (log_px - elbo).mean().item()}
    if optimal:
        q_star = optimal_gaussian(model, x_std, seed)
        elbo_star, log_px_star = bounds(model, x_std, q_star, LOG_PX_K, seed + 1)
        log_px = torch.maximum(log_px, log_px_star)  # either proposal's bound is a lower bound on log p(x)
        out[f"{prefix}gap"] = (log_px - elbo).mean().item()
        out[f"{prefix}approximation_gap"] = (log_px - elbo_star).mean().item()
        out[f"{prefix}amortisation_gap"] = (elbo_star - elbo).mean().item()
    return out


def run_seed(seed: int, rows: int, classes: list[int], steps: int, work: Path) -> dict[str, float]:
    from quality import _holdout_cases

    t0, out = time.perf_counter(), dict[str, float]()
    case = digits_case(seed, corruptions=True, likelihood=True)
    model = train(case, seed, work)
    t_train = time.perf_counter() - t0
    held_out = model.standardize(torch.from_numpy(case.likelihood))
    train_rows = model.standardize(torch.from_numpy(dequantise(case.pool, np.random.default_rng([seed, 60]))))
    out |= gap_figures(model, held_out[:rows], seed, "held_out_", optimal=True)
    out |= gap_figures(model, train_rows[:rows], seed, "train_", optimal=True)
    t1 = time.perf_counter()
    refined = refine_encoder(model, model.standardize(torch.from_numpy(case.pool)), steps, seed)
    out["refine_seconds"], out["train_seconds"] = time.perf_counter() - t1, t_train
    for name, m in (("trained", model), ("refined", refined)):
        out[f"{name}_held_out_gap"] = gap_figures(m, held_out, seed, "", optimal=False)["gap"]
        _, log_px = bounds(m, held_out, encoded(m, held_out), BITS_K, seed + 2)
        out[f"{name}_bits_per_dim"] = bits_per_dim(log_px.numpy(), held_out.shape[1])
        b = [auroc(anomaly_scores(m, clean), anomaly_scores(m, bad)) for clean, bad in case.tests.values()]
        out[f"{name}_b"] = float(np.mean(b))
    x, y = _digits()
    for held in _holdout_cases("a", x, y, classes, seed):
        trained = train(held, seed, work)
        refined = refine_encoder(trained, trained.standardize(torch.from_numpy(held.pool)), steps, seed)
        ((clean, anomalies),) = held.tests.values()
        for name, m in (("trained", trained), ("refined", refined)):
            out[f"{name}_{held.name}"] = auroc(anomaly_scores(m, clean), anomaly_scores(m, anomalies))
    return out


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target


def summary(runs: dict[int, dict[str, float]]) -> dict[str, tuple[float, float]]:
    values = {k: [r[k] for r in runs.values()] for k in next(iter(runs.values()))}
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=200, help="held-out and training rows for q* (Adam per row)")
    parser.add_argument("--classes", type=int, nargs="*", default=[1, 8, 9], help="task a's held-out classes")
    parser.add_argument("--refine-steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gap.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    runs: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs[seed] = run_seed(seed, args.rows, args.classes, args.refine_steps, Path(tmp))
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in runs[seed].items()), flush=True)
    table = summary(runs)
    print("\nmean ± std over seeds " + " ".join(map(str, args.seeds)))
    for k, (m, s) in table.items():
        print(f"  {k:40s} {m:10.4f} ± {s:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "summary": table}
    args.out.write_text(json.dumps(report | {"machine": machine_record()}, indent=1))


if __name__ == "__main__":
    main()
