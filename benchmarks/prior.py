"""The prior's effect on the design's goals, from the manifests `vae-train` writes: the same runs with `--prior
mixture` (the default) and `--prior standard` (N(0, I)), side by side per seed, on held-out rows of each data set.

    .venv/bin/python benchmarks/prior.py [--seeds 0 1 2] [--data builtin:digits ...]

Per run and split (validation: the rows the prior was chosen on; test: rows neither training nor the choice saw):
ELBO and IWAE_256 (nats), the gap IWAE - ELBO, the aggregate-posterior KL KL(q(z) || p(z)) by sampling
(aggregate_posterior_kl_sampled: the design's self-consistency goal, comparable across priors), bits/dim when every
feature is on a lattice, and the mixture's size. Prints mean ± std over seeds and writes benchmarks/results/prior.json
with every run and the machine. Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_record  # noqa: E402

FIELDS = ("elbo", "iwae", "gap", "aggregate_posterior_kl_sampled", "bits_per_dim")
PRIORS = ("mixture", "standard")


def run_once(source: str, prior: str, seed: int, work: Path) -> dict[str, Any]:
    """One vae-train run with its defaults but the prior; the manifest's figures per split."""
    from training import pipeline
    from training.config import DataConfig, RunConfig, TrainConfig

    config = RunConfig(
        data=DataConfig(source=source, seed=seed),
        train=TrainConfig(seed=seed, prior=prior),
        name=f"p-{prior}-{seed}",
        repository=work,
    )
    manifest = pipeline.run(config).manifest
    assert manifest is not None
    splits = {split: {f: getattr(d, f) for f in FIELDS} for split, d in manifest.diagnostics.items()}
    components = 0 if manifest.prior is None else len(manifest.prior.weights)
    return {"splits": splits, "components": components, "seconds": manifest.training.seconds}


def summarise(runs: dict[str, dict[str, dict[int, dict[str, Any]]]]) -> dict[str, Any]:
    """source -> prior -> split -> field -> mean, std over seeds (None when a field is None in any run)."""
    out: dict[str, Any] = {}
    for source, by_prior in runs.items():
        for prior, by_seed in by_prior.items():
            for split in next(iter(by_seed.values()))["splits"]:
                for field in FIELDS:
                    values = [r["splits"][split][field] for r in by_seed.values()]
                    if any(v is None for v in values):
                        continue
                    a = np.asarray(values, dtype=np.float64)
                    cell = {"mean": float(a.mean()), "std": float(a.std()), "seeds": len(a)}
                    out.setdefault(source, {}).setdefault(prior, {}).setdefault(split, {})[field] = cell
            sizes = [r["components"] for r in by_seed.values()]
            out[source][prior]["components"] = sizes
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", nargs="+", default=["builtin:digits"], help="vae-train --data sources")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prior.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="No data for colormapping")
    runs: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.data:
            for seed in args.seeds:
                for prior in PRIORS:
                    result = run_once(source, prior, seed, Path(tmp))
                    runs.setdefault(source, {}).setdefault(prior, {})[seed] = result
                    test = result["splits"].get("test", {})
                    shown = " ".join(f"{k}={v:.3f}" for k, v in test.items() if v is not None)
                    print(f"{source} seed {seed} {prior:<8} M={result['components']:<2} test {shown}", flush=True)
    summary = summarise(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_record(), "runs": runs, "summary": summary}, indent=2))
    for source, by_prior in summary.items():
        print(f"\n{source}: mean ± std over seeds {args.seeds}")
        print(f"{'split':<11}{'field':<32}" + "".join(f"{p:>20}" for p in PRIORS))
        for split in ("validation", "test"):
            for field in FIELDS:
                cells = [by_prior.get(p, {}).get(split, {}).get(field) for p in PRIORS]
                if all(c is None for c in cells):
                    continue
                text = "".join(f"{c['mean']:>12.3f} ± {c['std']:<5.3f}" if c else f"{'-':>20}" for c in cells)
                print(f"{split:<11}{field:<32}{text}")
        print("mixture sizes per seed: " + ", ".join(str(s) for s in by_prior["mixture"]["components"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
