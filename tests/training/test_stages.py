"""The stages of a run (load -> fit -> evaluate -> build_bundle) called one by one, as the estimator calls them: a
servable bundle from builtin:digits, and the same model from the same rows held in memory, with nothing written."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.bundle import load_bundle
from tests.conftest import FAST_TRAIN
from training.checkpoint import RUN_CHECKPOINT
from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from training.data import Table, load_table
from training.errors import DataError
from training.pipeline import build_bundle
from training.stages import evaluate, fit, load, load_from_table

TRAIN = TrainConfig(**{**FAST_TRAIN.to_dict(), "epochs": 4, "warmup_epochs": 1, "device": "cpu"})
MODEL = ModelConfig(latent_dim=4, hidden=(32,))


def _run(repository: Path, **changes: object) -> RunConfig:
    data = DataConfig(source="builtin:digits", decorrelate="off")
    return RunConfig(data, MODEL, TRAIN, repository=repository, **changes)  # type: ignore[arg-type]


def test_the_stages_end_to_end_publish_a_bundle_the_service_loads(tmp_path: Path) -> None:
    run = _run(tmp_path, name="stages", checkpoint_every=2)
    data = load(run)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # loading writes nothing
    fitted = fit(run, data)
    assert (tmp_path / "stages" / RUN_CHECKPOINT).is_file()  # resumable while the run goes on
    evaluation = evaluate(run, data, fitted)
    assert set(evaluation.diagnostics) == {"validation", "test"} and evaluation.scores.shape == (data.split.val.size,)
    result = build_bundle(run, data, fitted, evaluation)
    assert result.bundle_dir == tmp_path / "stages" / "1" and result.manifest is not None
    bundle = load_bundle(result.bundle_dir, ["CPUExecutionProvider"])  # manifest, hashes, shapes, a warm-up run
    assert bundle.manifest.input_dim == 64 and bundle.manifest.image_shape == [8, 8]
    assert result.manifest.diagnostics == evaluation.diagnostics and result.manifest.training.epochs_run == 4
    assert not (tmp_path / "stages" / RUN_CHECKPOINT).exists()  # the bundle's checkpoint.pt replaces it


def test_rows_in_memory_train_the_same_model_as_the_source_and_write_nothing(tmp_path: Path) -> None:
    run = _run(tmp_path, checkpoint_every=0)
    from_file = load(run)
    digits = load_table("builtin:digits")
    in_memory = load_from_table(replace(run, data=replace(run.data, source="X")), replace(digits, x=digits.x * 1.0))
    np.testing.assert_array_equal(in_memory.split.val, from_file.split.val)
    a, b = fit(run, from_file), fit(run, in_memory)
    wa, wb = a.model.state_dict(), b.model.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert evaluate(run, from_file, a).diagnostics == evaluate(run, in_memory, b).diagnostics
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_a_table_in_memory_gets_the_checks_of_a_file(tmp_path: Path) -> None:
    x = np.ones((20, 3), dtype=np.float32)
    x[5, 1] = np.inf
    run = _run(tmp_path)
    with pytest.raises(DataError, match=r"digits: 1 NaN or infinite values .* row 5"):
        load_from_table(run, Table(x, None, None))
    with pytest.raises(DataError, match="at least 10 are needed"):
        load_from_table(run, Table(np.ones((4, 3)), None, None))
    with pytest.raises(DataError, match="configured for 5"):
        load_from_table(replace(run, model=replace(MODEL, input_dim=5)), Table(np.eye(20, 3), None, None))


def test_fit_runs_torch_on_the_threads_asked_for_or_on_the_usable_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = torch.get_num_threads()
    try:
        one = _run(tmp_path, checkpoint_every=0)
        one = replace(one, train=replace(one.train, epochs=1, threads=1))
        fit(one, load(one))
        assert torch.get_num_threads() == 1
        monkeypatch.setattr("runtime.cpus.usable_cpus", lambda: 4)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun ranks on this machine share its CPUs
        auto = replace(one, train=replace(one.train, threads=0))
        fit(auto, load(auto))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
