"""`vae-score`: score (or encode) a file with a bundle, offline, in chunks; no server, no torch.

    vae-score models/digits/3 data.csv -o scores.parquet --explain

Reads .csv/.tsv/.txt (each also .gz), .parquet or .npy in batches of --batch-rows rows and writes .csv/.tsv
(optionally .gz) or .parquet: every input column that is not a feature (ids, labels, timestamps) is kept, and the
answer's columns are put beside it. Scores are the bundle runtime's, the same numbers as the service's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gaussian_vae.files import batches, feature_columns, writer_for
from runtime import BundleError, LocalModel, OperationError, open_bundle
from vae_tables import DataError, suffix_of

OUTPUT_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet")


@dataclass
class Tally:
    rows: int = 0
    flagged: int = 0
    dropped: int = 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-score",
        description="Score (or encode) the rows of a file with a trained bundle, offline and in chunks. Input "
        "columns that are not features are kept beside the results.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("bundle", type=Path, help="bundle folder, e.g. models/digits/3")
    p.add_argument("input", type=Path, help="rows to score: .csv/.tsv/.txt (or .gz), .parquet or .npy")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="result file (.csv, .tsv, .csv.gz, .parquet); default: "
        "<input name>.scores.csv (or .embeddings.csv) next to the input",
    )
    p.add_argument("--operation", choices=["score", "encode"], default="score", help="what to compute per row")
    p.add_argument("--explain", action="store_true", help="score: add nll_<feature> columns, what made a row unlikely")
    p.add_argument("--importance-samples", type=int, help="score: K (default: the bundle's reference K)")
    p.add_argument("--threshold-quantile", type=float, help="score: flag above the threshold at this quantile")
    p.add_argument("--seed", type=int, help="seed of the noise (default: the bundle's, as the service uses)")
    p.add_argument("--delimiter", help="field separator of a text input (default: tab for .tsv, else comma)")
    p.add_argument(
        "--na",
        choices=["stop", "drop"],
        default="stop",
        help="a row with a missing feature value: stop with an error, or leave it out (counted in the summary)",
    )
    p.add_argument("--batch-rows", type=int, default=65536, help="rows read, scored and written at a time")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime device")
    p.add_argument("--quiet", action="store_true", help="no progress, no summary")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = args.output or args.input.with_name(
        f"{args.input.name.split('.')[0]}.{'scores' if args.operation == 'score' else 'embeddings'}.csv"
    )
    try:
        if suffix_of(output) not in OUTPUT_SUFFIXES:
            raise DataError(f"{output}: write .csv, .tsv, .csv.gz, .tsv.gz or .parquet")
        if args.batch_rows < 1:
            raise DataError(f"--batch-rows must be at least 1, got {args.batch_rows}")
        model = open_bundle(args.bundle, args.device)
        tally = run(model, args, output)
    except (DataError, BundleError, OperationError, OSError) as exc:
        print(f"vae-score: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(summary(model, args, output, tally))
    return 0


def run(model: LocalModel, args: argparse.Namespace, output: Path) -> Tally:
    """Read, compute and write batch by batch into <output>.part, renamed to <output> only when all went well."""
    tally, m = Tally(), model.manifest
    part = output.with_name(output.name + ".part")
    try:
        with writer_for(part, suffix_of(output)) as write, _progress(args.quiet) as progress:
            for batch in batches(
                args.input, features=m.feature_names, delimiter=args.delimiter, batch_rows=args.batch_rows
            ):
                first_row = tally.rows + tally.dropped
                cols = feature_columns(
                    batch, m.feature_names, m.input_dim, na=args.na, source=str(args.input), first_row=first_row
                )
                tally.dropped += cols.dropped
                if len(cols.x):
                    results = _compute(model, args, cols.x)
                    tally.flagged += int(np.sum(results.get("is_anomaly", 0)))
                    write(cols.kept_columns, results)
                tally.rows += len(cols.x)
                progress(len(cols.x) + cols.dropped)
        os.replace(part, output)
    finally:
        part.unlink(missing_ok=True)
    return tally


def _compute(model: LocalModel, args: argparse.Namespace, x: np.ndarray) -> dict[str, np.ndarray]:
    names = model.manifest.feature_names or [f"feature_{j}" for j in range(model.manifest.input_dim)]
    if args.operation == "encode":
        out = model.encode(x, seed=args.seed)
        return {f"z_mean_{j}": out["mean"][:, j] for j in range(model.manifest.latent_dim)}
    out = model.score(
        x,
        importance_samples=args.importance_samples,
        seed=args.seed,
        explain=args.explain,
        threshold_quantile=args.threshold_quantile,
    )
    results = {k: np.asarray(out[k]) for k in ("anomaly_score", "log_likelihood", "elbo", "percentile", "p_value")}
    results["is_anomaly"] = np.asarray(out["is_anomaly"])
    if args.explain:
        results |= {f"nll_{name}": out["feature_nll"][:, j] for j, name in enumerate(names)}
    return results


class _progress:  # noqa: N801 (a context manager used like a function)
    """Rows done on stderr: tqdm when installed (the train extra has it), else nothing."""

    def __init__(self, quiet: bool) -> None:
        self.bar: Any = None
        if not quiet and importlib.util.find_spec("tqdm") is not None:  # optional: no bar without it
            from tqdm import tqdm

            self.bar = tqdm(unit=" rows", file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> Any:
        return self.bar.update if self.bar is not None else (lambda n: None)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(model: LocalModel, args: argparse.Namespace, output: Path, tally: Tally) -> str:
    m = model.manifest
    lines = [f"{m.name} version {m.version}: {args.operation} of {tally.rows} rows of {args.input} -> {output}"]
    if args.operation == "score" and tally.rows:
        lines.append(f"flagged {tally.flagged} ({tally.flagged / tally.rows:.2%}) above the anomaly threshold")
    if tally.dropped:
        lines.append(f"left out {tally.dropped} rows with a missing feature value (--na drop)")
    return "\n".join(lines)
