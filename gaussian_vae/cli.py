"""`vae-score`: score (or encode) files with a bundle, offline, in chunks; no server, no torch.

    vae-score models/digits/3 data.csv -o scores.parquet --explain
    vae-score models/digits/3 s3://bucket/events/ -o s3://bucket/scores/ --workers 4
    vae-score models/digits/3 'data/*.parquet' -o scores/ --scheduler tcp://scheduler:8786

INPUT is a file, a folder or glob of partitions, or an object-store URI (s3://, gs://, abfs://; vae_tables/
locations.py). Each file is read in batches of --batch-rows rows (.csv/.tsv/.txt, each also .gz, .parquet or .npy)
and its answer written as one file (.csv/.tsv, optionally .gz, or .parquet): every input column that is not a
feature (ids, labels, timestamps, Hive partition values) is kept, the answer's columns beside it. Many partitions
are scored in parallel, one output partition per input partition under OUTPUT, each written whole, so a re-run
skips those already there. Scores are the bundle runtime's, the same numbers as the service's.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

from gaussian_vae.parallel import UNGUARDED, Outcome, named, run_dask, run_here, run_local, unguarded_mark
from gaussian_vae.partitions import Job, Tally, Task, beside, opened, score_file, target_for
from runtime import BundleError, DeviceUnavailable, LocalModel, OperationError, cpus
from vae_tables import DataError, suffix_of
from vae_tables.help import DefaultsHelpFormatter
from vae_tables.locations import (
    Dataset,
    exists,
    is_pattern,
    is_uri,
    local_path,
    open_dataset,
    pattern_root,
    publish,
)
from vae_tables.sources import format_of

OUTPUT_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-score",
        allow_abbrev=False,  # score_files(op="encode") ran --operation: a prefix is no option name
        description="Score (or encode) the rows of files with a trained bundle, offline and in chunks: one file, "
        "or many partitions in parallel (local processes or a Dask cluster), local or in an object store. Input "
        "columns that are not features are kept beside the results.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("bundle", type=lambda text: Path(local_path(text)), help="bundle folder, e.g. models/digits/3")
    p.add_argument(
        "input",
        type=local_path,
        help="rows to score: a .csv/.tsv/.txt (or .gz), .parquet or .npy file; a folder or glob of them "
        "(partitions, Hive-style key=value folders kept as columns); or an s3://, gs://, abfs:// URI of either",
    )
    p.add_argument(
        "-o",
        "--output",
        type=local_path,
        help="one file's result (.csv, .tsv, .csv.gz, .tsv.gz, .parquet; default <input name>.scores.csv next to it, "
        "or --format's suffix); for partitions, the folder or prefix their results go under, by the same relative "
        "names (default <input folder>.scores/ next to it; for a pattern, next to the folder it starts from)",
    )
    p.add_argument(
        "--format",
        choices=[s.lstrip(".") for s in OUTPUT_SUFFIXES],
        help="the format of the result: each partition's (default parquet), or one file's when -o is not given "
        "(default csv; with -o, its name's suffix decides)",
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
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="partitions: local processes scoring them side by side, one onnxruntime thread each; 0 = one per CPU "
        "this process may use",
    )
    p.add_argument(
        "--scheduler",
        help="partitions: score them on the Dask distributed cluster at this address (tcp://host:8786) instead; its "
        "workers need this package and read the inputs and write the outputs themselves",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="onnxruntime threads per process; 0 = every CPU for one process, 1 for each of several --workers",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime device")
    p.add_argument("--quiet", action="store_true", help="no progress, no summary")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # a file: URI of another host is refused here
        result = run(args)
    except (DataError, BundleError, OperationError, OSError, DeviceUnavailable) as exc:
        print(f"vae-score: {exc}", file=sys.stderr)
        return 2
    for source, why in result.failed:
        print(f"vae-score: {named(source, why)}", file=sys.stderr)
    if not args.quiet:
        print(result.summary)
    return 2 if result.failed else 0


@dataclass(frozen=True)
class Result:
    """What a vae-score run did (score_files' answer)."""

    output: str
    rows: int
    flagged: int
    dropped: int
    done: int  # partitions (or the one file) scored
    skipped: int  # partitions already there
    failed: list[tuple[str, str]]  # (partition, why)
    seconds: float
    summary: str  # what vae-score prints


def run(args: argparse.Namespace) -> Result:
    """One vae-score run from parsed arguments; DataError and the like on a setup problem (no partitions, a bad
    bundle), partitions that fail listed in the result."""
    started = time.perf_counter()
    if args.batch_rows < 1:
        raise DataError(f"--batch-rows must be at least 1, got {args.batch_rows}")
    if args.workers < 0 or args.threads < 0:
        raise DataError(f"--workers and --threads must be at least 0, got {args.workers} and {args.threads}")
    dataset = open_dataset(args.input)
    job = job_of(args)
    model = opened(job.bundle, job.device, job.intra_op_threads)  # verified here first: a bad bundle stops all
    where = output_of(args, dataset)
    if dataset.single_file:
        outcome, skipped = one_file(model, job, dataset, args), 0
    else:
        outcome, skipped = partitions(job, dataset, where, args)
    seconds = time.perf_counter() - started
    t = outcome.tally
    return Result(
        where,
        t.rows,
        t.flagged,
        t.dropped,
        outcome.done,
        skipped,
        [(task.source, why) for task, why in outcome.failed],
        seconds,
        summary(model, args, where, outcome, skipped, seconds),
    )


def score_files(bundle: str | Path, input: str, output: str | None = None, **options: Any) -> Result:
    """vae-score from Python: score (or encode) a file, or the partitions of a folder, glob or object-store URI,
    into `output`, exactly as the command does. options: the command's long options with underscores
    (operation="encode", explain=True, importance_samples=..., threshold_quantile=..., seed=..., delimiter=..., na=
    "drop", batch_rows=..., format="csv", workers=4, scheduler="tcp://...", threads=..., device="cpu"); no progress
    bar unless quiet=False. Raises DataError naming the partitions that could not be scored, after the others are,
    and for an invalid option or input; BundleError for a bundle that cannot be opened (as load() does), OSError for
    an output that cannot be written, DeviceUnavailable for device="cuda" without a usable GPU."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # a worker importing the caller's script
        with contextlib.suppress(OSError):
            unguarded_mark(os.getppid()).touch()  # for the caller, which then stops at once and says why
        raise DataError(f"score_files was called while a worker process started: {UNGUARDED}")
    argv = [str(bundle), str(input), *(["-o", str(output)] if output is not None else [])]
    options = {"quiet": True, **options}
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    parser = build_parser()
    parser.error = _refused  # type: ignore[method-assign]  # an exception for the caller, not the CLI's exit
    try:
        result = run(parser.parse_args(argv))
    except OperationError as exc:  # an option's value the operations refuse (importance_samples=0): as vae-score says
        raise DataError(f"score_files: {exc}") from exc
    if result.failed:
        which = "; ".join(named(source, why) for source, why in result.failed)
        raise DataError(f"{len(result.failed)} of {result.done + len(result.failed)} partitions failed: {which}")
    return result


def _refused(message: str) -> NoReturn:
    raise DataError(f"score_files: {message}")


def job_of(args: argparse.Namespace) -> Job:
    return Job(
        bundle=str(args.bundle),
        operation=args.operation,
        explain=args.explain,
        importance_samples=args.importance_samples,
        threshold_quantile=args.threshold_quantile,
        seed=args.seed,
        delimiter=args.delimiter,
        na=args.na,
        batch_rows=args.batch_rows,
        device=args.device,
        intra_op_threads=args.threads,
    )


def output_of(args: argparse.Namespace, dataset: Dataset) -> str:
    """-o, else the default next to the input (a URI input needs -o: there is no "next to" it to assume)."""
    if args.output:
        return str(args.output)
    if is_uri(dataset.uri):
        raise DataError(f"{dataset.uri}: give -o/--output for an object-store input")
    kind = "scores" if args.operation == "score" else "embeddings"
    if dataset.single_file:  # rows.csv -> rows.scores.csv; events.2026-01-01.csv.gz -> events.2026-01-01.scores.csv
        source = Path(dataset.uri)
        stem = source.name[: len(source.name) - len(suffix_of(source))]
        return str(source.with_name(f"{stem}.{kind}.{args.format or 'csv'}"))
    # beside the folder: the one named, or the one a pattern starts from (data/2026-*/x.csv: data; p*/a.csv: the
    # working folder), whose partitions' relative names the output repeats
    root = (pattern_root(dataset.uri) if is_pattern(dataset.uri) else Path(dataset.uri)).resolve()
    if root.parent == root:
        raise DataError(f"{dataset.uri}: give -o/--output (the answers would go beside {root}, which has no side)")
    return str(root.with_name(f"{root.name}.{kind}"))


def check_apart(source: str, output: str, targets: list[str]) -> None:
    """Refuse answers the input would take for its own: an output folder that is the input folder or lies inside it
    (every target its own source, found "already there" and nothing scored, or a re-run listing the answers among
    the partitions), or, for a pattern, a target the pattern matches or one under a folder it matches, which a listing
    takes whole (data/*.csv -o data/: data/a.csv; data/p* -o data/p1/out: data/p1)."""
    if is_uri(source) != is_uri(output):
        inside = False  # one in an object store, the other on this machine
    elif is_pattern(source):
        pattern = os.path.realpath(source)
        listed = [Path(os.path.realpath(t)) for t in targets]
        inside = any(globbed(str(p), pattern) for t in listed for p in (t, *t.parents))
    elif is_uri(source):
        inside = output.rstrip("/") == source.rstrip("/") or output.startswith(source.rstrip("/") + "/")
    else:
        inside = Path(output).resolve().is_relative_to(Path(source).resolve())
    if inside:
        raise DataError(f"-o {output} is inside the input {source}: write the answers to a folder outside it")


def globbed(path: str, pattern: str) -> bool:
    """Whether a listing of `pattern` takes `path`, segment by segment as glob.glob(recursive=True) matches: `*`, `?`
    and `[...]` within a segment (data/*.csv takes data/a.csv, not data/scores/a.csv), `**` any number of them."""

    def match(parts: tuple[str, ...], globs: tuple[str, ...]) -> bool:
        if not globs:
            return not parts
        if globs[0] == "**":
            return any(match(parts[i:], globs[1:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], globs[0]) and match(parts[1:], globs[1:])

    return match(PurePosixPath(path).parts, PurePosixPath(pattern).parts)


def one_file(model: LocalModel, job: Job, dataset: Dataset, args: argparse.Namespace) -> Outcome:
    """A single file in this process, with a progress bar over its rows."""
    output = output_of(args, dataset)
    suffix = suffix_of(Path(PurePosixPath(output).name))
    if suffix not in OUTPUT_SUFFIXES:
        raise DataError(f"{output}: write .csv, .tsv, .csv.gz, .tsv.gz or .parquet")
    if args.format is not None and suffix != f".{args.format}":
        raise DataError(f"-o {output} is {suffix}, --format {args.format}: give one of them, or both alike")
    if args.delimiter is not None and format_of(Path(PurePosixPath(dataset.uri).name)) != "text":
        raise DataError(f"{dataset.uri}: --delimiter applies to text tables (.csv, .tsv, .txt, each also .gz)")
    if output == dataset.uri or (not is_uri(output) and Path(output).resolve() == Path(dataset.uri).resolve()):
        raise DataError(f"{output}: -o names the input itself; write the answers elsewhere")
    if is_uri(dataset.uri) or is_uri(output):
        outcome = run_here(job, [Task(dataset.uri, output)], lambda task, tally: None)
        return outcome
    source, target = Path(dataset.uri), Path(output)
    if target.is_dir():  # found now, not when the answers are moved into place after the whole file is scored
        raise DataError(f"{output}: -o names a folder; give the answer file's name (.csv, .tsv, .parquet, ...)")
    target.parent.mkdir(parents=True, exist_ok=True)  # as a partitioned run makes its output folders
    part = beside(target)
    try:
        with _progress(args.quiet, "rows") as progress:
            tally = score_file(
                model, job, source, part, suffix=suffix_of(target), shown_as=str(source), progress=progress
            )
        replaced = target.exists()  # said in the summary: a mistyped -o costs an earlier answer file
        publish(part, output)
    finally:
        part.unlink(missing_ok=True)
    outcome = Outcome(replaced=replaced)
    outcome.tally.add(tally)
    outcome.done = 1
    return outcome


def partitions(job: Job, dataset: Dataset, output: str, args: argparse.Namespace) -> tuple[Outcome, int]:
    """Every partition not yet answered under `output`, side by side: (what happened, partitions skipped)."""
    suffix = "." + (args.format or "parquet")
    tasks = [Task(p.uri, target_for(output, p.relative, suffix), p.hive) for p in dataset.partitions]
    check_apart(dataset.uri, output, [t.target for t in tasks])
    sources: dict[str, list[str]] = {}
    for task in tasks:  # a.csv and a.parquet would both write a.parquet: one answer would silently replace the other
        sources.setdefault(task.target, []).append(task.source)
    shared = [names for names in sources.values() if len(names) > 1]
    if shared:
        raise DataError(f"partitions {shared[0]} would write one output ({len(shared)} such groups); rename one")
    todo = [t for t in tasks if not exists(t.target)]  # a re-run resumes: the results there are whole
    workers = min(args.workers or cpus.usable_cpus(), max(len(todo), 1))
    bar = _progress(args.quiet, "partitions", total=len(tasks), initial=len(tasks) - len(todo))
    with bar as progress:
        rows = 0

        def done(task: Task, tally: Tally) -> None:
            nonlocal rows
            rows += tally.rows
            bar.rows(rows)
            progress(1)

        if args.scheduler:
            outcome = run_dask(job, todo, args.scheduler, done)
        elif workers <= 1:
            outcome = run_here(job, todo, done)
        else:  # one onnxruntime thread per worker unless --threads says otherwise: the processes share the CPUs
            outcome = run_local(
                Job(**{**vars(job), "intra_op_threads": job.intra_op_threads or 1}), todo, workers, done
            )
    return outcome, len(tasks) - len(todo)


class _progress:  # noqa: N801 (a context manager used like a function)
    """Progress on stderr: tqdm when installed (the train extra has it), else nothing."""

    def __init__(self, quiet: bool, unit: str, total: int | None = None, initial: int = 0) -> None:
        self.bar: Any = None
        if not quiet and importlib.util.find_spec("tqdm") is not None:  # optional: no bar without it
            from tqdm import tqdm

            self.bar = tqdm(unit=" " + unit, total=total, initial=initial, file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> Any:
        return self.bar.update if self.bar is not None else (lambda n: None)

    def rows(self, n: int) -> None:
        """Rows done so far, beside a bar that counts partitions."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{n:,} rows", refresh=False)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(
    model: LocalModel, args: argparse.Namespace, output: str, outcome: Outcome, skipped: int, seconds: float
) -> str:
    m, tally = model.manifest, outcome.tally
    rate = f", {tally.rows / seconds:,.0f} rows/s" if seconds > 0 else ""
    lines = [
        f"{m.name} version {m.version}: {args.operation} of {tally.rows} rows of {args.input} -> {output} "
        f"in {seconds:.1f} s{rate}"
    ]
    if outcome.done != 1 or skipped or outcome.failed:
        lines.append(
            f"partitions: {outcome.done} done, {skipped} already there (skipped), {len(outcome.failed)} failed"
        )
    if args.operation == "score" and tally.rows:
        lines.append(f"flagged {tally.flagged} ({tally.flagged / tally.rows:.2%}) above the anomaly threshold")
    if tally.dropped:
        lines.append(f"left out {tally.dropped} rows with a missing feature value (--na drop)")
    if outcome.replaced:
        lines.append(f"replaced the file that was at {output}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
