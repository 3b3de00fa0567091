"""Training quality and speed: `vae-train` defaults vs the plain reference VAE, same data, split, size and seed;
training rows/s with 1 and 2 torchrun processes (gloo on this machine's CPU cores); and, where torch sees a
CUDA device, one process on it against the one CPU process (same data, model, batch and 100 epochs).

Quality is the bits/dim of the held-out digits, dequantised inside their bins (IWAE_K; quality.py's function):
raw likelihood on quantised data rewards a density spike on the grid, so the raw test IWAE is only context.

    .venv/bin/python benchmarks/training.py [--seeds 0 1 2] [--speed-only] [--out benchmarks/results/training.json]

Prints a table and writes JSON (with machine, versions and git sha). Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_record  # noqa: E402
from quality import BIN, digits_bits_per_dim, product_log_likelihood  # noqa: E402
from reference_vae import ReferenceVAE, fit_reference, reference_epoch  # noqa: E402

from training import loop, pipeline, stages  # noqa: E402
from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from training.data import load_table, split_rows  # noqa: E402

QUALITY = ("test_bits_per_dim", "test_iwae_quantised", "test_elbo", "epochs", "seconds", "epochs_per_s")


def digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The product's default train, validation and test rows of builtin:digits for this seed."""
    x, d = load_table("builtin:digits").x, DataConfig(source="builtin:digits")
    split = split_rows(len(x), d.val_fraction, d.test_fraction, seed)
    return x[split.train], x[split.val], x[split.test]


def run_product(seed: int, repo: Path) -> dict[str, float]:
    data = DataConfig(source="builtin:digits", seed=seed)
    started = time.perf_counter()
    result = pipeline.run(RunConfig(data=data, train=TrainConfig(seed=seed), name=f"bench-{seed}", repository=repo))
    wall = time.perf_counter() - started
    m = result.manifest
    k, x_test = TrainConfig().eval_samples, digits_split(seed)[2]
    return {
        "test_bits_per_dim": digits_bits_per_dim(
            lambda x: product_log_likelihood(result.bundle_dir, x, k, seed), x_test, seed
        ),
        "test_iwae_quantised": m.diagnostics["test"].iwae,
        "val_iwae": m.diagnostics["validation"].iwae,
        "test_elbo": m.diagnostics["test"].elbo,
        "epochs": m.training.epochs_run,
        "best_epoch": m.training.best_epoch,
        "seconds": m.training.seconds,
        "epochs_per_s": m.training.epochs_run / m.training.seconds,
        "wall_seconds_with_eval_and_export": wall,
    }


def run_reference(seed: int) -> dict[str, float]:
    """The textbook reference, trained on dequantised digits, with the product's decoder variance floor, model size
    and optimiser settings (a plain VAE trained on the quantised values has no finite bits/dim: quality.py)."""
    t = TrainConfig()
    x_train, x_val, x_test = digits_split(seed)
    ref = fit_reference(
        x_train,
        x_val,
        dequantise=BIN,
        latent=ModelConfig(input_dim=1).latent_dim,
        var_floor=ModelConfig(input_dim=1).decoder_var_floor,
        epochs=t.epochs,
        patience=t.patience,
        batch=t.batch_size,
        lr=t.learning_rate,
        seed=seed,
    )
    k = t.eval_samples
    centre = BIN / 2  # the quantised rows at their bins' centres, where the product's diagnostics score them
    return {
        "test_bits_per_dim": digits_bits_per_dim(lambda x: ref.log_likelihood(x, k, seed), x_test, seed),
        "test_iwae_quantised": float(ref.log_likelihood(x_test + centre, k, seed).mean()),
        "test_elbo": float(ref.elbo(x_test + centre, 1, seed).mean()),
        "val_iwae": float(ref.log_likelihood(x_val + centre, k, seed).mean()),
        "epochs": ref.epochs,
        "best_epoch": ref.best_epoch,
        "seconds": ref.seconds,
        "epochs_per_s": ref.epochs / ref.seconds,
    }


def epoch_cost(epochs: int = 300, seed: int = 0) -> dict[str, float]:
    """Seconds per epoch of vae-train's loop (its optimiser, train_epoch and the validation pass) and of the reference
    loop, on the same standardised digits rows, interleaved epoch by epoch so both see the same machine: medians,
    and the median of the per-pair ratios (whole runs differ in epochs and drift with the machine's load)."""
    config = RunConfig(data=DataConfig(source="builtin:digits", seed=seed))
    data = stages.load(config)
    model_cfg = ModelConfig(input_dim=data.table.x.shape[1])
    model = stages.build_model(model_cfg, data.scaling.plain(), seed)  # one model's epochs, as timed before auto
    x_train = stages.standardized(model, data, data.split.train)
    x_val = stages.standardized(model, data, data.split.val)
    t = config.train
    optimizer, gen = loop.make_optimizer(model, t), torch.Generator().manual_seed(seed)
    ref = ReferenceVAE(x_train.shape[1], model_cfg.latent_dim, model_cfg.hidden[0], model_cfg.decoder_var_floor)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=t.learning_rate)
    noise = model.bin_width.clone()  # one bin in standardised units, as the product dequantises

    def product() -> None:
        loop.train_epoch(model, optimizer, x_train, t, 1.0, gen)
        loop.evaluate_elbo(model, x_val, 1, torch.Generator().manual_seed(seed + 1))

    def reference() -> None:
        reference_epoch(ref, ref_opt, x_train, x_val, noise, t.batch_size)

    seconds: dict[str, list[float]] = {"product": [], "reference": []}
    for i in range(epochs + 5):  # the first 5 warm up
        for name, epoch in (("product", product), ("reference", reference)):
            started = time.perf_counter()
            epoch()
            if i >= 5:
                seconds[name].append(time.perf_counter() - started)
    p, r = np.array(seconds["product"]), np.array(seconds["reference"])
    return {
        "epochs": epochs,
        "product_ms": float(np.median(p)) * 1e3,
        "reference_ms": float(np.median(r)) * 1e3,
        "ratio": float(np.median(p / r)),
    }


