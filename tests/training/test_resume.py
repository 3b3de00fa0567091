"""Resumable runs: an interrupted run continued from its checkpoint ends with the same weights as one that
never stopped; checkpoints are written atomically and removed once the bundle is published."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training.checkpoint import RUN_CHECKPOINT, load_model
from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from training.errors import ConfigError
from training.loop import TrainState, fit
from training.pipeline import RunResult, run

MODEL = ModelConfig(latent_dim=3, hidden=(32,))
TRAIN = TrainConfig(epochs=9, warmup_epochs=3, patience=50, eval_samples=8, score_samples=4, seed=5, refine_steps=30)
DATA = DataConfig(source="builtin:digits", seed=5, decorrelate="off")


def _run(
    repository: Path,
    model: ModelConfig = MODEL,
    train: TrainConfig = TRAIN,
    on_epoch: Callable[[Any], None] | None = None,
    **options: Any,
) -> RunResult:
    """A library run of DATA published as <repository>/m; options: RunConfig's checkpoint_every and resume."""
    return run(RunConfig(data=DATA, model=model, train=train, name="m", repository=repository, **options), on_epoch)


class Interrupt(Exception):
    """Stands in for a pre-empted job."""


def _stop_at(epoch: int):  # type: ignore[no-untyped-def]
    def on_epoch(m) -> None:  # type: ignore[no-untyped-def]
        if m.epoch == epoch:
            raise Interrupt

    return on_epoch


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fit_resumed_from_a_state_matches_an_uninterrupted_fit() -> None:
    from tests.training.test_loop import _digits, build_model

    x_train, x_val, scaling = _digits()
    cfg = TrainConfig(epochs=10, warmup_epochs=3, patience=50, seed=2, refine_steps=30)

    def new_model():  # type: ignore[no-untyped-def]
        return build_model(ModelConfig(input_dim=64, latent_dim=3, hidden=(32,)), scaling, 2)

    whole = new_model()
    full = fit(whole, x_train, x_val, cfg)
    saved: list[TrainState] = []
    broken = new_model()
    with pytest.raises(Interrupt):
        fit(broken, x_train, x_val, cfg, on_epoch=_stop_at(7), on_checkpoint=saved.append, checkpoint_every=3)
    assert [s.epoch for s in saved] == [3, 6]
    resumed_model = new_model()
    resumed = fit(resumed_model, x_train, x_val, cfg, resume=TrainState.from_dict(saved[-1].to_dict()))
    _same_weights(whole.state_dict(), resumed_model.state_dict())
    assert [m.val_elbo for m in resumed.history] == [m.val_elbo for m in full.history]
    assert resumed.best_epoch == full.best_epoch


def _interrupted(cfg: TrainConfig, stop: int) -> tuple[Callable[[], Any], Any, TrainState]:
    """(a new model, (x_train, x_val), the last checkpoint) of a digits fit stopped after epoch `stop`."""
    from tests.training.test_loop import _digits, build_model

    x_train, x_val, scaling = _digits()

    def new_model() -> Any:
        return build_model(ModelConfig(input_dim=64, latent_dim=3, hidden=(32,)), scaling, 2)

    saved: list[TrainState] = []
    with pytest.raises(Interrupt):
        fit(new_model(), x_train, x_val, cfg, on_epoch=_stop_at(stop), on_checkpoint=saved.append, checkpoint_every=2)
    return new_model, (x_train, x_val), saved[-1]


def test_a_resumed_fit_trains_with_its_own_learning_rate_and_weight_decay() -> None:
    # a run continued with another --lr (a finished bundle trained further, say) used the checkpoint's, while its
    # manifest recorded the new one
    cfg = TrainConfig(epochs=6, warmup_epochs=3, patience=50, seed=2, refine_steps=30)
    new_model, rows, state = _interrupted(cfg, stop=4)
    weights = []
    for lr, decay in ((cfg.learning_rate, cfg.weight_decay),) * 2 + ((cfg.learning_rate * 10, 0.01),):
        model = new_model()
        fit(
            model,
            *rows,
            TrainConfig(**{**cfg.to_dict(), "learning_rate": lr, "weight_decay": decay}),
            resume=copy.deepcopy(state),  # one each: a fit steps Adam's moments in place
        )
        weights.append(model.state_dict())
    _same_weights(weights[0], weights[1])  # the same settings: the same weights
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # the same too, before this fix


