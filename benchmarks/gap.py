"""Where the variational gap on held-out digits comes from, and what --refine-steps closes of it.

    .venv/bin/python benchmarks/gap.py [--seeds 0 1 2] [--rows 200]

The gap log p(x) - ELBO splits in two (Cremer, Li & Duvenaud 2018, "Inference suboptimality in VAEs"):

    approximation gap  log p(x) - ELBO(q*)            q* = the best diagonal Gaussian for this row alone
    amortisation gap   ELBO(q*) - ELBO(q_encoder)     what the encoder network loses against q*

`vae-train` runs twice per seed on task c's split (quality.py: 80% of digits trained on, the rest held out and
dequantised), once with `--refine-steps 0` (the encoder as trained with the decoder) and once with the defaults
(that encoder then refined, training/refine.py). The joint training is the same in both, and the refinement fixes
the decoder and the prior, so both share one log p(x). Each reports, in nats (log p(x) as IWAE_1024):

- on every held-out row: the gap with its own encoder, and the bits/dim of IWAE_256 with it as the proposal;
- on the first --rows held-out rows: the gap, the gap of q* (per row: Adam on mean and log-variance from the
  encoder's answer, 32 draws a step, 1,500 steps; the decoder and the prior fixed) and the split above;
- for the encoder as trained, the same split on as many training rows.

Prints mean ± std over seeds and writes benchmarks/results/gap.json. Not run by the test suite. Anomaly AUROCs of
both are quality.py's (methods product and product-norefine).
"""

from __future__ import annotations

import argparse
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

from baselines import bits_per_dim, dequantise  # noqa: E402
from machine import machine_record  # noqa: E402
from quality import VAL_FRACTION, Case, digits_case  # noqa: E402

from training.config import TrainConfig  # noqa: E402
from training.data import split_rows  # noqa: E402

LOG_PX_K = 1024  # draws of the IWAE bound taken as log p(x)
BITS_K = 256  # quality.py's IWAE_K for bits/dim
OPTIMAL_STEPS, OPTIMAL_DRAWS, OPTIMAL_LR = 1500, 32, 3e-3


def train(case: Case, seed: int, work: Path, refine_steps: int) -> Any:
    """vae-train with its defaults but --refine-steps on case.pool, as quality.py runs it; the model from the bundle."""
    from training import pipeline
    from training.checkpoint import load_model
    from training.config import DataConfig, RunConfig

    path = work / f"{case.name}-{seed}.npy"
    np.save(path, case.pool)
    data = DataConfig(source=str(path), seed=seed, val_fraction=VAL_FRACTION, test_fraction=0.0)
    train = TrainConfig(seed=seed, refine_steps=refine_steps)
    config = RunConfig(data=data, train=train, name=f"gap-{case.name}-{seed}-{refine_steps}", repository=work)
    model = load_model(pipeline.run(config).bundle_dir / "checkpoint.pt")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def log_weights(model: Any, x_std: Tensor, mean: Tensor, log_var: Tensor, eps: Tensor) -> Tensor:
    """log p(x|z) + log p(z) - log q(z|x) at z = mean + exp(log_var / 2) eps, in raw-space nats: (B, K)."""
    from training import gaussian as G

    z = G.reparameterize_diag(mean, log_var, eps)  # (B, K, d)
    dec_mean, dec_log_var = model.decoder(z)
    v = model.decorrelate(x_std)  # the rows as the likelihood models them
    log_px = G.log_normal(v.unsqueeze(-2), model.full(dec_mean), model.full(dec_log_var))
    log_px = (log_px + model.feature_log_offset).sum(-1) - model.log_det_factor
    return log_px + model.log_prior(z) - G.log_q_from_eps(eps, 0.5 * log_var)


def encoded(model: Any, x_std: Tensor) -> tuple[Tensor, Tensor]:
    assert model.config.covariance == "diagonal", "log_weights takes a diagonal q"
    post = model.encode(x_std)
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


def run_seed(seed: int, rows: int, work: Path) -> dict[str, float]:
    case = digits_case(seed, corruptions=False, likelihood=True)
    out = dict[str, float]()
    for name, steps in (("trained", 0), ("refined", TrainConfig().refine_steps)):
        t0 = time.perf_counter()
        model = train(case, seed, work, steps)
        out[f"{name}_seconds"] = time.perf_counter() - t0
        held_out = model.standardize(torch.from_numpy(case.likelihood))
        out[f"{name}_held_out_gap_all_rows"] = gap_figures(model, held_out, seed, "", optimal=False)["gap"]
        _, log_px = bounds(model, held_out, encoded(model, held_out), BITS_K, seed + 2)
        out[f"{name}_bits_per_dim"] = bits_per_dim(log_px.numpy(), held_out.shape[1])
        out |= gap_figures(model, held_out[:rows], seed, f"{name}_held_out_", optimal=True)
        if name == "trained":
            trained_on = split_rows(len(case.pool), VAL_FRACTION, 0.0, seed).train[:rows]  # the pipeline's split
            train_rows = dequantise(case.pool[trained_on], np.random.default_rng([seed, 60]))
            out |= gap_figures(model, model.standardize(torch.from_numpy(train_rows)), seed, "train_", optimal=True)
    return out


def summary(runs: dict[int, dict[str, float]]) -> dict[str, tuple[float, float]]:
    values = {k: [r[k] for r in runs.values()] for k in next(iter(runs.values()))}
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=200, help="held-out and training rows for q* (Adam per row)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gap.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    runs: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs[seed] = run_seed(seed, args.rows, Path(tmp))
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