def run_processes(nproc: int, out: Path, device: str = "cpu") -> dict[str, float]:
    """vae-train on digits with nproc torchrun processes (gloo, 127.0.0.1) on device; rows/s of training alone."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [
        "-m",
        "training",
        "--data",
        "builtin:digits",
        "--name",
        f"p{nproc}-{device}",
        "--device",
        device,
        "--out",
        str(out),
        "--epochs",
        "100",
        "--patience",
        "1000",
        "--quiet",
        "--checkpoint-every",
        "0",
    ]
    launcher = (
        [
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
        ]
        if nproc > 1
        else []
    )
    subprocess.run([sys.executable, *launcher, *args], check=True, capture_output=True)
    manifest = json.loads((out / f"p{nproc}-{device}" / "1" / "manifest.json").read_text())
    rows = manifest["training"]["rows"]["train"] * manifest["training"]["epochs_run"]
    return {
        "train_rows_per_s": rows / manifest["training"]["seconds"],
        "val_elbo": manifest["diagnostics"]["validation"]["elbo"],
        "seconds": manifest["training"]["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--speed-only", action="store_true", help="skip the quality comparison (seeds)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training.json"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [] if args.speed_only else args.seeds:
            product = run_product(seed, Path(tmp))
            reference = run_reference(seed)
            rows.append({"seed": seed, "product": product, "reference": reference})
            print(
                f"seed {seed}: vae-train test bits/dim {product['test_bits_per_dim']:.3f} ({product['seconds']:.1f}s, "
                f"{product['epochs']} epochs) | reference {reference['test_bits_per_dim']:.3f} "
                f"({reference['seconds']:.1f}s, {reference['epochs']} epochs)",
                flush=True,
            )

    def mean(who: str, key: str) -> float:
        return sum(r[who][key] for r in rows) / len(rows)

    summary: dict[str, Any] = {}
    if rows:
        summary = {k: {"product": mean("product", k), "reference": mean("reference", k)} for k in QUALITY}
        summary["overhead_ratio_s_per_epoch"] = mean("reference", "epochs_per_s") / mean("product", "epochs_per_s")
        summary["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\n{'mean over seeds ' + str(args.seeds):<34}{'vae-train':>12}{'reference':>12}")
        for key in QUALITY:  # test_bits_per_dim (lower is better) is the quality bar; the raw IWAE is context
            print(f"{key:<34}{summary[key]['product']:>12.2f}{summary[key]['reference']:>12.2f}")
        print(f"{'trainer overhead (s/epoch ratio)':<34}{summary['overhead_ratio_s_per_epoch']:>12.2f}")
        print(f"{'peak RSS of this process (MiB)':<34}{summary['peak_rss_mib']:>12.0f}")
    cost = summary["epoch_cost"] = epoch_cost()
    print(
        f"{'per-epoch cost, interleaved':<34}{cost['product_ms']:>9.1f} ms{cost['reference_ms']:>9.1f} ms"
        f"  ratio {cost['ratio']:.2f} (median of {cost['epochs']} pairs)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        procs = {f"{n} cpu": run_processes(n, Path(tmp)) for n in (1, 2)}
        if torch.cuda.is_available():
            procs["1 cuda"] = run_processes(1, Path(tmp), "cuda")
    summary["processes"] = procs
    summary["scaling_2_over_1"] = procs["2 cpu"]["train_rows_per_s"] / procs["1 cpu"]["train_rows_per_s"]
    for key, p in procs.items():
        n, device = key.split()
        label = f"{n} process(es) on {device}, 100 epochs"
        print(f"{label:<34}{p['train_rows_per_s']:>12.0f} rows/s  val ELBO {p['val_elbo']:.1f}")
    print(f"{'scaling, 2 processes / 1':<34}{summary['scaling_2_over_1']:>12.2f}")
    if "1 cuda" in procs:
        summary["gpu"] = torch.cuda.get_device_name(0)
        summary["cuda_over_cpu"] = procs["1 cuda"]["train_rows_per_s"] / procs["1 cpu"]["train_rows_per_s"]
        print(f"{'1 GPU / 1 CPU process':<34}{summary['cuda_over_cpu']:>12.2f}  ({summary['gpu']})")
    else:
        print("no CUDA device here: the GPU row (one process, --device cuda, rows/s against the one-process CPU row)")
        print("was not measured; run this script where torch sees a GPU.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_record(), "runs": rows, "summary": summary}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
