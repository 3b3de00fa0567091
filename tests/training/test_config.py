"""Every training option is defined once (training/config.py): the CLI's flags and defaults come from it, and a
library caller gets the command line's errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from training.cli import build_parser, dest_of, main, run_config
from training.config import CHECKPOINT_EVERY, DataConfig, ModelConfig, RunConfig, TrainConfig, flag_of, options
from training.errors import ConfigError

CONFIGS = (DataConfig, ModelConfig, TrainConfig, RunConfig)
# Fields that are not options: the data decides input_dim, --seed sets DataConfig.seed, RunConfig nests the configs.
NOT_OPTIONS = {"input_dim", "DataConfig.seed", "data", "model", "train", "arguments"}


def test_every_config_field_is_an_option_with_a_flag_in_help() -> None:
    text = build_parser().format_help()
    for config in CONFIGS:
        for f in dataclasses.fields(config):
            if f in options(config):
                assert flag_of(f) in text and f.metadata["help"], f.name
            else:
                assert f.name in NOT_OPTIONS or f"{config.__name__}.{f.name}" in NOT_OPTIONS, f.name


def test_every_options_command_line_default_is_its_config_default() -> None:
    parser = build_parser()
    for config in CONFIGS:
        for f in options(config):
            expected = None if f.default is dataclasses.MISSING else f.default
            assert parser.get_default(dest_of(f)) == expected, flag_of(f)


def test_the_command_lines_run_is_the_default_run() -> None:
    config = run_config(build_parser().parse_args(["--data", "builtin:digits"]))
    assert config == RunConfig(DataConfig(source="builtin:digits"))
    assert config.train.device == "auto" and config.checkpoint_every == CHECKPOINT_EVERY == 10
    assert config.model_name == "digits" and config.model_dir == Path("models/digits")
    assert config.arguments["data"] == "builtin:digits" and config.arguments["lr"] == 1e-3  # argparse's names


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DataConfig(source="x", val_fraction=0.7), "--val-fraction must be in (0, 0.5), got 0.7"),
        (lambda: DataConfig(source="x", test_fraction=-0.1), "--test-fraction must be in [0, 0.5), got -0.1"),
        (lambda: TrainConfig(threshold_quantile=1.0), "--threshold-quantile must lie in (0, 1), got 1.0"),
        (lambda: TrainConfig(epochs=0), "--epochs must be positive, got 0"),
        (lambda: TrainConfig(learning_rate=-1.0), "--lr must be positive, got -1.0"),
        (lambda: TrainConfig(eval_rows=-1), "--eval-rows must be 0 (all) or a positive number of rows"),
        (lambda: TrainConfig(objective="iwae", free_bits=0.5), "--free-bits applies to the ELBO objective"),
        (lambda: TrainConfig(trim=0.5), "--trim must be in [0, 0.5), got 0.5"),
        (lambda: TrainConfig(trim=-0.01), "--trim must be in [0, 0.5), got -0.01"),
        (lambda: TrainConfig(trim=float("nan")), "--trim must be a finite number, got nan"),
        (
            lambda: ModelConfig(input_dim=4, decoder_var_floor=float("inf")),
            "--decoder-var-floor must be a finite number, got inf",
        ),
        (lambda: TrainConfig(learning_rate=float("inf")), "--lr must be a finite number, got inf"),
        (lambda: TrainConfig(device="tpu"), "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (lambda: DataConfig(source="x", columns=("a", "a")), "--columns must name each column once, got ('a', 'a')"),
        (lambda: DataConfig(source="x", exclude_columns=("b", "b")), "--exclude-columns must name each column once"),
        (lambda: ModelConfig(input_dim=4, hidden=(8, 0)), "--hidden must be positive sizes, got (8, 0)"),
        (lambda: ModelConfig(input_dim=4, latent_dim=0), "--latent-dim must be positive, got 0"),
        (lambda: RunConfig(DataConfig(source="x"), checkpoint_every=-1), "--checkpoint-every must be 0 (off) or a"),
        (lambda: RunConfig(DataConfig(source="x"), name="Bad Name"), "--name must match [a-z0-9][a-z0-9_-]{0,63}"),
        (lambda: RunConfig(DataConfig(source="x"), image_shape=(0, 8)), "--image-shape must be positive sizes"),
    ],
)
def test_a_library_caller_gets_the_command_lines_error(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        build()
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--val-fraction", "0.7"], "--val-fraction must be in (0, 0.5), got 0.7"),
        (["--hidden", "8,0"], "--hidden must be positive sizes"),
        (["--decoder-var-floor", "inf"], "--decoder-var-floor must be a finite number, got inf"),
        (["--device", "CUDA"], "--device must be auto, cpu, cuda or cuda:N, got 'CUDA'"),
        (["--objective", "iwae", "--free-bits", "1"], "--free-bits applies to the ELBO objective"),
    ],
)
def test_the_command_line_refuses_the_same_values_before_reading_data(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data", "does-not-exist.csv", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--hidden", "8,,8"], ["--columns", ""], ["--exclude-columns", "id,"]])
def test_a_list_with_an_empty_item_is_refused_not_read_as_fewer_items(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--data", "does-not-exist.csv", *argv])
    assert exited.value.code == 2
    assert f"expected comma-separated names or sizes, none empty, got {argv[1]!r}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "library"),
    [
        (["--checkpoint-every", "-2"], {"checkpoint_every": -2}),
        (["--name", "Bad Name"], {"name": "Bad Name"}),
        (["--latent-dim", "0"], {"model": {"latent_dim": 0}}),
        (["--val-fraction", "0.7"], {"data": {"val_fraction": 0.7}}),
        (["--epochs", "0"], {"train": {"epochs": 0}}),
    ],
)
def test_a_library_run_and_the_command_line_fail_with_the_same_message(
    argv: list[str], library: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.pipeline import run

    assert main(["--data", "builtin:digits", "--out", str(tmp_path), "--quiet", *argv]) == 2
    cli_message = capsys.readouterr().err.strip()
    with pytest.raises(ConfigError) as info:
        run(
            RunConfig(
                data=DataConfig(source="builtin:digits", **library.get("data", {})),
                model=ModelConfig(**library.get("model", {})),
                train=TrainConfig(**library.get("train", {})),
                name=library.get("name", "digits"),
                repository=tmp_path,
                checkpoint_every=library.get("checkpoint_every", CHECKPOINT_EVERY),
            )
        )
    assert cli_message == f"vae-train: error: {info.value}"
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_table_options_reach_the_reader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["id;a;b;c"] + [f"C-{i};{i % 7};{(i * 3) % 5};{i % 2}" for i in range(60)] + ["C-99;;1;0"]
    (tmp_path / "t.csv").write_text("\n".join(rows))
    base = ["--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "m"), "--epochs", "2", "--quiet"]
    assert main(base) == 2 and "looks semicolon-separated: pass --delimiter ';'" in capsys.readouterr().err
    assert main([*base, "--delimiter", ";"]) == 2 and "--exclude-columns id" in capsys.readouterr().err
    assert main([*base, "--delimiter", ";", "--exclude-columns", "id"]) == 2
    assert "pass --na drop" in capsys.readouterr().err
    assert main([*base, "--delimiter", ";", "--exclude-columns", "id", "--na", "drop", "--hidden", "8"]) == 0
    assert (tmp_path / "m" / "t" / "1" / "manifest.json").is_file()
