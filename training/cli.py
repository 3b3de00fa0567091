"""`vae-train` / `python -m training`: the only module that reads argv or draws a progress bar."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract import Manifest
from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig, flag_of, options
from training.config import default_name as default_name  # re-exported: the CLI's name for a run
from training.errors import ConfigError, TrainingError
from vae_tables.help import DefaultsHelpFormatter

if TYPE_CHECKING:
    from training.loop import EpochMetrics
    from training.pipeline import RunResult


def _csv_list(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(","))
    if not all(parts):  # "a,,b" or "": a slip, not a request for every column or two layers
        raise argparse.ArgumentTypeError(f"expected comma-separated names or sizes, none empty, got {text!r}")
    return parts


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in _csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _image_shape(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected HxW such as 8x8, got {text!r}")
    return int(m.group(1)), int(m.group(2))


# How a value is written on the command line, by the field's type (a Literal becomes choices, a bool a switch).
PARSERS: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    str: str,
    Path: Path,
    tuple[int, ...]: _int_list,
    tuple[str, ...]: _csv_list,
    tuple[int, int]: _image_shape,
}
GROUPS = {DataConfig: "data", ModelConfig: "model", TrainConfig: "optimisation and evaluation", RunConfig: "run"}


def dest_of(f: dataclasses.Field[Any]) -> str:
    # argparse's own name for the flag (--lr -> lr, --out -> out), the field's for a switch (--no-lattice ->
    # detect_lattice): the keys of the arguments recorded in the manifest
    return f.name if isinstance(f.default, bool) else flag_of(f)[2:].replace("-", "_")


def _add_fields(p: argparse.ArgumentParser, config: type, title: str) -> None:
    """One option per config field (training/config.py holds the default, help, flag name and rule)."""
    g = p.add_argument_group(title)
    hints = typing.get_type_hints(config)
    for f in options(config):
        flag, kind, help_ = flag_of(f), _unoptional(hints[f.name]), f.metadata["help"]
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        if kind is bool:
            g.add_argument(flag, dest=dest_of(f), action="store_false" if default else "store_true", help=help_)
        elif typing.get_origin(kind) is typing.Literal:
            g.add_argument(flag, dest=dest_of(f), choices=typing.get_args(kind), default=default, help=help_)
        else:
            parse = PARSERS[kind]
            g.add_argument(flag, dest=dest_of(f), type=parse, default=default, required=required, help=help_)


def _unoptional(kind: Any) -> Any:
    # `str | None` -> str: None is the default, never typed on the command line
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(kind) and len(args) == 1 else kind


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-train",
        description="Fit a Gaussian VAE on a table of numbers, evaluate it and write an ONNX model bundle to "
        "<out>/<name>/<next version>/.",
        formatter_class=DefaultsHelpFormatter,
    )
    for config, title in GROUPS.items():
        _add_fields(p, config, title)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    return p


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run's configuration from parsed options; each config checks its rules (ConfigError names the flag)."""

    def values(config: type) -> dict[str, Any]:
        return {f.name: getattr(args, dest_of(f)) for f in options(config)}

    train = TrainConfig(**values(TrainConfig))
    data = DataConfig(**values(DataConfig), seed=train.seed)  # --seed seeds the split too
    recorded = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return RunConfig(data, ModelConfig(**values(ModelConfig)), train, **values(RunConfig), arguments=recorded)


