"""`vae-train` / `python -m training`: the only module that reads argv or draws a progress bar."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from contract import Manifest
from training.config import DataConfig, ModelConfig, TrainConfig
from training.errors import TrainingError

if TYPE_CHECKING:
    from training.loop import EpochMetrics

_M = ModelConfig(input_dim=1)
_T = TrainConfig()
_D = DataConfig(source="")


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _int_list(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(p) for p in _csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("hidden sizes must be positive")
    return sizes


def _image_shape(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected HxW such as 8x8, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _fraction(text: str) -> float:
    v = float(text)
    if not 0.0 < v < 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 0.5), got {text}")
    return v


def _test_fraction(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 0.5), got {text}")
    return v


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def _non_negative(text: str) -> float:
    v = float(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return v


def _positive(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-train",
        description="Fit a Gaussian VAE on a table of numbers, evaluate it and write an ONNX model bundle to "
        "<out>/<name>/<next version>/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="builtin:digits, or a .npy, .npz, .csv or .parquet file")
    g.add_argument("--name", help="model name [a-z0-9][a-z0-9_-]*; default: derived from --data")
    g.add_argument("--out", type=Path, default=Path("models"), help="model repository folder")
    g.add_argument("--key", help="array to read from a .npz file holding several")
    g.add_argument(
        "--columns",
        type=_csv_list,
        help="comma-separated feature columns of a .csv/.parquet file (default: every column but the label column)",
    )
    g.add_argument(
        "--label-column",
        help="a .csv/.parquet column the model never sees: it colours the latent plot, and when it holds 0/1 "
        "(1 = anomaly) AUROC, average precision and precision/recall at the threshold are reported",
    )
    g.add_argument("--val-fraction", type=_fraction, default=_D.val_fraction, help="rows held out for validation")
    g.add_argument(
        "--test-fraction",
        type=_test_fraction,
        default=_D.test_fraction,
        help="rows held out for testing (0: none; every row goes to training and validation)",
    )
    g.add_argument(
        "--no-lattice",
        dest="detect_lattice",
        action="store_false",
        help="treat every feature as continuous (no lattice detection, no dequantisation, no bin variance floors)",
    )
    g.add_argument(
        "--no-dequantize",
        dest="dequantize",
        action="store_false",
        help="train lattice features on their values as they are instead of uniformly dequantised in their bin",
    )
    g.add_argument(
        "--image-shape",
        type=_image_shape,
        help="HxW when rows are images, for sample/reconstruction grids (8x8 for builtin:digits)",
    )
    g = p.add_argument_group("model")
    g.add_argument("--latent-dim", type=_positive_int, default=_M.latent_dim, help="latent size d")
    g.add_argument(
        "--hidden",
        type=_int_list,
        default=_M.hidden,
        help="comma-separated hidden layer sizes of the encoder (the decoder mirrors them)",
    )
    g.add_argument(
        "--activation", choices=["relu", "gelu", "tanh", "silu"], default=_M.activation, help="hidden-layer activation"
    )
    g.add_argument(
        "--covariance",
        choices=["diagonal", "full"],
        default=_M.covariance,
        help="encoder covariance: diagonal (mean-field) or full (Cholesky factor)",
    )
    g.add_argument(
        "--decoder-var-floor",
        type=_positive,
        default=_M.decoder_var_floor,
        help="floor on the decoder variance relative to each feature's own variance (a lattice feature's floor is "
        "never below its bin's variance h^2/12)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=_T.epochs, help="maximum epochs")
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=_T.batch_size,
        help="rows per minibatch, global: under torchrun each rank takes batch-size / ranks",
    )
    g.add_argument("--lr", type=_positive, default=_T.learning_rate, help="Adam learning rate")
    g.add_argument("--weight-decay", type=_non_negative, default=_T.weight_decay, help="Adam weight decay")
    g.add_argument("--samples", type=_positive_int, default=_T.samples, help="K reparameterised samples per row")
    g.add_argument(
        "--objective",
        choices=["elbo", "iwae"],
        default=_T.objective,
        help="training objective: the ELBO (closed-form KL, averaged over the K samples) or the importance-weighted "
        "bound IWAE_K (K = --samples; tighter, so a better density for scoring)",
    )
    g.add_argument(
        "--warmup-epochs",
        type=int,
        default=_T.warmup_epochs,
        help="KL weight rises linearly from 0 to 1 over these epochs (0 = off)",
    )
    g.add_argument(
        "--free-bits",
        type=_non_negative,
        default=_T.free_bits,
        help="minimum KL per latent dimension in nats (0 = off)",
    )
    g.add_argument("--grad-clip", type=_non_negative, default=_T.grad_clip, help="max gradient norm (0 = off)")
    g.add_argument(
        "--patience",
        type=_positive_int,
        default=_T.patience,
        help="stop after this many epochs without a better validation ELBO",
    )
    g.add_argument("--seed", type=int, default=_T.seed, help="seed for the split, initial weights and noise")
    g.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    g = p.add_argument_group("evaluation and export")
    g.add_argument(
        "--eval-samples",
        type=_positive_int,
        default=_T.eval_samples,
        help="K of the IWAE_K log-likelihood bound in the final evaluation",
    )
    g.add_argument(
        "--score-samples",
        type=_positive_int,
        default=_T.score_samples,
        help="K of the -ELBO_K anomaly statistic whose validation quantiles go in the manifest",
    )
    g.add_argument(
        "--eval-rows",
        type=int,
        default=_T.eval_rows,
        help="rows of each of validation and test used by the final evaluation, the anomaly reference and the "
        "plots; a seeded sample when a split has more (0 = all)",
    )
    g.add_argument(
        "--threshold-quantile",
        type=float,
        default=_T.threshold_quantile,
        help="validation quantile of the anomaly score used as the default threshold",
    )
    g = p.add_argument_group("checkpoints")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        help="write a resumable checkpoint to <out>/<name>/checkpoint-latest.pt every N epochs (0 = off)",
    )
    g.add_argument(
        "--resume",
        type=Path,
        help="continue from a checkpoint-latest.pt, a bundle's checkpoint.pt or a bundle folder "
        "(weights, optimiser, epoch, warm-up and best-so-far); pass the same data and model options",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    return p


def default_name(source: str) -> str:
    stem = source.split(":", 1)[1] if source.startswith("builtin:") else Path(source).stem
    name = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")[:64]
    return name or "model"


def _fail(message: str, code: int = 2) -> int:
    print(f"vae-train: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not 0.0 < args.threshold_quantile < 1.0:
        return _fail("--threshold-quantile must lie in (0, 1)")
    if args.eval_rows < 0:
        return _fail("--eval-rows must be 0 (all) or a positive number of rows")
    if args.objective == "iwae" and args.free_bits > 0:
        return _fail("--free-bits applies to the ELBO objective; drop it or use --objective elbo")
    if args.checkpoint_every < 0:
        return _fail("--checkpoint-every must be 0 (off) or a positive number of epochs")
    data = DataConfig(
        source=args.data,
        key=args.key,
        columns=args.columns,
        label_column=args.label_column,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        detect_lattice=args.detect_lattice,
        dequantize=args.dequantize,
        seed=args.seed,
    )
    model_options = {
        "latent_dim": args.latent_dim,
        "hidden": args.hidden,
        "activation": args.activation,
        "covariance": args.covariance,
        "decoder_var_floor": args.decoder_var_floor,
    }
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        samples=args.samples,
        warmup_epochs=args.warmup_epochs,
        free_bits=args.free_bits,
        objective=args.objective,
        grad_clip=args.grad_clip,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        eval_samples=args.eval_samples,
        score_samples=args.score_samples,
        threshold_quantile=args.threshold_quantile,
        eval_rows=args.eval_rows,
    )
    recorded = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    name = args.name or default_name(args.data)
    from training.pipeline import train_and_export  # heavy imports after argument errors are reported

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 draws and prints
    bar = None if args.quiet or not main_rank else _ProgressBar(args.epochs)
    try:
        result = train_and_export(
            data,
            model_options,
            train,
            args.out,
            name,
            args.image_shape,
            recorded,
            on_epoch=bar.update_metrics if bar else None,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
        )
    except TrainingError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted; no bundle was written", code=130)
    finally:
        if bar is not None:
            bar.close()
        from training.distributed import shutdown

        shutdown()
    if result.world > 1:
        print(
            f"vae-train: rank {result.rank} of {result.world} stopped after epoch {result.fit.history[-1].epoch} "
            f"(best {result.fit.best_epoch})",
            file=sys.stderr,
        )
    if result.manifest is None:
        return 0
    if not args.quiet:
        print(summary_table(result.manifest, result.bundle_dir))
    return 0


class _ProgressBar:
    """A tqdm bar over epochs, with the epoch's train and validation metrics as its postfix."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="epoch", file=sys.stderr, dynamic_ncols=True)

    def update_metrics(self, m: EpochMetrics) -> None:
        self._bar.set_postfix_str(
            f"train elbo {m.train_elbo:.1f} rec {m.train_reconstruction:.1f} kl {m.train_kl:.1f} | "
            f"val elbo {m.val_elbo:.1f} rec {m.val_reconstruction:.1f} kl {m.val_kl:.1f} | beta {m.beta:.2f}",
            refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def summary_table(manifest: Manifest, bundle_dir: Path) -> str:
    splits = list(manifest.diagnostics)  # validation, and test unless --test-fraction 0
    diags = [manifest.diagnostics[s] for s in splits]
    rows = [("", *splits)]
    v = diags[0]
    for label, key in [
        ("ELBO", "elbo"),
        ("reconstruction", "reconstruction"),
        ("KL", "kl"),
        (f"IWAE_{v.iwae_samples} (log-lik)", "iwae"),
        ("gap (IWAE - ELBO)", "gap"),
        ("IWAE, dequantised", "dequantized_iwae"),
        ("bits/dim (discrete bound)", "bits_per_dim"),
        ("aggregate posterior KL", "aggregate_posterior_kl"),
        ("decoder variance (mean)", "decoder_variance_mean"),
        ("data variance (mean)", "data_variance_mean"),
    ]:
        rows.append((label, *(_number(getattr(d, key)) for d in diags)))
    rows.append(("active units", *(f"{d.active_units}/{manifest.latent_dim}" for d in diags)))
    if all(d.labelled is not None for d in diags):
        for label, key in [("AUROC", "auroc"), ("average precision", "average_precision")]:
            rows.append((label, *(_number(getattr(d.labelled, key)) for d in diags)))
        rows.append(
            (
                "precision / recall at threshold",
                *(
                    f"{_number(d.labelled.precision)} / {_number(d.labelled.recall)}"
                    for d in diags
                    if d.labelled is not None
                ),
            )
        )
    width = max(len(r[0]) for r in rows)
    lines = ["  ".join([f"{r[0]:<{width}}", *(f"{c:>12}" for c in r[1:])]) for r in rows]
    lines.append("(nats per row; IWAE and ELBO at the rows as sent, dequantised: lattice features spread in their bin)")
    p = manifest.preprocessing
    kinds = {k: p.kinds.count(k) for k in ("continuous", "lattice", "constant")}
    lines.append(
        f"features: {kinds['continuous']} continuous, {kinds['lattice']} on a lattice"
        f"{' (trained dequantised)' if p.dequantize and kinds['lattice'] else ''}, {kinds['constant']} constant"
        + (f" ({_names(manifest, [j for j, k in enumerate(p.kinds) if k == 'constant'])})" if kinds["constant"] else "")
        + (f"; {len(p.near_constant)} near-constant" if p.near_constant else "")
    )
    tr, ref = manifest.training, manifest.anomaly
    lines.append(
        f"epochs {tr.epochs_run} (best {tr.best_epoch}; {tr.stop_reason}), {tr.seconds:.1f}s; "
        f"anomaly threshold {ref.threshold:.4g} (q={ref.default_quantile}, {ref.rows} validation rows)"
    )
    lines.extend(f"warning: {w}" for w in ref.warnings)
    lines.append(f"bundle: {bundle_dir}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _names(manifest: Manifest, columns: list[int], at_most: int = 5) -> str:
    names = [manifest.feature_names[j] if manifest.feature_names else f"column {j}" for j in columns]
    return ", ".join(names[:at_most]) + (f", ... {len(names) - at_most} more" if len(names) > at_most else "")
