"""Anomaly-detection and likelihood quality on held-out rows: `vae-train` defaults (scored from the exported ONNX
bundle) against a plain reference VAE, a Ledoit-Wolf Gaussian, kNN distance and an Isolation Forest, on
scikit-learn's bundled data sets (digits, breast cancer, wine; no downloads).

    .venv/bin/python benchmarks/quality.py [--seeds 0 1 2] [--tasks a b c d e f g h] [--quick] [--classes 0 1 2]

Tasks (AUROC, higher is better, except c):
  a  digits, one class held out as the anomaly, the other nine normal (mean over --classes)
  b  digits, clean held-out rows vs corrupted copies: a 3x3 patch set to 1.0, flipped left-right, noise 0.25
  c  digits, dequantised held-out rows: IWAE_256 test log-likelihood in bits/dim (lower is better)
  d  breast cancer benign, clean held-out rows vs copies with one feature x10, two features swapped, noise
  e  breast cancer, held-out benign vs all malignant
  f  wine, one class held out as the anomaly (mean over the 3 classes)
  g  breast cancer with anomalies among the training rows: task e's benign pool plus malignant rows making
     5% of it (CONTAMINATION), as unlabelled data arrives; held-out benign vs the malignant rows never trained on
  h  digits with anomalies among the training rows: task a's pool for each class in --classes plus rows of the
     held-out class making 5% of it; held-out normal rows vs that class's rows never trained on
Variants of the product, asked for by --methods: product-standard (--prior standard), product-full (--covariance
full), product-iwae (--objective iwae --samples 8), product-trim (--trim 0.05), product-norefine (--refine-steps
0), product-decorrelated (--decorrelate on), product-plain (--decorrelate off; the default, auto, trains both
and keeps one by validation ELBO), product-trim-plain (--trim 0.05 --decorrelate off). Every product method also
reports its variational gap IWAE_256 - ELBO_256 on the clean held-out rows (digits: dequantised) of each data set:
rows gap-a, gap-digits, gap-cancer, gap-wine, gap-contaminated, gap-h.
Baselines: a Ledoit-Wolf Gaussian, kNN distance, an Isolation Forest, a BIC-chosen Gaussian mixture and a plain deep
autoencoder, each standardised and on the raw rows (-raw); the table ends with each task's best baseline of all.
--quick: seed 0 and classes 0 1 2 for tasks a and h. Prints a table (mean ± std over seeds) and writes
benchmarks/results/quality.json (per seed, per class, timings, errors, machine). Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines import (  # noqa: E402
    BIN,
    Scorer,
    auroc,
    bits_per_dim,
    dequantise,
    fit_autoencoder,
    fit_gaussian,
    fit_gmm,
    fit_iforest,
    fit_knn,
    gaussian_log_density,  # noqa: E402
)
from machine import machine_record  # noqa: E402
from reference_vae import fit_reference  # noqa: E402

from contract import Manifest  # noqa: E402

VAL_FRACTION = 0.15  # of the training pool, for early stopping (the product and the reference VAE)
PRODUCT_TEST_FRACTION = 0.0  # the product gets every pool row but its validation share (0.05 before --test-fraction 0)
HELD_OUT = 0.2  # of each task's normal rows, never trained on
CONTAMINATION = 0.05  # task g: the share of the training pool that is malignant
SCORE_SAMPLES = 16  # K of the reference VAE's -ELBO_K anomaly score
IWAE_K = 256
# each shallow baseline twice: per-feature standardised, and on the rows as they are (-raw)
BASELINES = ("gaussian", "knn", "iforest", "gmm", "autoencoder")
# vae-train with its defaults, and the variants measured against them (each a dict of config overrides)
PRODUCTS: dict[str, dict[str, dict[str, Any]]] = {
    "product": {},
    "product-standard": {"train": {"prior": "standard"}},  # N(0, I) kept: the prior's effect
    "product-full": {"model": {"covariance": "full"}},  # the Cholesky encoder
    "product-iwae": {"train": {"objective": "iwae", "samples": 8}},  # the importance-weighted objective
    "product-trim": {"train": {"trim": CONTAMINATION}},  # the worst-fitting 5% of each minibatch left out
    "product-norefine": {"train": {"refine_steps": 0}},  # the encoder as trained with the decoder, not refined after
    "product-decorrelated": {"data": {"decorrelate": "on"}},  # the features decorrelated, always
    "product-plain": {"data": {"decorrelate": "off"}},  # the features as they are, always
    "product-trim-plain": {"train": {"trim": CONTAMINATION}, "data": {"decorrelate": "off"}},  # both of the above
}
METHODS = (*PRODUCTS, "reference", "reference-deq", *(f"{b}{v}" for b in BASELINES for v in ("", "-raw")))
ROWS = ("a", "b", "b/patch", "b/flip", "b/noise", "c", "d", "d/x10", "d/swap", "d/noise", "e", "f", "g", "h")
# the variational gap IWAE_256 - ELBO_256 (nats) of the product's methods on each case's clean held-out rows
GAP_ROWS = ("gap-a", "gap-digits", "gap-cancer", "gap-wine", "gap-contaminated", "gap-h")
CHUNK_DRAWS = 1 << 14  # rows x K per onnxruntime call


def _scorer_run(bundle_dir: Path, x: np.ndarray, eps: np.ndarray) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(bundle_dir / "scorer.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rows = max(1, CHUNK_DRAWS // eps.shape[1])
    parts = [
        session.run(names, {"x": x[i : i + rows], "eps": eps[i : i + rows]}) for i in range(0, max(len(x), 1), rows)
    ]
    return {n: np.concatenate([p[j] for p in parts]).astype(np.float64) for j, n in enumerate(names)}


def product_scores(bundle_dir: Path, x: np.ndarray) -> np.ndarray:
    """The product's anomaly score from its bundle alone: -ELBO_K, K and the default noise as the service uses."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    k, d = manifest["anomaly"]["importance_samples"], manifest["latent_dim"]
    eps = np.random.default_rng(manifest["anomaly"].get("noise_seed", 0)).standard_normal((k, d), dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return -_scorer_run(bundle_dir, x, np.broadcast_to(eps, (len(x), k, d)).copy())["elbo"]


def density_points(bundle_dir: Path, x: np.ndarray) -> np.ndarray:
    """Rows to feed the scorer for its density at the points x themselves (dequantised rows are not on the lattice):
    a bundle whose graphs take a lattice value at its bin's centre (preprocessing.bin_centres) adds step/2 to each
    lattice feature, so that is taken off first."""
    shift = Manifest.model_validate_json((bundle_dir / "manifest.json").read_text()).preprocessing.centre_shift()
    return np.ascontiguousarray(x - np.asarray(shift), dtype=np.float32)


def product_log_likelihood(bundle_dir: Path, x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """IWAE_K log-likelihood per row (raw-space nats) at the points x from the bundle's scorer, independent draws per
    row."""
    d = json.loads((bundle_dir / "manifest.json").read_text())["latent_dim"]
    eps = np.random.default_rng(seed).standard_normal((len(x), k, d), dtype=np.float32)
    return _scorer_run(bundle_dir, density_points(bundle_dir, x), eps)["log_likelihood"]


def product_gap(bundle_dir: Path, x: np.ndarray, k: int, seed: int) -> float:
    """Mean IWAE_K - ELBO_K (nats) at the points x, both from the same K independent draws per row (the ELBO_K of so
    many draws is the ELBO itself, up to its noise). Quantised rows (task a's digits, the tables' whole-number
    features) are taken at their values, as in the tables measured before the scorer took them at their bins'
    centres, so the figures stay comparable."""
    d = json.loads((bundle_dir / "manifest.json").read_text())["latent_dim"]
    eps = np.random.default_rng([seed, 50]).standard_normal((len(x), k, d), dtype=np.float32)
    out = _scorer_run(bundle_dir, density_points(bundle_dir, x), eps)
    return float(np.mean(out["log_likelihood"] - out["elbo"]))


def gap_key(case_name: str) -> str:
    """The GAP_ROWS key of a case: a3 -> gap-a/3, bc -> gap-digits, de -> gap-cancer, f1 -> gap-wine/1, g ->
    gap-contaminated, h3 -> gap-h/3."""
    named = {"bc": "gap-digits", "de": "gap-cancer", "g": "gap-contaminated"}
    if case_name in named:
        return named[case_name]
    return f"gap-{ {'a': 'a', 'h': 'h'}.get(case_name[0], 'wine') }/{case_name[1:]}"


def digits_bits_per_dim(log_likelihood: Callable[[np.ndarray], np.ndarray], x_test: np.ndarray, seed: int) -> float:
    """Bits/dim of a model's log-likelihood on seeded, dequantised digits rows (values k/16, bins [x, x + 1/16))."""
    return bits_per_dim(log_likelihood(dequantise(x_test, np.random.default_rng([seed, 3]))), x_test.shape[1])


@dataclass
class Case:
    """One training set and what is measured on it (tasks b and c share one, d and e share one)."""

    name: str  # part of a model name: [a-z0-9-]
    pool: np.ndarray  # every row any method trains (and early-stops) on
    tests: dict[str, tuple[np.ndarray, np.ndarray]]  # row of the table -> (clean held-out rows, anomalies)
    likelihood: np.ndarray | None = None  # dequantised held-out digits for bits/dim (task c)


def _split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    cut = int(round(HELD_OUT * n))
    return np.sort(perm[cut:]), np.sort(perm[:cut])


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _holdout_cases(task: str, x: np.ndarray, y: np.ndarray, classes: list[int], seed: int) -> list[Case]:
    cases = []
    for c in classes:
        normal = x[y != c]
        pool, test = _split(len(normal), np.random.default_rng([seed, c]))
        cases.append(Case(f"{task}{c}", _f32(normal[pool]), {f"{task}/{c}": (_f32(normal[test]), _f32(x[y == c]))}))
    return cases


def digits_case(seed: int, corruptions: bool, likelihood: bool) -> Case:
    x = (load_digits().data / 16.0).astype(np.float32)  # exactly as training/data.py builtin:digits
    pool, test = _split(len(x), np.random.default_rng([seed, 10]))
    rng, clean = np.random.default_rng([seed, 11]), x[test]
    tests: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if corruptions:
        patch = clean.reshape(-1, 8, 8).copy()
        for img, (r, c) in zip(patch, rng.integers(0, 6, size=(len(clean), 2)), strict=True):
            img[r : r + 3, c : c + 3] = 1.0
        flip = clean.reshape(-1, 8, 8)[:, :, ::-1]
        noise = np.round(np.clip(clean + 0.25 * rng.standard_normal(clean.shape), 0.0, 1.0) * 16) / 16
        for name, bad in (("patch", patch), ("flip", flip), ("noise", noise)):
            tests[f"b/{name}"] = (_f32(clean), _f32(bad.reshape(len(clean), -1)))
    deq = dequantise(clean, np.random.default_rng([seed, 3])) if likelihood else None
    return Case("bc", _f32(x[pool]), tests, deq)


def cancer_case(seed: int, corruptions: bool, malignant: bool) -> Case:
    data = load_breast_cancer()
    benign, rng = data.data[data.target == 1], np.random.default_rng([seed, 20])
    pool, test = _split(len(benign), rng)
    clean, n, dim = benign[test], len(test), benign.shape[1]
    tests: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if corruptions:
        rows = np.arange(n)
        x10 = clean.copy()
        x10[rows, rng.integers(0, dim, n)] *= 10
        j1 = rng.integers(0, dim, n)
        j2 = (j1 + rng.integers(1, dim, n)) % dim  # a different feature
        swap = clean.copy()
        swap[rows, j1], swap[rows, j2] = clean[rows, j2], clean[rows, j1]
        noise = clean + 0.5 * benign[pool].std(0) * rng.standard_normal(clean.shape)
        for name, bad in (("x10", x10), ("swap", swap), ("noise", noise)):
            tests[f"d/{name}"] = (_f32(clean), _f32(bad))
    if malignant:
        tests["e"] = (_f32(clean), _f32(data.data[data.target == 0]))
    return Case("de", _f32(benign[pool]), tests)


def contaminated_case(seed: int) -> Case:
    """Task g: task e's benign pool and held-out benign rows; CONTAMINATION of the training pool is malignant rows
    (a seeded pick), and the other malignant rows are the anomalies to find."""
    data = load_breast_cancer()
    benign, malignant = data.data[data.target == 1], data.data[data.target == 0]
    pool, test = _split(len(benign), np.random.default_rng([seed, 20]))  # task e's split of the benign rows
    train, bad = _contaminate(benign[pool], malignant, np.random.default_rng([seed, 21]))
    return Case("g", _f32(train), {"g": (_f32(benign[test]), _f32(bad))})


def _contaminate(normal: np.ndarray, anomalies: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(training rows: normal plus anomalies making CONTAMINATION of them, the anomalies left for testing); the
    anomalies trained on are a seeded pick."""
    n_bad = int(round(CONTAMINATION * len(normal) / (1 - CONTAMINATION)))
    order = rng.permutation(len(anomalies))
    return np.concatenate([normal, anomalies[order[:n_bad]]]), anomalies[order[n_bad:]]


def contaminated_digits_cases(classes: list[int], seed: int) -> list[Case]:
    """Task h: task a's pool and held-out rows for each class, and rows of that class making CONTAMINATION of the
    training pool; the class's other rows are the anomalies to find."""
    digits = load_digits()
    x, y, cases = (digits.data / 16.0).astype(np.float32), digits.target, []
    for c in classes:
        normal = x[y != c]
        pool, test = _split(len(normal), np.random.default_rng([seed, c]))  # task a's split of the normal rows
        train, bad = _contaminate(normal[pool], x[y == c], np.random.default_rng([seed, c, 21]))
        cases.append(Case(f"h{c}", _f32(train), {f"h/{c}": (_f32(normal[test]), _f32(bad))}))
    return cases


def build_cases(tasks: list[str], classes: list[int], seed: int) -> list[Case]:
    cases = []
    if "a" in tasks:
        digits = load_digits()
        cases += _holdout_cases("a", (digits.data / 16.0).astype(np.float32), digits.target, classes, seed)
    if "b" in tasks or "c" in tasks:
        cases.append(digits_case(seed, "b" in tasks, "c" in tasks))
    if "d" in tasks or "e" in tasks:
        cases.append(cancer_case(seed, "d" in tasks, "e" in tasks))
    if "f" in tasks:
        wine = load_wine()
        cases += _holdout_cases("f", wine.data, wine.target, [0, 1, 2], seed)
    if "g" in tasks:
        cases.append(contaminated_case(seed))
    if "h" in tasks:
        cases += contaminated_digits_cases(classes, seed)
    return cases


@dataclass
class Fit:
    score: Scorer  # anomaly score per row (higher: more anomalous)
    log_likelihood: Scorer | None = None  # raw-space log-likelihood per row, where the method has one
    gap: Callable[[np.ndarray], float] | None = None  # mean variational gap over rows (the product's methods)


def fit(method: str, case: Case, seed: int, work: Path) -> Fit:
    """Train one method on case.pool; return its anomaly scorer, its log-likelihood and its gap where it has them."""
    if method in PRODUCTS:
        from training import pipeline  # here: a broken product leaves the baselines running
        from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig

        path = work / f"{case.name}-{seed}.npy"
        np.save(path, _f32(case.pool))
        overrides = PRODUCTS[method]
        data = DataConfig(
            source=str(path),
            seed=seed,
            val_fraction=VAL_FRACTION,
            test_fraction=PRODUCT_TEST_FRACTION,
            **overrides.get("data", {}),
        )
        config = RunConfig(
            data=data,
            model=ModelConfig(**overrides.get("model", {})),
            train=TrainConfig(seed=seed, **overrides.get("train", {})),
            name=f"q-{case.name}-{seed}",
            repository=work / method,
        )
        result = pipeline.run(config)
        bundle, manifest = result.bundle_dir, result.manifest
        if manifest is not None and manifest.training.decorrelation:  # --decorrelate auto: which it kept, and why
            elbo = ", ".join(f"{k} {v:.2f}" for k, v in manifest.training.decorrelation.items())
            kept = "decorrelated" if manifest.preprocessing.decorrelate else "as they are"
            print(f"  {method} {case.name} seed {seed}: features {kept} (validation ELBO {elbo})", flush=True)
        return Fit(
            lambda x: product_scores(bundle, x),
            lambda x: product_log_likelihood(bundle, x, IWAE_K, seed),
            lambda x: product_gap(bundle, x, IWAE_K, seed),
        )
    if method.startswith("reference"):
        perm = np.random.default_rng([seed, 30]).permutation(len(case.pool))
        n_val = max(1, int(round(VAL_FRACTION * len(perm))))
        val, train = case.pool[np.sort(perm[:n_val])], case.pool[np.sort(perm[n_val:])]
        from training.config import ModelConfig  # the product's latent size: a like-for-like yardstick

        latent = ModelConfig(input_dim=1).latent_dim
        ref = fit_reference(train, val, dequantise=BIN if method == "reference-deq" else 0.0, latent=latent, seed=seed)
        return Fit(lambda x: ref.scores(x, SCORE_SAMPLES, seed), lambda x: ref.log_likelihood(x, IWAE_K, seed))
    base, standardise = method.removesuffix("-raw"), not method.endswith("-raw")
    if base == "gaussian":
        if not standardise:
            return Fit(fit_gaussian(case.pool, standardise))
        deq = dequantise(case.pool, np.random.default_rng([seed, 40]))  # used for bits/dim (digits) only
        return Fit(fit_gaussian(case.pool), lambda x: gaussian_log_density(deq, x))
    if base == "knn":
        return Fit(fit_knn(case.pool, standardise))
    if base == "iforest":
        return Fit(fit_iforest(case.pool, seed, standardise))
    if base == "gmm":
        return Fit(fit_gmm(case.pool, seed, standardise))
    if base == "autoencoder":
        return Fit(fit_autoencoder(case.pool, seed, standardise))
    raise ValueError(method)


def evaluate(method: str, case: Case, seed: int, work: Path, errors: list[dict[str, Any]]) -> dict[str, float]:
    """AUROC per test (and bits/dim for task c, the gap for the product's methods) of one method on one case; NaN,
    and an error logged, if it fails. The gap is taken on the case's clean held-out rows (digits: dequantised, the
    rows of task c)."""
    try:
        fitted = fit(method, case, seed, work)
        out = {row: auroc(fitted.score(normal), fitted.score(bad)) for row, (normal, bad) in case.tests.items()}
        if case.likelihood is not None and fitted.log_likelihood is not None:
            out["c"] = bits_per_dim(fitted.log_likelihood(case.likelihood), case.likelihood.shape[1])
        if fitted.gap is not None:
            held_out = case.likelihood if case.likelihood is not None else next(iter(case.tests.values()))[0]
            out[gap_key(case.name)] = fitted.gap(held_out)
        return out
    except Exception as exc:  # a failing method is reported, the others still run
        errors.append({"seed": seed, "case": case.name, "method": method, "error": repr(exc)})
        print(f"  ! {method} failed on {case.name}: {exc!r}", flush=True)
        return dict.fromkeys([*case.tests, *(["c"] if case.likelihood is not None else [])], np.nan)


def row_value(run: dict[str, dict[str, float]], row: str, method: str) -> float | None:
    """One seed's number for a table row: the metric itself, or the mean of its parts (a, b, d, f)."""
    keys = [k for k in run if k == row or k.startswith(row + "/")]
    values = [run[k].get(method, np.nan) for k in keys]
    if not keys or all(method not in run[k] for k in keys):
        return None
    return float(np.mean(values))


def summarise(runs: dict[int, dict[str, dict[str, float]]], methods: list[str]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for row in (*ROWS, *GAP_ROWS):
        for method in methods:
            values = [v for run in runs.values() if (v := row_value(run, row, method)) is not None]
            if values:
                a = np.array(values)
                with np.errstate(invalid="ignore"):  # inf - inf when a method is infinitely bad
                    stats = {"mean": a.mean(), "std": a.std(), "min": a.min(), "max": a.max(), "seeds": len(a)}
                summary.setdefault(row, {})[method] = {k: float(v) for k, v in stats.items()}
    return summary


def best_baselines(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per table row, the baseline (not the product, not the reference VAE) with the best mean over seeds: the
    highest AUROC, or for c the lowest bits/dim. Picked on the test rows, which flatters the baselines."""
    best = {}
    for row, cells in summary.items():
        if row in GAP_ROWS:
            continue
        others = {m: c for m, c in cells.items() if m.removesuffix("-raw") in BASELINES and np.isfinite(c["mean"])}
        if others:
            pick = min if row == "c" else max
            name = pick(others, key=lambda m: others[m]["mean"])
            best[row] = {"method": name, **others[name]}
    return best


def print_table(summary: dict[str, dict[str, Any]], methods: list[str]) -> None:
    methods = [m for m in methods if any(m in cells for cells in summary.values())]
    print(
        "\nAUROC (higher is better); c: bits/dim of dequantised held-out digits (lower is better); gap-*: IWAE_256 -"
        " ELBO_256 in nats on held-out rows (lower is better); mean ± std"
    )
    print(f"{'task':<10}" + "".join(f"{m:>17}" for m in methods))
    for row, cells in summary.items():
        line = "".join(
            f"{cells[m]['mean']:>10.3f} ± {cells[m]['std']:<4.3f}" if m in cells else f"{'-':>17}" for m in methods
        )
        print(f"{row:<10}{line}")
    print("\nbest baseline per task (picked on the test rows):")
    for row, b in best_baselines(summary).items():
        product = summary[row].get("product")
        shown = f"product {product['mean']:.3f} ± {product['std']:.3f}" if product else "product -"
        print(f"  {row:<9} {b['method']:<16} {b['mean']:.3f} ± {b['std']:.3f}   {shown}")


def write(out: Path, report: dict[str, Any], methods: list[str], complete: bool) -> dict[str, Any]:
    """Write the JSON report (also part-way, complete=False, so a stopped run keeps what it measured)."""
    summary = summarise(report["runs"], methods)
    out.parent.mkdir(parents=True, exist_ok=True)
    best = best_baselines(summary)
    out.write_text(
        json.dumps({**report, "complete": complete, "summary": summary, "best_baseline": best}, indent=2, default=float)
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    parser.add_argument("--tasks", nargs="+", choices=list("abcdefgh"), default=list("abcdefgh"))
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="tasks a, h: default 0-9 (--quick: 0 1 2)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=[m for m in METHODS if m == "product" or m not in PRODUCTS],
        help="default: every method but the product's variants (product-standard, -full, -iwae, ...)",
    )
    parser.add_argument("--quick", action="store_true", help="one seed, three classes in task a; same epochs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality.json"))
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    classes = args.classes or ([0, 1, 2] if args.quick else list(range(10)))
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="No data for colormapping")  # the product's latent plot, no labels
    runs: dict[int, dict[str, dict[str, float]]] = {}
    seconds, errors = dict.fromkeys(args.methods, 0.0), list[dict[str, Any]]()
    config = dict(seeds=seeds, tasks=args.tasks, classes=classes, quick=args.quick, iwae_k=IWAE_K, held_out=HELD_OUT)
    config.update(val_fraction=VAL_FRACTION, product_test_fraction=PRODUCT_TEST_FRACTION, contamination=CONTAMINATION)
    report = {
        "machine": machine_record(torch_threads=torch.get_num_threads()),
        "config": config,
        "runs": runs,
        "seconds": seconds,
        "errors": errors,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            run = runs.setdefault(seed, {})
            for case in build_cases(args.tasks, classes, seed):
                for method in args.methods:
                    if method == "reference-deq" and case.likelihood is None:
                        continue  # only digits are quantised
                    started = time.perf_counter()
                    result = evaluate(method, case, seed, Path(tmp), errors)
                    took = time.perf_counter() - started
                    seconds[method] += took
                    for row, value in result.items():
                        run.setdefault(row, {})[method] = value
                    shown = " ".join(f"{k}={v:.3f}" for k, v in result.items())
                    print(f"seed {seed} {case.name:<3} {method:<14}{took:7.1f}s  {shown}", flush=True)
                write(args.out, report, args.methods, complete=False)  # after every case
    summary = write(args.out, report, args.methods, complete=True)
    print_table(summary, args.methods)
    print("seconds, fit + scoring over all cases: " + ", ".join(f"{m} {s:.0f}" for m, s in seconds.items() if s))
    print(f"wrote {args.out}" + (f" ({len(errors)} failures, listed there)" if errors else ""))


if __name__ == "__main__":
    main()
