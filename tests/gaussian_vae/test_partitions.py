"""`vae-score` on partitioned data: a local folder, an S3-compatible store (moto's server on 127.0.0.1), local worker
processes and a Dask cluster (two worker processes), each giving the numbers single-process scoring gives; resuming,
bad partitions, a worker killed mid-run; and `score_frame`, the one partition function every engine calls."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from gaussian_vae import load, score_frame
from gaussian_vae.cli import main
from gaussian_vae.partitions import beside
from vae_tables import DataError

ROWS = 300  # per partition


@pytest.fixture(scope="module")
def bundle(serving_repository: Path) -> Path:
    return serving_repository / "digits-diag" / "1"


def partition(bundle: Path, day: int, rows: int = ROWS) -> pa.Table:
    names = list(load(bundle, "cpu").feature_names_in_)
    x = np.random.default_rng(day).integers(0, 17, (rows, len(names))) / 16
    return pa.table({"event_id": [f"d{day}-{i:05d}" for i in range(rows)], **{n: x[:, j] for j, n in enumerate(names)}})


def expected_scores(bundle: Path, tables: list[pa.Table]) -> dict[str, float]:
    """event_id -> score, every row scored in one call in this process."""
    whole = pa.concat_tables(tables)
    names = list(load(bundle, "cpu").feature_names_in_)
    x = np.column_stack([whole.column(n).to_numpy() for n in names])
    scores = load(bundle, "cpu").local_.score(x)["anomaly_score"]
    return dict(zip(whole.column("event_id").to_pylist(), np.asarray(scores, dtype=float), strict=True))


def results_of(root: Path) -> pa.Table:
    files = sorted(p for p in root.rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def hive_folder(tmp: Path, bundle: Path, days: int = 4) -> tuple[Path, list[pa.Table]]:
    root, tables = tmp / "events", []
    for day in range(days):
        table = partition(bundle, day)
        tables.append(table)
        folder = root / f"date=2026-12-0{day + 1}"
        folder.mkdir(parents=True)
        if day % 2:
            pa_csv.write_csv(table, folder / "part-0.csv")
        else:
            pq.write_table(table, folder / "part-0.parquet")
    (root / "_SUCCESS").write_text("")  # what Spark leaves: not a partition
    return root, tables


def test_a_partitioned_folder_scored_by_two_workers_gives_single_process_numbers_and_resumes(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, tables = hive_folder(tmp_path, bundle)
    out = tmp_path / "scores"
    assert main([str(bundle), str(root), "-o", str(out), "--workers", "2", "--device", "cpu"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet")) == [
        f"date=2026-12-0{d}/part-0.parquet" for d in range(1, 5)
    ]
    got = results_of(out)
    assert got.num_rows == 4 * ROWS and len(set(got.column("event_id").to_pylist())) == 4 * ROWS
    expected = expected_scores(bundle, tables)
    ours = dict(zip(got.column("event_id").to_pylist(), got.column("anomaly_score").to_pylist(), strict=True))
    assert np.allclose([ours[k] for k in expected], list(expected.values()), rtol=1e-6)
    assert set(got.column("date").to_pylist()) == {f"2026-12-0{d}" for d in range(1, 5)}  # Hive values kept
    summary = capsys.readouterr().out
    assert f"of {4 * ROWS} rows" in summary and "rows/s" in summary and "4 done, 0 already there" in summary

    (out / "date=2026-12-02" / "part-0.parquet").unlink()  # as if that one never finished
    assert main([str(bundle), str(root), "-o", str(out), "--workers", "2", "--device", "cpu"]) == 0
    assert "1 done, 3 already there (skipped)" in capsys.readouterr().out
    assert results_of(out).num_rows == 4 * ROWS


def test_a_corrupt_or_different_partition_is_named_and_the_others_are_scored(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = hive_folder(tmp_path, bundle)
    (root / "date=2026-12-01" / "part-0.parquet").write_bytes(b"not parquet at all")
    pq.write_table(partition(bundle, 9).drop_columns(["pixel_0_3"]), root / "date=2026-12-03" / "part-0.parquet")
    out = tmp_path / "scores"
    assert main([str(bundle), str(root), "-o", str(out), "--device", "cpu", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "date=2026-12-01/part-0.parquet" in err and "cannot read as .parquet" in err
    assert "date=2026-12-03/part-0.parquet" in err and "pixel_0_3" in err
    assert err.count("date=2026-12-03/part-0.parquet") == 1  # named once, not by vae-score and again by its reason
    assert sorted(p.parent.name for p in out.rglob("*.parquet")) == ["date=2026-12-02", "date=2026-12-04"]
    assert not list(out.rglob("*.part"))  # nothing half written is left


def test_a_partition_that_cannot_be_read_or_written_is_named_and_the_others_are_scored(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a column CSV cannot hold, and a .npy cut to nothing: each that partition's failure, in one line, never the run's
    root = tmp_path / "mixed"
    root.mkdir()
    tagged = partition(bundle, 1)
    pq.write_table(tagged.append_column("tags", pa.array([[1, 2]] * tagged.num_rows)), root / "a.parquet")
    pq.write_table(partition(bundle, 2), root / "b.parquet")
    (root / "c.npy").write_bytes(b"")
    out = tmp_path / "scores"
    assert main([str(bundle), str(root), "-o", str(out), "--format", "csv", "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "a.parquet: ArrowInvalid" in err and "write .parquet" in err and "Traceback" not in err
    assert "c.npy: cannot read as .npy" in err
    assert sorted(p.name for p in out.iterdir()) == ["b.csv"]


def test_an_empty_partition_gets_an_answer_of_no_rows_with_the_columns_of_the_others(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Spark writes a partition a filter emptied as a file of no rows: it is scored, not a failure of the run
    root, _ = hive_folder(tmp_path, bundle)
    empty = partition(bundle, 7).slice(0, 0)
    pq.write_table(empty, root / "date=2026-12-01" / "part-1.parquet")
    pa_csv.write_csv(empty, root / "date=2026-12-02" / "part-1.csv")  # a header and no rows
    names = list(load(bundle, "cpu").feature_names_in_)
    (root / "date=2026-12-05").mkdir()
    header = ",".join(["event_id", *names])
    (root / "date=2026-12-05" / "part-0.csv").write_text(f"{header}\nd5-1,{',' * (len(names) - 1)}\n")  # all NA
    np.save(root / "date=2026-12-03" / "part-1.npy", np.zeros((0, len(names))))
    out = tmp_path / "scores"
    assert main([str(bundle), str(root), "-o", str(out), "--workers", "1", "--na", "drop", "--quiet"]) == 0
    answers = {p.relative_to(out).as_posix(): pq.read_table(p) for p in out.rglob("*.parquet")}
    assert len(answers) == 8
    full, full_csv = answers["date=2026-12-01/part-0.parquet"], answers["date=2026-12-02/part-0.parquet"]
    assert full.num_rows == ROWS and "input_row" in full.column_names
    # each empty answer: the columns and types of a full one from the same format (text columns are read as text)
    for name, like in (("12-01/part-1", full), ("12-02/part-1", full_csv), ("12-05/part-0", full_csv)):
        assert answers[f"date=2026-{name}.parquet"].num_rows == 0, name
        assert answers[f"date=2026-{name}.parquet"].schema == like.schema, name
    from_npy = answers["date=2026-12-03/part-1.parquet"]  # an array carries no other columns
    assert from_npy.num_rows == 0 and from_npy.schema == full.select(full.column_names[1:]).schema
    encoded = tmp_path / "encoded"
    assert main([str(bundle), str(root), "-o", str(encoded), "--operation", "encode", "--na", "drop", "--quiet"]) == 0
    empty, whole = (pq.read_table(encoded / f"date=2026-12-01/part-{i}.parquet") for i in (1, 0))
    assert empty.num_rows == 0 and whole.num_rows == ROWS and empty.schema == whole.schema
    (tmp_path / "header.csv").write_text(f"{header}\n")  # one file: its answer has the header and no rows
    assert main([str(bundle), str(tmp_path / "header.csv"), "-o", str(tmp_path / "header.out.csv"), "--quiet"]) == 0
    assert (tmp_path / "header.out.csv").read_text().splitlines()[0].startswith('"event_id","anomaly_score"')
    (tmp_path / "other.csv").write_text("a,b\n")  # no rows, and not the model's columns: still refused
    assert main([str(bundle), str(tmp_path / "other.csv"), "-o", str(tmp_path / "other.out.csv"), "--quiet"]) == 2
    assert "the model's features" in capsys.readouterr().err


def test_a_model_without_feature_names_says_how_many_columns_it_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main as train

    x = np.random.default_rng(0).standard_normal((80, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    small = ["--hidden", "8", "--latent-dim", "2", "--epochs", "2", "--refine-steps", "0", "--decorrelate", "off"]
    small += ["--quiet"]
    assert train(["--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "m"), "--name", "n", *small]) == 0
    pq.write_table(pa.table({"id": np.arange(5), **{f"f{j}": x[:5, j] for j in range(3)}}), tmp_path / "in.parquet")
    assert main([str(tmp_path / "m" / "n" / "1"), str(tmp_path / "in.parquet"), "--quiet"]) == 2
    assert "in.parquet: the model's 3 features have no names, " in capsys.readouterr().err


def ten_partitions(tmp: Path, bundle: Path) -> tuple[Path, list[pa.Table]]:
    """Ten Parquet partitions of 3,000 rows: enough work that a worker can be killed while some remain."""
    root, tables = tmp / "events", []
    root.mkdir()
    for day in range(10):
        tables.append(partition(bundle, day, rows=3000))
        pq.write_table(tables[-1], root / f"part-{day:02d}.parquet")
    return root, tables


def test_a_worker_killed_mid_run_costs_only_its_partitions(tmp_path: Path, bundle: Path) -> None:
    root, tables = ten_partitions(tmp_path, bundle)
    out = tmp_path / "scores"
    cmd = [sys.executable, "-m", "gaussian_vae.cli", str(bundle), str(root), "-o", str(out), "--workers", "2"]
    proc = subprocess.Popen([*cmd, "--device", "cpu", "--batch-rows", "500", "--quiet"], stderr=subprocess.PIPE)
    deadline, killed = time.monotonic() + 120, None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        workers = _spawned_workers(proc.pid)
        if workers and list(out.glob("*.parquet")):  # mid-run: one partition out, the rest to come
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=240)
    assert killed is not None, "the run ended before a worker could be killed"
    assert proc.returncode == 0, err.decode()
    got = results_of(out)
    ids = got.column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == 10 * 3000  # nothing lost, nothing twice
    expected = expected_scores(bundle, tables)
    ours = dict(zip(ids, got.column("anomaly_score").to_pylist(), strict=True))
    assert np.allclose([ours[k] for k in expected], list(expected.values()), rtol=1e-6)


# Imported first by every Python process started with it on PYTHONPATH: scoring the partition named "poison" ends the
# process at once, as a segfault or the OOM killer would (with --workers 2 only the worker processes score).
POISON_HOOK = """
import os
import gaussian_vae.parallel as parallel
real = parallel.score_partition
def score_partition(job, task):
    if "poison" in task.source:
        os._exit(137)
    return real(job, task)