def _fail(message: str, code: int = 2) -> int:
    print(f"vae-train: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun rank leaves without the interpreter's teardown: once in a while a library thread still alive
        # there (gloo's, pyarrow's) made the C++ runtime abort a rank that had finished ("terminate called without
        # an active exception", SIGABRT), and torchrun then failed the whole run. Everything is written and closed
        # by now; only the streams need flushing.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = run_config(args)
    except ConfigError as exc:
        return _fail(str(exc))
    from training.pipeline import run  # heavy imports after argument errors are reported

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 draws and prints
    bar = None if args.quiet or not main_rank else _ProgressBar(config.train)
    try:
        result = run(config, on_epoch=bar.update_metrics if bar else None, on_phase=bar.phase if bar else None)
    except TrainingError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted; no bundle was written", code=130)
    finally:
        if bar is not None:
            bar.close()
        from training.distributed import shutdown

        shutdown()
    _print_result(result, args.quiet)
    return 0


def _print_result(result: RunResult, quiet: bool) -> None:
    if result.world > 1:
        print(
            f"vae-train: rank {result.rank} of {result.world} stopped after epoch {result.fit.history[-1].epoch} "
            f"(best {result.fit.best_epoch})",
            file=sys.stderr,
        )
    if result.manifest is not None and not quiet:
        print(summary_table(result.manifest, result.bundle_dir))


class _ProgressBar:
    """The phases of a run as lines, and a tqdm bar over the epochs with the epoch's metrics and the early stopping
    patience left; when early stopping ends the run, the bar's total becomes the epochs run."""

    def __init__(self, train: TrainConfig) -> None:
        self._train = train
        self._bar: Any = None
        self._best, self._since_best = -math.inf, 0

    def phase(self, text: str) -> None:
        self.close()  # the epochs are over once a later phase starts
        print(f"vae-train: {text}", file=sys.stderr, flush=True)

    def update_metrics(self, m: EpochMetrics) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self._train.epochs, unit="epoch", file=sys.stderr, dynamic_ncols=True)
        if m.val_elbo > self._best + self._train.min_delta:  # the loop's own rule for "better"
            self._best, self._since_best = m.val_elbo, 0
        else:
            self._since_best += 1
        self._bar.set_postfix_str(
            f"train elbo {m.train_elbo:.1f} rec {m.train_reconstruction:.1f} kl {m.train_kl:.1f} | "
            f"val elbo {m.val_elbo:.1f} rec {m.val_reconstruction:.1f} kl {m.val_kl:.1f} | beta {m.beta:.2f} | "
            f"patience left {self._train.patience - self._since_best}",
            refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.total = self._bar.n  # stopped early: the bar ends full, at the epochs run
            self._bar.close()
            self._bar = None


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
    lines.append(
        "(nats per row; IWAE and ELBO at the rows as scored, lattice values at their bins' centres; dequantised: "
        "lattice features spread in their bin)"
    )
    p = manifest.preprocessing
    kinds = {k: p.kinds.count(k) for k in ("continuous", "lattice", "constant")}
    lines.append(
        f"features: {kinds['continuous']} continuous, {kinds['lattice']} on a lattice"
        f"{' (trained dequantised)' if p.dequantize and kinds['lattice'] else ''}, {kinds['constant']} constant"
        + (f" ({_names(manifest, [j for j, k in enumerate(p.kinds) if k == 'constant'])})" if kinds["constant"] else "")
        + (f"; {len(p.near_constant)} near-constant" if p.near_constant else "")
        + ("; modelled decorrelated" if p.decorrelate else "")
    )
    tr, ref = manifest.training, manifest.anomaly
    if "on" in tr.decorrelation:  # --decorrelate auto: both trained
        on, off = tr.decorrelation["on"], tr.decorrelation["off"]
        lines.append(
            f"--decorrelate auto kept the {'decorrelated' if p.decorrelate else 'plain'} model: best validation "
            f"ELBO {on:.2f} decorrelated, {off:.2f} plain"
        )
    elif tr.decorrelation:
        lines.append("--decorrelate auto kept the plain model: the decorrelated one's training failed")
    lines.append(
        f"epochs {tr.epochs_run} (best {tr.best_epoch}; {tr.stop_reason}), {tr.seconds:.1f}s; "
        f"anomaly threshold {ref.threshold:.4g} (q={ref.default_quantile}, {ref.rows} validation rows)"
    )
    lines.extend(f"warning: {w}" for w in ref.warnings)
    # worded at training and stored (training/diagnostic_warnings.py); validation is the split the model is judged on
    lines.extend(f"attention: {w.message}" for w in manifest.diagnostics["validation"].warnings)
    lines.append(f"bundle: {bundle_dir} (report: {bundle_dir / 'report'}, plots and metrics.json)")
    lines.append(f"serve it:  vae-serve --repository {bundle_dir.parent.parent}")
    lines.append(f"score a file:  vae-score {bundle_dir} rows.csv -o scores.csv")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _names(manifest: Manifest, columns: list[int], at_most: int = 5) -> str:
    names = [manifest.feature_names[j] if manifest.feature_names else f"column {j}" for j in columns]
    return ", ".join(names[:at_most]) + (f", ... {len(names) - at_most} more" if len(names) > at_most else "")