def test_a_checkpoint_of_another_devices_generator_is_refused_naming_the_device() -> None:
    # a pre-empted GPU run resumed on a CPU node (--device auto): its generator state (16 bytes on CUDA) does not fit
    # a CPU generator, and the run stopped with a traceback
    cfg = TrainConfig(epochs=4, warmup_epochs=1, patience=50, seed=2, refine_steps=30)
    new_model, rows, cuda_like = _interrupted(cfg, stop=3)
    cuda_like.generator = torch.zeros(16, dtype=torch.uint8)
    with pytest.raises(ConfigError, match=r"another device than this run's \(cpu\): resume it with the --device"):
        fit(new_model(), *rows, cfg, resume=cuda_like)


def test_interrupted_cli_run_resumes_from_its_checkpoint_to_the_same_bundle(tmp_path: Path) -> None:
    whole = _run(tmp_path / "a")
    with pytest.raises(Interrupt):
        _run(tmp_path / "b", on_epoch=_stop_at(8), checkpoint_every=2)
    run_file = tmp_path / "b" / "m" / RUN_CHECKPOINT
    assert run_file.is_file() and not (tmp_path / "b" / "m" / "1").exists()  # nothing published
    assert not list((tmp_path / "b" / "m").glob("*.part"))
    resumed = _run(tmp_path / "b", resume=run_file, checkpoint_every=2)
    _same_weights(
        load_model(whole.bundle_dir / "checkpoint.pt").state_dict(),
        load_model(resumed.bundle_dir / "checkpoint.pt").state_dict(),
    )
    assert resumed.manifest.training.epochs_run == whole.manifest.training.epochs_run
    assert not run_file.exists()  # the published bundle holds the final state


def test_a_finished_bundle_can_be_trained_further(tmp_path: Path) -> None:
    first = _run(tmp_path)
    more = TrainConfig(**{**TRAIN.to_dict(), "epochs": 12})
    second = _run(tmp_path, train=more, resume=first.bundle_dir)
    assert second.manifest.version == 2 and second.manifest.training.epochs_run == 12


def test_a_full_covariance_bundle_refined_from_a_diagonal_encoder_can_be_trained_further(tmp_path: Path) -> None:
    full = ModelConfig(**{**MODEL.to_dict(), "covariance": "full"})
    short = {"epochs": 4, "warmup_epochs": 1}
    refined = TrainConfig(**{**TRAIN.to_dict(), **short, "refine_steps": 20})
    first = _run(tmp_path, full, refined)
    assert first.manifest.covariance == "full"
    more = TrainConfig(**{**refined.to_dict(), "epochs": 6})
    second = _run(tmp_path, full, more, resume=first.bundle_dir)
    assert second.manifest.covariance == "full" and second.manifest.training.epochs_run == 6
    # its training state is the diagonal encoder's: it continues with the refinement on, and the message says so
    for unrefined in ({"refine_steps": 0}, {"objective": "iwae", "samples": 2}):
        with pytest.raises(ConfigError, match=r"made full after training.*Resume it with the refinement on"):
            _run(tmp_path, full, TrainConfig(**{**more.to_dict(), **unrefined}), resume=first.bundle_dir)
    # trained jointly full (no refinement), it cannot continue as a diagonal training
    jointly = TrainConfig(**{**TRAIN.to_dict(), **short, "refine_steps": 0})
    joint = _run(tmp_path / "joint", full, jointly)
    with pytest.raises(ConfigError, match="Resume it with --refine-steps 0"):
        _run(tmp_path, full, more, resume=joint.bundle_dir)
    onwards = _run(tmp_path / "joint", full, TrainConfig(**{**jointly.to_dict(), "epochs": 6}), resume=joint.bundle_dir)
    assert onwards.manifest.covariance == "full" and onwards.manifest.training.epochs_run == 6


def test_resume_refuses_a_checkpoint_of_another_model_or_data(tmp_path: Path) -> None:
    first = _run(tmp_path)
    with pytest.raises(ConfigError, match=r"its model options differ from this run's \(latent_dim 3 then, 4 now\)"):
        _run(tmp_path, ModelConfig(latent_dim=4, hidden=(32,)), resume=first.bundle_dir)
    with pytest.raises(ConfigError, match="no such checkpoint"):
        _run(tmp_path, resume=tmp_path / "missing.pt")


QUICK = TrainConfig(
    epochs=3, warmup_epochs=1, eval_samples=4, score_samples=2, seed=5, refine_steps=0, prior="standard"
)


def _file_run(
    repository: Path, source: Path | str, on_epoch: Callable[[Any], None] | None = None, **options: Any
) -> RunResult:
    data = DataConfig(**{"source": str(source), "seed": 5, "decorrelate": "off", **options.pop("data", {})})
    return run(RunConfig(data=data, model=MODEL, train=QUICK, name="m", repository=repository, **options), on_epoch)