parallel.score_partition = score_partition
"""


def test_a_partition_that_kills_its_worker_fails_alone_and_the_others_are_scored(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "events"
    root.mkdir()
    tables = [partition(bundle, day, rows=50) for day in range(6)]
    for day, table in enumerate(tables):
        # the poison first: its worker dies while the other worker still opens the bundle for its partition
        pq.write_table(table, root / ("0-poison.parquet" if day == 1 else f"part-{day:02d}.parquet"))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(POISON_HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), *sys.path])}
    out = tmp_path / "scores"
    main = "from gaussian_vae.cli import main; raise SystemExit(main())"
    cmd = [sys.executable, "-c", main, str(bundle), str(root), "-o", str(out), "--workers", "2"]
    done = subprocess.run([*cmd, "--device", "cpu", "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "0-poison.parquet: its worker died 3 times" in done.stderr, done.stderr
    assert done.stderr.count("died") == 1, done.stderr  # only the partition that kills its worker
    assert sorted(p.name for p in out.glob("*.parquet")) == [f"part-{d:02d}.parquet" for d in (0, 2, 3, 4, 5)]


def _spawned_workers(parent: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return [
        int(pid)
        for pid in children
        if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    ]


def test_an_upload_cut_short_leaves_no_object_for_a_re_run_to_skip(
    s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # closing an S3 stream completes its upload: a copy stopped halfway must not publish a truncated answer
    import vae_tables.locations as locations

    fs = pafs.S3FileSystem(endpoint_override=s3["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    fs.create_dir("cut")
    local = tmp_path / "a.parquet"
    local.write_bytes(bytes(3 << 20))

    def half(source: Any, sink: Any, length: int = 0) -> None:
        sink.write(source.read(1 << 20))
        raise RuntimeError("cancelled")  # a Dask cancel, a worker's signal: anything that stops the copy

    monkeypatch.setattr(locations.shutil, "copyfileobj", half)
    with pytest.raises(RuntimeError):
        locations.publish(local, "s3://cut/out/a.parquet")
    listed = fs.get_file_info(pafs.FileSelector("cut", recursive=True))
    assert [i.path for i in listed if i.type == pafs.FileType.File] == []  # neither the answer nor its hidden upload
    monkeypatch.undo()
    locations.publish(local, "s3://cut/out/a.parquet")
    assert fs.get_file_info("cut/out/a.parquet").size == 3 << 20


def test_partitions_in_an_s3_compatible_store_are_scored_back_into_it(
    s3: dict[str, str], bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fs = pafs.S3FileSystem(endpoint_override=s3["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    fs.create_dir("lake")
    tables = []
    for day in range(3):
        tables.append(partition(bundle, day))
        pq.write_table(tables[-1], f"lake/events/date=2026-12-0{day + 1}/part-0.parquet", filesystem=fs)
    args = [str(bundle), "s3://lake/events/", "-o", "s3://lake/scores/", "--device", "cpu"]
    assert main([*args, "--workers", "2"]) == 0
    listed = fs.get_file_info(pafs.FileSelector("lake/scores", recursive=True))
    outputs = sorted(i.path for i in listed if i.type == pafs.FileType.File)
    assert outputs == [f"lake/scores/date=2026-12-0{d}/part-0.parquet" for d in range(1, 4)]
    got = pa.concat_tables([pq.read_table(p, filesystem=fs) for p in outputs])
    expected = expected_scores(bundle, tables)
    ours = dict(zip(got.column("event_id").to_pylist(), got.column("anomaly_score").to_pylist(), strict=True))
    assert np.allclose([ours[k] for k in expected], list(expected.values()), rtol=1e-6)
    assert "3 done" in capsys.readouterr().out

    assert main([str(bundle), "s3://no-such-lake/events/", "-o", "s3://lake/x/", "--device", "cpu"]) == 2
    assert "s3://no-such-lake/events/" in (err := capsys.readouterr().err) and "no such bucket" in err.lower()
    assert main([str(bundle), "s3://lake/nothing-here/", "-o", "s3://lake/x/", "--device", "cpu"]) == 2
    assert "s3://lake/nothing-here/: no such file, folder or prefix" in capsys.readouterr().err
    pq.write_table(tables[0], "lake/run*/part-0.parquet", filesystem=fs)  # a URI's * is its key's, never a glob
    pq.write_table(tables[1], "lake/run-2/part-0.parquet", filesystem=fs)
    assert main([str(bundle), "s3://lake/run*/", "-o", "s3://lake/star/", "--device", "cpu", "--quiet"]) == 0
    scored = [i.path for i in fs.get_file_info(pafs.FileSelector("lake/star", recursive=True))]
    assert scored == ["lake/star/part-0.parquet"]
    assert (
        pq.read_table(scored[0], filesystem=fs).column("event_id").to_pylist()
        == tables[0].column("event_id").to_pylist()
    )
    names = list(load(bundle, "cpu").feature_names_in_)
    with fs.open_output_stream("lake/latin/part-0.csv") as f:  # not UTF-8: a reader's error names the file it read
        f.write((",".join([*names, "note"]) + "\n" + ",".join(["0"] * len(names)) + ",caf\xe9\n").encode("latin-1"))
    assert main([str(bundle), "s3://lake/latin/", "-o", "s3://lake/x/", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "vae-score: s3://lake/latin/part-0.csv: cannot read" in err and "vae-part" not in err  # no local copy


def test_a_dask_cluster_scores_the_partitions_and_runs_score_frame(tmp_path: Path, bundle: Path) -> None:
    import dask.dataframe as dd
    from distributed import LocalCluster

    root, tables = hive_folder(tmp_path, bundle)
    out = tmp_path / "scores"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert main([str(bundle), str(root), "-o", str(out), "--scheduler", address, "--device", "cpu"]) == 0
        frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
        from distributed import Client

        with Client(address):
            scored = dd.from_pandas(frame, npartitions=4).map_partitions(score_frame, str(bundle)).compute()
        (root / "date=2026-12-05").mkdir()
        (root / "date=2026-12-05" / "part-0.parquet").write_bytes(b"not parquet at all")
        again = [str(bundle), str(root), "-o", str(tmp_path / "again"), "--scheduler", address, "--device", "cpu"]
        assert main([*again, "--quiet"]) == 2
        with Client(address) as client:  # the corrupt partition was tried once: its failure would only repeat
            log = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.transition_log))
        erred = {e[0] for e in log if e[2] == "erred" and str(e[0]).startswith("vae-score-")}
        assert len(erred) == 1 and sum(1 for e in log if e[0] in erred and e[2] == "processing") == 1
    expected = expected_scores(bundle, tables)
    got = results_of(out)
    ours = dict(zip(got.column("event_id").to_pylist(), got.column("anomaly_score").to_pylist(), strict=True))
    assert np.allclose([ours[k] for k in expected], list(expected.values()), rtol=1e-6)
    by_frame = dict(zip(scored["event_id"], scored["anomaly_score"], strict=True))
    assert np.allclose([by_frame[k] for k in expected], list(expected.values()), rtol=1e-6)


def test_score_frame_keeps_every_column_of_a_pandas_or_arrow_batch(bundle: Path) -> None:
    table = partition(bundle, 5, rows=20)
    arrow = score_frame(table, bundle)
    assert isinstance(arrow, pa.Table) and arrow.column_names[: table.num_columns] == table.column_names
    assert "is_anomaly" in arrow.column_names and arrow.num_rows == 20
    frame = table.to_pandas()
    frame.loc[3, "pixel_0_3"] = np.nan
    dropped = score_frame(frame, bundle, na="drop", operation="encode")
    assert isinstance(dropped, pd.DataFrame) and len(dropped) == 19 and "d5-00003" not in set(dropped["event_id"])
    assert [c for c in dropped.columns if c.startswith("z_mean_")]


@pytest.mark.parametrize("options", [{}, {"explain": True}, {"operation": "encode"}])
def test_score_frame_gives_a_batch_with_no_rows_the_columns_and_types_of_one_with_rows(
    bundle: Path, options: dict[str, Any]
) -> None:
    # a schema declared for Spark or Ray, or a concatenation of batches, holds for a batch that is empty or whose
    # every row was dropped for a missing value
    frame = partition(bundle, 8, rows=4).to_pandas()
    scored = score_frame(frame, bundle, **options)
    empty = score_frame(frame.iloc[:0], bundle, **options)
    assert len(empty) == 0 and dict(empty.dtypes) == dict(scored.dtypes)
    gone = frame.assign(pixel_0_3=np.nan)
    assert dict(score_frame(gone, bundle, na="drop", **options).dtypes) == dict(scored.dtypes)
    table = partition(bundle, 8, rows=4)
    arrow = score_frame(table.slice(0, 0), bundle, **options)
    assert arrow.num_rows == 0 and arrow.schema == score_frame(table, bundle, **options).schema
    assert pd.concat([scored, empty]).dtypes.equals(scored.dtypes)


def test_score_frame_refuses_an_unknown_option_and_leaves_the_other_columns_unconverted(bundle: Path) -> None:
    frame = partition(bundle, 7, rows=6).to_pandas()
    for options, message in [
        ({"operation": "Encode"}, "operation must be 'score' or 'encode', not 'Encode'"),
        ({"na": "skip"}, "--na must be 'stop' or 'drop', not 'skip'"),
        ({"batch_rows": 10}, "score_frame takes no option ['batch_rows']"),
        # values of the options it takes: a DataError too, as the README says, never accepted as something else
        ({"device": "gpu"}, "device must be 'auto', 'cpu' or 'cuda', not 'gpu'"),
        ({"intra_op_threads": -1}, "intra_op_threads must be a whole number, 0 or more, not -1"),
        ({"explain": "yes"}, "explain must be True or False, not 'yes'"),
        ({"seed": -1}, "score_frame: "),
        ({"importance_samples": 0}, "score_frame: "),
        ({"threshold_quantile": 2.0}, "score_frame: "),
        ({"seed": True}, "seed must be a whole number, not True"),  # a bool is an int to Python, not to the user
        ({"importance_samples": True}, "importance_samples must be a whole number, not True"),
    ]:
        with pytest.raises(DataError, match=re.escape(message)):
            score_frame(frame, bundle, **options)
    one_thread = score_frame(frame, bundle, intra_op_threads=np.int64(1))  # numpy's integers are whole numbers
    np.testing.assert_allclose(one_thread["anomaly_score"], score_frame(frame, bundle)["anomaly_score"])
    # an id column of mixed types and two columns of one name beside the features: carried along as they are
    frame.insert(0, "note", ["x", 1, 2.5, None, "y", 3])
    frame.insert(1, "dup", 1)
    frame.insert(2, "dup", 2, allow_duplicates=True)
    scored = score_frame(frame, bundle)
    assert list(scored.columns[:3]) == ["note", "dup", "dup"] and scored["note"].tolist()[:3] == ["x", 1, 2.5]
    np.testing.assert_allclose(
        scored["anomaly_score"], score_frame(partition(bundle, 7, rows=6), bundle).column("anomaly_score")
    )


def test_score_frame_scores_with_the_bundle_on_disk_after_it_is_replaced(
    tmp_path: Path, serving_repository: Path
) -> None:
    # a notebook retrains into the same folder: the next call scores with the new model, as load() does
    here = tmp_path / "digits-diag" / "1"
    shutil.copytree(serving_repository / "digits-diag" / "1", here)
    table = partition(here, 6, rows=10)
    before = score_frame(table, here).column("anomaly_score").to_numpy()
    shutil.rmtree(here)
    shutil.copytree(serving_repository / "digits-full" / "1", here)
    manifest = (here / "manifest.json").read_text().replace('"name": "digits-full"', '"name": "digits-diag"')
    (here / "manifest.json").write_text(manifest)
    after = score_frame(table, here).column("anomaly_score").to_numpy()
    x = np.column_stack([table.column(n).to_numpy() for n in load(here, "cpu").feature_names_in_])
    np.testing.assert_allclose(after, load(here, "cpu").score(x)["anomaly_score"], rtol=1e-6)
    assert not np.allclose(after, before)


def test_a_dask_worker_killed_mid_run_costs_only_its_tasks(tmp_path: Path, bundle: Path) -> None:
    from distributed import Client, LocalCluster

    root, tables = ten_partitions(tmp_path, bundle)
    out = tmp_path / "scores"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        cmd = [sys.executable, "-m", "gaussian_vae.cli", str(bundle), str(root), "-o", str(out), "--quiet"]
        cmd += ["--scheduler", cluster.scheduler_address, "--device", "cpu", "--batch-rows", "500"]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        deadline, killed = time.monotonic() + 120, False
        while not killed and time.monotonic() < deadline and proc.poll() is None:
            if list(out.glob("*.parquet")):  # mid-run: one partition out, the rest to come
                os.kill(pids[0], signal.SIGKILL)  # the nanny starts another; the scheduler reschedules its tasks
                killed = True
            time.sleep(0.05)
        _, err = proc.communicate(timeout=240)
    assert killed, "the run ended before a worker could be killed"
    assert proc.returncode == 0, err.decode()
    ids = results_of(out).column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == 10 * 3000


def test_score_files_runs_vae_score_from_python_and_raises_naming_a_bad_partition(tmp_path: Path, bundle: Path) -> None:
    from gaussian_vae import score_files
    from vae_tables import DataError

    root, tables = hive_folder(tmp_path, bundle)
    result = score_files(bundle, str(root), str(tmp_path / "out"), workers=1, device="cpu", format="csv")
    assert (result.rows, result.done, result.skipped, result.failed) == (4 * ROWS, 4, 0, [])
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.csv")) == ["part-0.csv"] * 4
    (root / "date=2026-12-02" / "part-0.csv").write_text("garbage\n")
    with pytest.raises(DataError, match=r"1 of 4 partitions failed: .*date=2026-12-02/part-0\.csv: the model's feat"):
        score_files(bundle, str(root), str(tmp_path / "again"), workers=1, device="cpu", explain=True)
    # a bad option is an exception a driver script catches, not the command's exit
    with pytest.raises(DataError, match="score_files: unrecognized arguments: --batch-size 100"):
        score_files(bundle, str(root), str(tmp_path / "third"), batch_size=100)
    with pytest.raises(DataError, match="score_files: argument --na: invalid choice: 'skip'"):
        score_files(bundle, str(root), str(tmp_path / "third"), na="skip")
    with pytest.raises(DataError, match="score_files: unrecognized arguments: --op encode"):  # no prefix of --operation
        score_files(bundle, str(root), str(tmp_path / "third"), op="encode")
    np.savez(root / "date=2026-12-01" / "arrays.npz", x=np.zeros((2, 64)))  # no partition format: not listed
    (root / "date=2026-12-02" / "part-0.csv").unlink()
    result = score_files(bundle, str(root), str(tmp_path / "fourth"), workers=1, device="cpu")
    assert (result.done, result.failed) == (3, [])


@pytest.mark.parametrize("output", [".", "out", "sub/out"])
def test_an_output_folder_inside_the_input_folder_is_refused(
    tmp_path: Path, bundle: Path, output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "events"
    (root / "sub").mkdir(parents=True)
    pq.write_table(partition(bundle, 0, rows=5), root / "a.parquet")
    # the folder itself scored nothing, "already there"; a folder inside it was read back as partitions by a re-run
    assert main([str(bundle), str(root), "-o", str(root / output), "--quiet"]) == 2
    assert "is inside the input" in capsys.readouterr().err
    assert sorted(p.name for p in root.rglob("*")) == ["a.parquet", "sub"]


def test_a_pattern_refuses_only_answers_it_would_match(tmp_path: Path, bundle: Path) -> None:
    data = tmp_path / "data"
    for month in ("2026-01", "2026-02"):
        (data / month).mkdir(parents=True)
        pa_csv.write_csv(partition(bundle, int(month[-1]), rows=5), data / month / "part-0.csv")
    # the README's example: the answers under data/scores/ are no match of the pattern
    assert main([str(bundle), str(data / "2026-*" / "part-*.csv"), "-o", str(data / "scores"), "--quiet"]) == 0
    assert len(list((data / "scores").rglob("*.parquet"))) == 2
    flat = tmp_path / "flat"
    flat.mkdir()
    pa_csv.write_csv(partition(bundle, 3, rows=5), flat / "a.csv")
    assert main([str(bundle), str(flat / "*.csv"), "-o", str(flat / "out"), "--format", "csv", "--quiet"]) == 0
    # answers the pattern would list on a re-run: refused, through ** and through a link to the input too
    assert main([str(bundle), str(flat / "*.csv"), "-o", str(flat), "--format", "csv", "--quiet"]) == 2
    assert main([str(bundle), str(data / "**" / "*.csv"), "-o", str(data / "again"), "--format", "csv", "--quiet"]) == 2
    (tmp_path / "link").symlink_to(flat)
    assert main([str(bundle), str(flat / "*.csv"), "-o", str(tmp_path / "link"), "--format", "csv", "--quiet"]) == 2


def test_two_partitions_that_would_write_one_output_are_refused_before_any_is_scored(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "same"
    root.mkdir()
    pq.write_table(partition(bundle, 1), root / "a.parquet")
    pa_csv.write_csv(partition(bundle, 2), root / "a.csv")
    assert main([str(bundle), str(root), "-o", str(tmp_path / "out"), "--workers", "1", "--quiet"]) == 2
    assert "would write one output" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_score_frame_keeps_a_pandas_frames_index_and_drops_what_the_features_miss(bundle: Path) -> None:
    # a Dask partition's index is its divisions' key; Arrow's NaN counts as missing as a null does
    frame = partition(bundle, 5, rows=20).to_pandas().set_index(pd.RangeIndex(100, 120))
    scored = score_frame(frame, bundle)
    assert list(scored.index) == list(range(100, 120)) and scored.loc[107, "event_id"] == frame.loc[107, "event_id"]
    frame.loc[104, "pixel_0_3"] = np.nan
    dropped = score_frame(frame, bundle, na="drop")
    assert 104 not in dropped.index and len(dropped) == 19
    np.testing.assert_allclose(dropped.loc[105, "anomaly_score"], scored.loc[105, "anomaly_score"], rtol=1e-6)
    table = pa.Table.from_pandas(frame, preserve_index=False)  # NaN, not null, in an Arrow table
    assert score_frame(table, bundle, na="drop").num_rows == 19


def test_an_input_column_named_like_an_answer_column_is_refused(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = partition(bundle, 1)
    clashing = table.append_column("anomaly_score", pa.array(["mine"] * table.num_rows))
    pq.write_table(clashing, tmp_path / "in.parquet")
    assert main([str(bundle), str(tmp_path / "in.parquet"), "-o", str(tmp_path / "o.parquet"), "--quiet"]) == 2
    assert "the input has column(s) ['anomaly_score'], which the answer adds" in capsys.readouterr().err
    from vae_tables import DataError

    with pytest.raises(DataError, match="which the answer adds"):
        score_frame(clashing.to_pandas(), bundle)


def test_a_hive_key_named_like_a_feature_or_an_answer_column_never_gives_two_columns_one_name(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "events"
    (root / "pixel_0_3=9" / "shop=7").mkdir(parents=True)  # the file holds pixel_0_3, a feature: its values stand
    pq.write_table(partition(bundle, 1, rows=5), root / "pixel_0_3=9" / "shop=7" / "part-0.parquet")
    assert main([str(bundle), str(root), "-o", str(tmp_path / "out"), "--workers", "1", "--quiet"]) == 0
    written = results_of(tmp_path / "out")
    assert "pixel_0_3" not in written.column_names and written.column("shop").to_pylist() == ["7"] * 5
    clash = tmp_path / "clash"
    (clash / "is_anomaly=yes").mkdir(parents=True)
    pq.write_table(partition(bundle, 2, rows=5), clash / "is_anomaly=yes" / "part-0.parquet")
    assert main([str(bundle), str(clash), "-o", str(tmp_path / "out2"), "--workers", "1", "--quiet"]) == 2
    assert "the input has column(s) ['is_anomaly'], which the answer adds" in capsys.readouterr().err


def test_score_files_from_a_script_without_a_main_guard_says_how_to_call_it(tmp_path: Path, bundle: Path) -> None:
    # each spawned worker imports the caller's script, and an unguarded top-level call runs again there: every worker
    # dies before it takes a partition, and the user is told why rather than only that they died
    root, _ = hive_folder(tmp_path, bundle, days=2)
    script = tmp_path / "score.py"
    script.write_text(
        "from gaussian_vae import score_files\n"
        f"score_files({str(bundle)!r}, {str(root)!r}, {str(tmp_path / 'out')!r}, workers=2, device='cpu')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]  # the caller's own error, after the workers' tracebacks
    assert last.startswith("vae_tables.errors.DataError: 2 of 2 partitions failed"), done.stderr[-3000:]
    assert "the worker processes could not start" in last and "or pass workers=1" in last, last
    assert 'put the call under `if __name__ == "__main__":`' in last
    assert "score_files was called while a worker process started" in done.stderr  # what each worker said


def test_two_writers_of_one_target_never_share_a_temporary_file(tmp_path: Path) -> None:
    # a task run twice (a worker declared lost while still running) or two runs on one output write side by side
    target = tmp_path / "out" / "part-0.parquet"
    first, second = beside(target), beside(target)
    assert first != second and first.parent == second.parent == target.parent
    assert first.name.startswith(".part-0.parquet.") and first.name.endswith(".part")  # hidden: no partition
