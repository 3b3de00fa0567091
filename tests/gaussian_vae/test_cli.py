"""`vae-score` on files: the service's numbers beside the input's own columns, in chunks, every format."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from contract.manifest import Manifest
from gaussian_vae import load
from gaussian_vae.cli import main

X = np.random.default_rng(11).integers(0, 17, (57, 64)).astype(np.float64) / 16


@pytest.fixture(scope="module")
def bundle(serving_repository: Path) -> Path:
    return serving_repository / "digits-diag" / "1"


def _frame(bundle: Path) -> pa.Table:
    names = list(load(bundle, "cpu").feature_names_in_)
    columns = {"customer_id": [f"00{i}" for i in range(len(X))], **{n: X[:, j] for j, n in enumerate(names)}}
    return pa.table(columns)


def _read(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types={"customer_id": pa.string()}))


@pytest.mark.parametrize(
    ("source", "target"), [("in.csv", "out.csv"), ("in.parquet", "out.parquet"), ("in.csv.gz", "out.csv.gz")]
)
def test_scores_match_the_runtime_and_ids_are_kept(tmp_path: Path, bundle: Path, source: str, target: str) -> None:
    frame = _frame(bundle)
    src = tmp_path / source
    if source.endswith(".parquet"):
        pq.write_table(frame, src)
    elif source.endswith(".gz"):
        with gzip.open(src, "wb") as f:
            pa_csv.write_csv(frame, f)
    else:
        pa_csv.write_csv(frame, src)
    assert main([str(bundle), str(src), "-o", str(tmp_path / target), "--batch-rows", "10", "--quiet"]) == 0
    out = _read(tmp_path / target)
    expected = load(bundle, "cpu").score(X)
    assert out.column("customer_id").to_pylist() == frame.column("customer_id").to_pylist()  # zeros kept
    np.testing.assert_allclose(out.column("anomaly_score").to_numpy(), expected["anomaly_score"], rtol=1e-6)
    assert out.column("is_anomaly").to_pylist() == expected["is_anomaly"].tolist()
    assert {"log_likelihood", "percentile", "p_value"} <= set(out.column_names)


def test_explain_names_contributions_by_feature_and_encode_writes_embeddings(tmp_path: Path, bundle: Path) -> None:
    src = tmp_path / "in.parquet"
    pq.write_table(_frame(bundle), src)
    assert main([str(bundle), str(src), "-o", str(tmp_path / "s.parquet"), "--explain", "--quiet"]) == 0
    assert "nll_pixel_3_4" in pq.read_table(tmp_path / "s.parquet").column_names
    assert main([str(bundle), str(src), "-o", str(tmp_path / "e.parquet"), "--operation", "encode", "--quiet"]) == 0
    embedded = pq.read_table(tmp_path / "e.parquet")
    np.testing.assert_allclose(
        embedded.column("z_mean_0").to_numpy(), load(bundle, "cpu").transform(X)[:, 0], rtol=1e-6
    )


def test_an_npy_input_gets_scores_and_the_default_output_name(tmp_path: Path, bundle: Path) -> None:
    np.save(tmp_path / "rows.npy", X)
    assert main([str(bundle), str(tmp_path / "rows.npy"), "--quiet"]) == 0
    out = _read(tmp_path / "rows.scores.csv")
    assert out.num_rows == len(X) and "anomaly_score" in out.column_names


def test_a_file_whose_name_holds_glob_characters_is_that_file(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "rows[1].npy", X)
    assert main([str(bundle), str(tmp_path / "rows[1].npy"), "--quiet"]) == 0
    assert _read(tmp_path / "rows[1].scores.csv").num_rows == len(X)
    (tmp_path / "run[1]").mkdir()  # and a folder is that folder (it matched nothing: 'no readable files match')
    np.save(tmp_path / "run[1]" / "part-0.npy", X)
    assert main([str(bundle), str(tmp_path / "run[1]"), "--quiet"]) == 0
    assert [p.name for p in (tmp_path / "run[1].scores").iterdir()] == ["part-0.parquet"]
    assert main([str(bundle), str(tmp_path / "run[1]"), "-o", str(tmp_path / "run[1]" / "out"), "--quiet"]) == 2
    assert "is inside the input" in capsys.readouterr().err and not (tmp_path / "run[1]" / "out").exists()


@pytest.mark.parametrize(
    ("na", "code", "rows"),
    [("stop", 2, None), ("drop", 0, len(X) - 1)],
)
def test_missing_values_stop_or_drop_as_asked(
    tmp_path: Path, bundle: Path, na: str, code: int, rows: int | None, capsys
) -> None:  # type: ignore[no-untyped-def]
    frame = _frame(bundle)
    values = frame.column("pixel_2_2").to_pylist()
    values[5] = None
    frame = frame.set_column(frame.column_names.index("pixel_2_2"), "pixel_2_2", pa.array(values, pa.float64()))
    pa_csv.write_csv(frame, tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    assert main([str(bundle), str(tmp_path / "in.csv"), "-o", str(out), "--na", na]) == code
    if rows is None:
        err = capsys.readouterr().err
        assert "1 row has a missing value" in err and "row 5 (0-based, after any header), column 'pixel_2_2'" in err
        assert not out.exists()
    else:
        scored = _read(out)
        assert scored.num_rows == rows and "left out 1 rows" in capsys.readouterr().out
        # which input row each answer is, past the one left out (a join by position would be off by one from there)
        assert scored.column("input_row").to_pylist() == [i for i in range(len(X)) if i != 5]
        assert scored.column("customer_id").to_pylist() == [f"00{i}" for i in range(len(X)) if i != 5]


def test_the_default_output_keeps_the_whole_input_name_and_never_replaces_the_input(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # dated files must not share one default output, and an earlier run's output re-scored must not be overwritten
    for day in ("events.2026-01-01.csv", "events.2026-01-02.csv", "data.scores.csv"):
        pa_csv.write_csv(_frame(bundle), tmp_path / day)
        assert main([str(bundle), str(tmp_path / day), "--quiet"]) == 0
    assert {p.name for p in tmp_path.glob("*.scores.csv")} == {
        "events.2026-01-01.scores.csv",
        "events.2026-01-02.scores.csv",
        "data.scores.csv",  # the input, still itself
        "data.scores.scores.csv",
    }
    assert "customer_id" in _read(tmp_path / "data.scores.csv").column_names  # not replaced by its own scores
    src = tmp_path / "in.csv"
    pa_csv.write_csv(_frame(bundle), src)
    assert main([str(bundle), str(src), "-o", str(tmp_path / "new" / "folder" / "out.csv"), "--quiet"]) == 0
    assert _read(tmp_path / "new" / "folder" / "out.csv").num_rows == len(X)  # its folder made, as for partitions
    assert main([str(bundle), str(src), "-o", str(tmp_path / "." / "in.csv"), "--quiet"]) == 2
    assert "-o names the input itself" in capsys.readouterr().err and "customer_id" in _read(src).column_names
    (tmp_path / "answers.csv").mkdir()  # refused before scoring, not when the answers are moved into place
    assert main([str(bundle), str(src), "-o", str(tmp_path / "answers.csv"), "--quiet"]) == 2
    assert "-o names a folder; give the answer file's name" in capsys.readouterr().err


def test_without_o_the_answers_go_beside_the_folder_named_or_the_one_a_pattern_starts_from(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    for day in ("p1", "p10"):
        (work / "data" / day).mkdir(parents=True)
        pa_csv.write_csv(_frame(bundle), work / "data" / day / "a.csv")
    monkeypatch.chdir(work)

    def written(folder: str) -> list[str]:
        return sorted(p.relative_to(work).as_posix() for p in (work / folder).rglob("*.parquet"))

    # the partitions named relative to data, not to data/p1 (which data/p10/a.csv lies outside of: a traceback)
    assert main([str(bundle), "data/p1*/a.csv", "--quiet"]) == 0
    assert written("data.scores") == ["data.scores/p1/a.parquet", "data.scores/p10/a.parquet"]
    assert main([str(bundle), "data/p1*", "-o", "folders", "--quiet"]) == 0  # folders matched: the files under them
    assert written("folders") == ["folders/p1/a.parquet", "folders/p10/a.parquet"]
    assert main([str(bundle), "data/p1*", "-o", "data/p1/out", "--quiet"]) == 2  # a matched folder is listed whole
    assert not (work / "data" / "p1" / "out").exists()
    monkeypatch.chdir(work / "data" / "p1")
    assert main([str(bundle), ".", "--quiet"]) == 0  # a folder: beside it, not inside it
    assert written("data/p1.scores") == ["data/p1.scores/a.parquet"]
    monkeypatch.chdir(work / "data" / "p10")
    assert main([str(bundle), "**/*.csv", "--format", "csv", "--quiet"]) == 0  # from the working folder on: beside it
    assert [p.name for p in (work / "data" / "p10.scores").iterdir()] == ["a.csv"]


def test_missing_values_dropped_from_a_table_of_features_alone(tmp_path: Path, bundle: Path) -> None:
    # no other column to keep: the rows left are taken before the features are dropped (.npy inputs are all so)
    x = X.copy()
    x[3, 7] = np.nan
    np.save(tmp_path / "rows.npy", x)
    out = tmp_path / "out.csv"
    argv = [str(bundle), str(tmp_path / "rows.npy"), "-o", str(out), "--na", "drop", "--batch-rows", "10", "--quiet"]
    assert main(argv) == 0
    scored = _read(out)
    assert scored.num_rows == len(X) - 1
    assert scored.column("input_row").to_pylist() == [i for i in range(len(X)) if i != 3]  # across batches too
    expected = load(bundle, "cpu").score(np.delete(X, 3, axis=0))["anomaly_score"]
    np.testing.assert_allclose(scored.column("anomaly_score").to_numpy(), expected, rtol=1e-6)


def test_a_file_without_the_models_features_is_refused_naming_them(tmp_path: Path, bundle: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    pa_csv.write_csv(pa.table({"a": [1.0], "b": [2.0]}), tmp_path / "in.csv")
    assert main([str(bundle), str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv")]) == 2
    assert "the model's features ['pixel_0_0'" in capsys.readouterr().err


def test_a_model_without_feature_names_takes_a_headerless_file_of_exactly_its_width_and_refuses_another(
    tmp_path: Path,
    bundle: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    # a model trained on an array has the placeholder names column_0, ... and a headerless file gets the same ones:
    # an id column in front of the features used to be scored as the first feature, and the last one dropped
    unnamed = tmp_path / "digits-diag" / "1"
    shutil.copytree(bundle, unnamed)
    manifest = Manifest.model_validate_json((unnamed / "manifest.json").read_text())
    manifest = manifest.model_copy(update={"feature_names": [f"column_{j}" for j in range(64)]})
    (unnamed / "manifest.json").write_text(manifest.model_dump_json())
    ids = np.arange(len(X), dtype=np.float64)[:, None] + 1000
    np.savetxt(tmp_path / "with_id.csv", np.hstack([ids, X]), delimiter=",", fmt="%g")
    assert main([str(unnamed), str(tmp_path / "with_id.csv"), "-o", str(tmp_path / "o.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "features have no names" in err and "no header and 65 columns: give exactly 64 columns" in err, err
    assert not (tmp_path / "o.csv").exists()

    np.savetxt(tmp_path / "plain.csv", X, delimiter=",", fmt="%g")  # its width, by position: scored
    assert main([str(unnamed), str(tmp_path / "plain.csv"), "-o", str(tmp_path / "plain_out.csv"), "--quiet"]) == 0
    expected = load(bundle, "cpu").score(X)["anomaly_score"]
    np.testing.assert_allclose(
        _read(tmp_path / "plain_out.csv").column("anomaly_score").to_numpy(), expected, rtol=1e-6
    )

    header = "id," + ",".join(f"column_{j}" for j in range(64))  # or named, with an id beside them
    np.savetxt(tmp_path / "named.csv", np.hstack([ids, X]), delimiter=",", fmt="%g", header=header, comments="")
    assert main([str(unnamed), str(tmp_path / "named.csv"), "-o", str(tmp_path / "named_out.csv"), "--quiet"]) == 0
    out = _read(tmp_path / "named_out.csv")
    np.testing.assert_allclose(out.column("anomaly_score").to_numpy(), expected, rtol=1e-6)
    assert out.column("id").to_pylist() == ids[:, 0].tolist()

    # a model that picked its columns by those names (vae-train --label-column column_64 on a headerless file)
    # takes them by name: the file it was trained on, label last, is scored and the label kept
    training = manifest.training.model_copy(
        update={"arguments": {**manifest.training.arguments, "label_column": "column_64"}}
    )
    (unnamed / "manifest.json").write_text(manifest.model_copy(update={"training": training}).model_dump_json())
    labels = np.zeros((len(X), 1))
    np.savetxt(tmp_path / "labelled.csv", np.hstack([X, labels]), delimiter=",", fmt="%g")
    assert main([str(unnamed), str(tmp_path / "labelled.csv"), "-o", str(tmp_path / "l_out.csv"), "--quiet"]) == 0
    labelled = _read(tmp_path / "l_out.csv")
    np.testing.assert_allclose(labelled.column("anomaly_score").to_numpy(), expected, rtol=1e-6)
    assert labelled.column("column_64").to_pylist() == [0] * len(X)


def test_a_feature_cell_that_is_no_number_gets_advice_vae_score_can_follow(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _frame(bundle)
    names = frame.column_names[1:]
    text = frame.set_column(3, names[2], pa.array(["abc" if i == 4 else str(v) for i, v in enumerate(X[:, 2])]))
    pa_csv.write_csv(text, tmp_path / "in.csv")
    assert main([str(bundle), str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert f"column '{names[2]}' is not numeric (row 4, 0-based after any header, holds 'abc')" in err
    assert "--exclude-columns" not in err and "correct that cell, or leave its row out of the input" in err


_LOADED = "import sys; print(sorted(m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'training'))"


def test_vae_score_imports_no_training_module_and_no_torch() -> None:
    # vae-score must run where only onnxruntime and pyarrow are installed: its reading rules come from tables/
    code = f"import gaussian_vae.cli, vae_tables.columns, vae_tables.frames, vae_tables.text; {_LOADED}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_vae_score_is_installed_and_imports_no_torch(tmp_path: Path, bundle: Path) -> None:
    np.save(tmp_path / "rows.npy", X[:3])
    pa_csv.write_csv(_frame(bundle).slice(0, 3), tmp_path / "rows.csv")
    code = (
        "from gaussian_vae.cli import main; "
        f"print(main([{str(bundle)!r}, {str(tmp_path / 'rows.npy')!r}, '--quiet']), "
        f"main([{str(bundle)!r}, {str(tmp_path / 'rows.csv')!r}, '--quiet'])); {_LOADED}"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["0 0", "[]"]


def test_text_cells_carried_along_are_kept_as_written_and_na_tokens_in_features_are_missing(
    tmp_path: Path, bundle: Path
) -> None:
    frame = _frame(bundle)
    names = frame.column_names[1:]
    codes = ["NA", "None", "null", "nan", "N/A", "NaN", "NULL", "US", ""]  # Namibia's code, a surname Null, ...
    country = pa.array([codes[i % len(codes)] for i in range(len(X))])
    text = frame.append_column("country", country)
    text = text.set_column(1, names[0], pa.array(["NA" if i == 3 else str(v) for i, v in enumerate(X[:, 0])]))
    pa_csv.write_csv(text, tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    assert main([str(bundle), str(tmp_path / "in.csv"), "-o", str(out), "--na", "drop", "--quiet"]) == 0
    read = pa_csv.read_csv(
        out,
        convert_options=pa_csv.ConvertOptions(
            column_types={"country": pa.string()}, null_values=[""], strings_can_be_null=True
        ),
    )
    kept = [i for i in range(len(X)) if i != 3]  # the feature's NA: a missing value, its row dropped
    assert read.column("country").to_pylist() == [codes[i % len(codes)] or None for i in kept]
    expected = load(bundle, "cpu").score(X[kept])
    np.testing.assert_allclose(read.column("anomaly_score").to_numpy(), expected["anomaly_score"], rtol=1e-6)


def test_text_features_read_as_training_reads_them(tmp_path: Path, bundle: Path) -> None:
    # booleans, padded cells and NA tokens in a text input: the numbers training would read (tables/numeric.py)
    frame = _frame(bundle)
    names = frame.column_names[1:]
    text = frame.set_column(1, names[0], pa.array([" true " if v else "false" for v in X[:, 0] > 0.5]))
    text = text.set_column(2, names[1], pa.array([f" {v} " for v in X[:, 1]]))
    pa_csv.write_csv(text, tmp_path / "in.csv")
    assert main([str(bundle), str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "--quiet"]) == 0
    x = X.copy()
    x[:, 0] = X[:, 0] > 0.5
    expected = load(bundle, "cpu").score(x)
    np.testing.assert_allclose(
        _read(tmp_path / "out.csv").column("anomaly_score").to_numpy(), expected["anomaly_score"], rtol=1e-6
    )


def test_an_infinite_feature_is_refused_with_its_row_even_with_na_drop(tmp_path: Path, bundle: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    x = X.copy()
    x[2, 5], x[7, 3] = np.nan, np.inf  # row 2 is dropped: the infinite value is still named by its row in the file
    np.save(tmp_path / "rows.npy", x)
    assert main([str(bundle), str(tmp_path / "rows.npy"), "-o", str(tmp_path / "o.csv"), "--na", "drop"]) == 2
    assert "1 infinite values (or beyond float32); the first is in row 7" in capsys.readouterr().err


def test_options_that_cannot_apply_are_refused_and_a_file_uri_is_a_local_path(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.csv"
    pa_csv.write_csv(_frame(bundle), src)
    for extra, message in [
        (["--operation", "encode", "--explain"], "explain: options of operation 'score'; 'encode' takes none of them"),
        (["--operation", "encode", "--importance-samples", "4"], "importance_samples: options of operation 'score'"),
        (["--operation", "encode", "--importance-samples", "0"], "importance_samples: options of operation 'score'"),
        (["-o", str(tmp_path / "o.csv"), "--format", "parquet"], "is .csv, --format parquet: give one of them"),
        (["--delimiter", ";"], "--delimiter applies to text tables"),
    ]:
        source = str(src) if extra[0] != "--delimiter" else str(tmp_path / "in.npy")
        if extra[0] == "--delimiter":
            np.save(tmp_path / "in.npy", X.astype(np.float32))
        assert main([str(bundle), source, *extra, "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("in.embeddings*")) and not (tmp_path / "o.csv").exists()
    assert main([str(bundle), str(src), "--format", "parquet", "--quiet"]) == 0  # the default output takes it
    assert _read(tmp_path / "in.scores.parquet").num_rows == len(X)
    uri = f"file://localhost{tmp_path / 'uri.csv'}"
    assert main([f"FILE://{bundle}", f"file://{src}", "-o", uri, "--quiet"]) == 0
    assert _read(tmp_path / "uri.csv").num_rows == len(X)


def test_a_bool_array_is_zeros_and_ones_and_a_latin1_file_gets_an_encoding_hint(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = load(bundle, "cpu")
    flags = np.random.default_rng(0).random((4, len(model.feature_names_in_))) > 0.5
    np.testing.assert_array_equal(
        model.score(flags)["anomaly_score"], model.score(flags.astype(float))["anomaly_score"]
    )
    np.save(tmp_path / "flags.npy", flags)
    assert main([str(bundle), str(tmp_path / "flags.npy"), "--quiet"]) == 0
    assert _read(tmp_path / "flags.scores.csv").num_rows == 4
    names = list(model.feature_names_in_)
    text = ",".join([*names, "note"]) + "\n" + ",".join(["0"] * len(names) + ["caf\xe9"]) + "\n"
    (tmp_path / "latin1.csv").write_bytes(text.encode("latin-1"))
    assert main([str(bundle), str(tmp_path / "latin1.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "text tables are read as UTF-8: convert it, e.g. `iconv -f cp1252 -t utf-8 IN.csv > OUT.csv`" in err
    with gzip.open(tmp_path / "latin1.csv.gz", "wb") as f:
        f.write(text.encode("latin-1"))
    assert main([str(bundle), str(tmp_path / "latin1.csv.gz"), "--quiet"]) == 2
    assert "`gzip -dc IN.csv.gz | iconv -f cp1252 -t utf-8 | gzip > OUT.csv.gz`" in capsys.readouterr().err


def test_a_device_or_a_file_uri_that_cannot_be_used_is_one_line_and_exit_2(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime import bundle as runtime_bundle

    np.save(tmp_path / "x.npy", X.astype(np.float32))
    monkeypatch.setattr(runtime_bundle.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert main([str(bundle), str(tmp_path / "x.npy"), "--device", "cuda", "--quiet"]) == 2  # was a traceback
    assert capsys.readouterr().err == (
        "vae-score: device cuda was asked for (VAE_DEVICE=cuda, --device cuda or device='cuda'), but this onnxruntime "
        "has no CUDA provider (['CPUExecutionProvider'])\n"
    )
    for source, why in [("", "the input names no file or folder"), ("/", "/: the filesystem root is no data set")]:
        assert main([str(bundle), source, "--quiet"]) == 2  # '' listed the working folder as /..., / all of it
        assert why in capsys.readouterr().err
    assert main([str(bundle), "file://otherhost/x.csv", "--quiet"]) == 2  # refused while the arguments are parsed
    assert capsys.readouterr().err == (
        "vae-score: file://otherhost/x.csv: a file: URI of another host (otherhost); give a path on this machine\n"
    )


def test_score_files_raises_the_errors_it_exports(tmp_path: Path, bundle: Path) -> None:
    import gaussian_vae
    import runtime
    import vae_tables

    assert gaussian_vae.BundleError is runtime.BundleError and gaussian_vae.DataError is vae_tables.DataError
    assert gaussian_vae.DeviceUnavailable is runtime.DeviceUnavailable
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    # an option's value the operations refuse was runtime's InputError, which gaussian_vae does not export
    with pytest.raises(gaussian_vae.DataError, match="importance_samples"):
        gaussian_vae.score_files(bundle, tmp_path / "x.npy", tmp_path / "o.csv", importance_samples=0, device="cpu")


def test_a_second_run_into_the_same_output_file_says_it_replaced_it(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pa_csv.write_csv(_frame(bundle), src)
    assert main([str(bundle), str(src), "-o", str(out)]) == 0
    assert "replaced" not in capsys.readouterr().out
    assert main([str(bundle), str(src), "-o", str(out)]) == 0  # a re-run, or a mistyped -o: said, not silent
    assert f"replaced the file that was at {out}" in capsys.readouterr().out
    assert _read(out).num_rows == len(X)