def test_resume_refuses_other_rows_or_another_split_and_takes_the_same_rows_wherever_they_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.datasets import load_digits

    rows = load_digits().data.astype(np.float32)
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    np.save("d.npy", rows)
    with pytest.raises(Interrupt):  # trained on "d.npy", a path relative to a/
        _file_run(tmp_path / "out", "d.npy", checkpoint_every=1, on_epoch=_stop_at(2))
    run_file = tmp_path / "out" / "m" / RUN_CHECKPOINT
    with pytest.raises(ConfigError, match=r"trained with --val-fraction 0.1, this run with --val-fraction 0.2; a run"):
        _file_run(tmp_path / "out", "d.npy", resume=run_file, data={"val_fraction": 0.2})
    with pytest.raises(ConfigError, match=r"trained with --no-lattice not given, this run with --no-lattice given"):
        _file_run(tmp_path / "out", "d.npy", resume=run_file, data={"detect_lattice": False})
    with pytest.raises(ConfigError, match=r"trained on 64 features, this run's table gives 63; the data or the col"):
        np.save("narrow.npy", rows[:, 1:])
        _file_run(tmp_path / "out", "narrow.npy", resume=run_file)
    np.save("d.npy", rows * 1000)  # the same file name, other values: the graphs would standardise with the old scale
    with pytest.raises(ConfigError, match=r"validation and test rows are not those it was trained with"):
        _file_run(tmp_path / "out", "d.npy", resume=run_file)
    np.save("d.npy", rows[::-1])  # the same values in another order: same scaling, but other rows in validation
    with pytest.raises(ConfigError, match=r"validation and test rows are not those it was trained with"):
        _file_run(tmp_path / "out", "d.npy", resume=run_file)
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "b" / "moved.npy", rows)  # the same rows, moved: where they live does not matter
    monkeypatch.chdir(tmp_path / "b")
    resumed = _file_run(tmp_path / "out", "moved.npy", resume=run_file)
    assert resumed.manifest is not None and resumed.manifest.training.epochs_run == 3
    assert not run_file.exists()


def test_a_new_run_neither_overwrites_nor_removes_an_unfinished_runs_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(Interrupt):
        _run(tmp_path, train=QUICK, checkpoint_every=1, on_epoch=_stop_at(2))
    run_file = tmp_path / "m" / RUN_CHECKPOINT
    saved = run_file.read_bytes()
    with pytest.raises(ConfigError, match=r"holds the checkpoint of a run that did not finish.*--resume .*or delete"):
        _run(tmp_path, train=QUICK)
    published = _run(tmp_path, train=QUICK, checkpoint_every=0)  # a run that writes none leaves it alone
    assert published.manifest is not None and published.manifest.version == 1
    assert run_file.read_bytes() == saved
    # --resume auto (a restarted job's one command line): it continues the unfinished run, then starts anew
    continued = _run(tmp_path, train=QUICK, resume="auto")
    assert continued.manifest is not None and continued.manifest.training.epochs_run == 3
    assert not run_file.exists()
    fresh = _run(tmp_path, train=QUICK, resume="auto")
    assert fresh.manifest is not None and fresh.manifest.version == 3


def test_a_run_under_a_name_another_live_run_trains_is_refused(tmp_path: Path) -> None:
    import fcntl

    from training.resume import LOCK_FILE

    (tmp_path / "m").mkdir()
    with open(tmp_path / "m" / LOCK_FILE, "w") as held:  # as a live vae-train process holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match=r"another run under the name 'm' is training into .*/m now"):
            _run(tmp_path, train=QUICK)
    assert _run(tmp_path, train=QUICK, checkpoint_every=0).manifest is not None  # writes no run checkpoint: free


def test_a_wrong_resume_or_out_is_refused_before_the_data_are_read(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "file").write_text("not a folder")
    never = DataConfig(source=str(tmp_path / "missing.npy"))  # reading it would fail with another message
    with pytest.raises(ConfigError, match=r"manifest.json: not a vae-train checkpoint"):
        run(RunConfig(data=never, name="m", repository=tmp_path, resume=tmp_path / "manifest.json"))
    with pytest.raises(ConfigError, match=r"--out .*/file: .*/file is not a folder, so no bundle can be published"):
        run(RunConfig(data=never, name="m", repository=tmp_path / "file"))


def test_a_checkpoint_write_that_fails_leaves_no_part_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import checkpoint

    def full_disk(obj: object, f: Any) -> None:
        f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    state = TrainState(0, {}, {}, torch.zeros(1), {}, 0.0, 0, [], 0.0)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save_run_checkpoint(tmp_path / RUN_CHECKPOINT, {}, {}, state)
    assert list(tmp_path.iterdir()) == []
