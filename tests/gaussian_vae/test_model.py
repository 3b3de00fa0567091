"""A bundle loaded in Python scores like the service, takes DataFrames by column name, and needs no torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from gaussian_vae import load
from runtime import BundleError
from tests.service.conftest import serving

pytestmark = pytest.mark.anyio
X = np.random.default_rng(8).integers(0, 17, (30, 64)).astype(np.float64) / 16


@pytest.fixture(scope="module")
def model(serving_repository: Path):  # type: ignore[no-untyped-def]
    return load(serving_repository / "digits-diag" / "1", device="cpu")


async def test_scores_and_flags_equal_the_services(serving_repository: Path, model) -> None:  # type: ignore[no-untyped-def]
    async with serving(serving_repository) as client:
        served = (await client.post("/v1/models/digits-diag/score", json={"inputs": X.tolist()})).json()
        embedded = (await client.post("/v1/models/digits-diag/encode", json={"inputs": X.tolist()})).json()
    np.testing.assert_allclose(model.decision_function(X), served["anomaly_score"], rtol=1e-6)
    np.testing.assert_allclose(model.score_samples(X), served["elbo"], rtol=1e-6)
    assert model.predict(X).tolist() == [int(f) for f in served["is_anomaly"]]
    np.testing.assert_allclose(model.transform(X), embedded["mean"], rtol=1e-6)
    assert model.threshold_ == served["threshold"]


def test_a_frame_is_matched_by_column_name_in_any_order(model) -> None:  # type: ignore[no-untyped-def]
    names = list(model.feature_names_in_)
    frame = pd.DataFrame(X, columns=names)
    shuffled = frame[list(reversed(names))]
    np.testing.assert_array_equal(model.decision_function(shuffled), model.decision_function(X))
    table = pa.Table.from_pandas(shuffled, preserve_index=False)  # a pyarrow Table too: by name, not by position
    np.testing.assert_array_equal(model.decision_function(table), model.decision_function(X))
    with pytest.raises(ValueError, match="not features \\['customer_id'\\]"):
        model.decision_function(table.append_column("customer_id", pa.array(["a"] * len(X))))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["pixel_0_0"]), "missing ['pixel_0_0']"),
        (lambda f: f.assign(customer_id=1), "not features ['customer_id']"),
        (lambda f: pd.concat([f, f[["pixel_0_0"]]], axis=1), "repeated ['pixel_0_0']"),
        (
            lambda f: f.astype("Float64").assign(pixel_1_2=pd.array([None] * len(f), dtype="Float64")),
            "inputs[0][10] (column 'pixel_1_2') is not a finite float32 number",  # named like the service names NaN
        ),
        (  # columns in another order: the position is the model's, and the column's name says which it is
            lambda f: f[f.columns[::-1]].assign(pixel_1_2=np.nan),
            "inputs[0][10] (column 'pixel_1_2') is not a finite float32 number",
        ),
    ],
)
def test_a_frame_with_other_columns_is_refused_naming_them(model, change, message: str) -> None:  # type: ignore[no-untyped-def]
    frame = change(pd.DataFrame(X, columns=list(model.feature_names_in_)))
    with pytest.raises(ValueError, match=re.escape(message)):
        model.decision_function(frame)


def test_a_date_or_duration_feature_is_refused_by_name_not_scored_as_nanoseconds(model) -> None:  # type: ignore[no-untyped-def]
    # as fitting refuses them: pandas and Arrow turn them into (nano)seconds without complaint
    names = list(model.feature_names_in_)
    frame = pd.DataFrame(X[:2], columns=names)
    dated = frame.assign(**{names[3]: pd.to_datetime(["2026-01-01", "2026-01-02"])})
    lasting = frame.assign(**{names[5]: pd.to_timedelta([1, 2], unit="s")})
    coded = frame.assign(**{names[7]: pd.Categorical(pd.to_datetime(["2026-01-01", "2026-01-02"]))})  # dictionary
    for bad, name in ((dated, names[3]), (lasting, names[5]), (coded, names[7])):
        for given in (bad, pa.Table.from_pandas(bad, preserve_index=False)):
            with pytest.raises(ValueError, match=rf"column\(s\) \['{name}'\] hold dates or durations"):
                model.decision_function(given)
    extra = frame.assign(when=pd.to_datetime(["2026-01-01", "2026-01-02"]))  # not a feature: no concern of the model's
    with pytest.raises(ValueError, match=r"not features \['when'\]"):
        model.decision_function(extra)


def test_the_operations_answer_to_the_bundles_own_model_name_only(model) -> None:  # type: ignore[no-untyped-def]
    own = model.score(X[:2], model="digits-diag")["anomaly_score"]
    np.testing.assert_array_equal(own, model.score(X[:2])["anomaly_score"])
    with pytest.raises(ValueError, match="model 'fraud' asked of a local bundle of model 'digits-diag' version 1"):
        model.sample(2, model="fraud")


def test_a_models_folder_given_for_a_bundle_is_refused_naming_its_versions(serving_repository: Path) -> None:
    with pytest.raises(BundleError, match=r"digits-diag holds versions \[1\] of a model, not a bundle: open one"):
        load(serving_repository / "digits-diag", device="cpu")


def test_a_folder_that_holds_no_bundle_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=f"^{re.escape(str(tmp_path))}: cannot read manifest.json"):
        load(tmp_path, device="cpu")


def test_an_unpickled_model_that_fails_to_open_is_named_as_the_model_not_its_temporary_folder(
    serving_repository: Path,
) -> None:
    from runtime.local import LOCAL_LIMITS, _reopened

    folder = serving_repository / "digits-diag" / "1"
    files = {name: (folder / name).read_bytes() for name in ("manifest.json", "encoder.onnx", "decoder.onnx")}
    files["scorer.onnx"] = (folder / "scorer.onnx").read_bytes() + b"tampered"
    with pytest.raises(BundleError, match=r"^the unpickled model 'digits-diag' version 1: scorer.onnx"):
        _reopened(files, "cpu", LOCAL_LIMITS, 0)


def test_no_gpu_for_device_auto_is_no_warning(serving_repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    # onnxruntime-gpu lists CUDA on a machine without a GPU: device "auto" on CPU is the ordinary case there, and
    # vae-score and load() printed a warning on every run
    import onnxruntime as ort

    from runtime import bundle as runtime_bundle

    encoder = (serving_repository / "digits-diag" / "1" / "encoder.onnx").read_bytes()
    listed = [*ort.get_available_providers(), "CUDAExecutionProvider"]
    with pytest.MonkeyPatch.context() as mp, caplog.at_level("INFO", logger="runtime.bundle"):
        mp.setattr(runtime_bundle.ort, "get_available_providers", lambda: listed)
        decided = runtime_bundle.providers_for("auto", encoder)
    if decided != ["CPUExecutionProvider"]:
        pytest.skip("this machine runs onnxruntime on CUDA")  # the case is a machine without one
    assert [r.levelname for r in caplog.records if "CUDA provider listed but unusable" in r.message] == ["INFO"]


def test_contributions_are_keyed_by_feature_name(model) -> None:  # type: ignore[no-untyped-def]
    contributions = model.feature_contributions(X[:3])
    assert list(contributions) == list(model.feature_names_in_) and contributions["pixel_3_4"].shape == (3,)
    again = model.feature_contributions(X[:3], explain=True)  # score's options, explain among them
    np.testing.assert_array_equal(again["pixel_3_4"], contributions["pixel_3_4"])


def test_generation_and_decoding_have_the_models_widths(model) -> None:  # type: ignore[no-untyped-def]
    assert model.sample(5, seed=1).shape == (5, 64)
    both = model.sample(5, seed=1, return_latents=True)  # the rows and the codes they were decoded from
    np.testing.assert_array_equal(both["samples"], model.sample(5, seed=1))
    assert both["latents"].shape == (5, model.manifest_.latent_dim)
    assert model.decode(np.zeros((2, 4)))["mean"].shape == (2, 64)


def test_loading_and_scoring_import_no_torch(serving_repository: Path) -> None:
    code = (
        "import sys, numpy as np; from gaussian_vae import load; "
        f"m = load({str(serving_repository / 'digits-diag' / '1')!r}, device='cpu'); "
        "m.decision_function(np.zeros((2, 64))); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
