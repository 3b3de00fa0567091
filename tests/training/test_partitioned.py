"""Training rows from partitions: a folder, a glob and an S3-compatible store (moto's server on 127.0.0.1) give the
rows one file with the same rows gives, in the partitions' sorted order; partitions that disagree are named; two
torchrun ranks train from a partitioned folder."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.conftest import free_port
from training.data import load_table
from training.errors import DataError

NAMES = [f"f{j}" for j in range(6)]


def tables(n: int = 4) -> list[pa.Table]:
    out = []
    for i in range(n):
        x = np.random.default_rng(i).normal(size=(150 + 10 * i, len(NAMES)))
        out.append(pa.table({"id": [f"{i}-{r}" for r in range(len(x))], **{c: x[:, j] for j, c in enumerate(NAMES)}}))
    return out


def whole(parts: list[pa.Table]) -> np.ndarray:
    t = pa.concat_tables(parts)
    return np.column_stack([t.column(c).to_numpy() for c in NAMES]).astype(np.float32)


def test_parquet_partitions_in_a_folder_or_glob_are_the_rows_of_one_file(tmp_path: Path) -> None:
    parts = tables()
    for i, t in enumerate(parts):
        folder = tmp_path / "data" / f"day=2026-12-0{i + 1}"
        folder.mkdir(parents=True)
        pq.write_table(t, folder / "part-0.parquet", row_group_size=40)  # several row groups each
    (tmp_path / "data" / "_SUCCESS").write_text("")
    for source in (str(tmp_path / "data"), str(tmp_path / "data" / "day=*" / "*.parquet")):
        table = load_table(source, exclude_columns=["id"])
        assert table.feature_names == NAMES  # the Hive folder is no feature
        assert np.array_equal(np.asarray(table.x), whole(parts))


def test_partitions_in_an_s3_compatible_store_parquet_or_gzipped_text(s3: dict[str, str]) -> None:
    fs = pafs.S3FileSystem(endpoint_override=s3["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    fs.create_dir("train-lake")
    parts = tables(3)
    for i, t in enumerate(parts):
        pq.write_table(t, f"train-lake/parquet/part-{i}.parquet", filesystem=fs, row_group_size=50)
        with fs.open_output_stream(f"train-lake/text/part-{i}.csv.gz", compression=None) as sink:
            sink.write(gzip.compress(_csv(t)))
    for prefix in ("parquet", "text"):
        table = load_table(f"s3://train-lake/{prefix}/", exclude_columns=["id"])
        assert np.allclose(np.asarray(table.x), whole(parts), atol=1e-6), prefix


def _csv(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(t, sink)
    return bytes(sink.getvalue().to_pybytes())


def test_partitions_that_disagree_are_named(tmp_path: Path) -> None:
    parts = tables(2)
    (tmp_path / "a").mkdir()
    pq.write_table(parts[0], tmp_path / "a" / "p0.parquet")
    pq.write_table(parts[1].drop_columns(["f3"]), tmp_path / "a" / "p1.parquet")
    with pytest.raises(DataError, match=r"p1\.parquet: has no column\(s\) \['f3'\]"):
        load_table(str(tmp_path / "a"), exclude_columns=["id"])
    (tmp_path / "b").mkdir()
    pq.write_table(parts[0], tmp_path / "b" / "p0.parquet")
    pa_csv.write_csv(parts[1], tmp_path / "b" / "p1.csv")
    with pytest.raises(DataError, match="partitions of one format"):
        load_table(str(tmp_path / "b"))
    (tmp_path / "d").mkdir()
    for i in range(2):
        np.save(tmp_path / "d" / f"p{i}.npy", np.ones((6, 3)))
    with pytest.raises(DataError, match=r"reads partitions of .parquet or text tables, not .npy \(vae-score scores"):
        load_table(str(tmp_path / "d"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "_SUCCESS").write_text("")
    with pytest.raises(DataError, match="no readable partitions"):
        load_table(str(tmp_path / "c"))


def test_an_infinite_value_in_text_partitions_is_named_by_its_partition_and_row_there(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    for i in range(2):
        lines = ["a,b", *(f"{r},{r}" for r in range(12))]
        if i == 0:
            lines[1 + 3] = "3,NA"  # dropped by --na drop
        else:
            lines[1 + 5] = "5,inf"
        (tmp_path / "t" / f"p{i}.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"p1\.csv: 1 infinite values \(or beyond float32\); the first is in row 5 "):
        load_table(str(tmp_path / "t"), na="drop")


def test_two_torchrun_ranks_train_from_a_partitioned_folder(tmp_path: Path) -> None:
    parts, data = tables(4), tmp_path / "data"
    data.mkdir()
    for i, t in enumerate(parts):
        pq.write_table(t, data / f"part-{i}.parquet", row_group_size=30)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    cmd += ["--master-port", str(free_port()), "-m", "training", "--data", str(data), "--exclude-columns", "id"]
    cmd += [
        "--decorrelate",
        "off",
        "--epochs",
        "2",
        "--refine-steps",
        "6",
        "--hidden",
        "16",
        "--latent-dim",
        "2",
        "--eval-samples",
        "8",
        "--score-samples",
        "4",
    ]
    run = subprocess.run(
        [*cmd, "--name", "parts", "--out", str(tmp_path / "m"), "--quiet"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = json.loads((tmp_path / "m" / "parts" / "1" / "manifest.json").read_text())
    assert sum(manifest["training"]["rows"].values()) == sum(t.num_rows for t in parts)
    assert manifest["feature_names"] == NAMES
