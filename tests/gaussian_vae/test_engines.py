"""The README's Spark and Ray Data recipes for `score_frame`, run as written where pyspark or ray is installed
(neither is in the dev extra: each is hundreds of MB, and Spark needs a JVM); Dask's is in test_partitions.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gaussian_vae import load, score_frame

ANSWER = ("anomaly_score", "log_likelihood", "elbo", "percentile", "p_value")


@pytest.fixture(scope="module")
def bundle(serving_repository: Path) -> Path:
    return serving_repository / "digits-diag" / "1"


def rows(bundle: Path, n: int = 200) -> pa.Table:
    names = list(load(bundle, "cpu").feature_names_in_)
    x = np.random.default_rng(3).integers(0, 17, (n, len(names))) / 16
    return pa.table({"event_id": [f"e{i:04d}" for i in range(n)], **{c: x[:, j] for j, c in enumerate(names)}})


def expected(bundle: Path, table: pa.Table) -> dict[str, float]:
    scored = score_frame(table, bundle)
    return dict(zip(scored.column("event_id").to_pylist(), scored.column("anomaly_score").to_pylist(), strict=True))


def test_the_spark_recipe_scores_as_score_frame_does(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyspark")
    # the executors' Python must have this package (and onnxruntime): PYSPARK_PYTHON, or spark.pyspark.python
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession
    from pyspark.sql.types import BooleanType, DoubleType, StructField, StructType

    table = rows(bundle)
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    try:
        df = spark.createDataFrame(table.to_pandas())
        bundle_path = str(bundle)  # the recipe's BUNDLE
        answer = [StructField(c, DoubleType()) for c in ANSWER]
        schema = StructType(df.schema.fields + answer + [StructField("is_anomaly", BooleanType())])
        scored = df.mapInPandas(lambda frames: (score_frame(f, bundle_path) for f in frames), schema).toPandas()
    finally:
        spark.stop()
    want = expected(bundle, table)
    got = dict(zip(scored["event_id"], scored["anomaly_score"], strict=True))
    assert np.allclose([got[k] for k in want], list(want.values()), rtol=1e-6)


def test_the_ray_data_recipe_scores_as_score_frame_does(bundle: Path) -> None:
    pytest.importorskip("ray.data")
    import ray

    table = rows(bundle)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        ds = ray.data.from_arrow(table)
        scored = ds.map_batches(score_frame, fn_kwargs={"bundle": str(bundle)}, batch_format="pandas").to_pandas()
    finally:
        ray.shutdown()
    want = expected(bundle, table)
    got = dict(zip(scored["event_id"], scored["anomaly_score"], strict=True))
    assert np.allclose([got[k] for k in want], list(want.values()), rtol=1e-6)
