"""Every training option is defined once (training/config.py): the CLI's flags and defaults come from it, and a
library caller gets the command line's errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training.cli import build_parser, configs, main
from training.config import DataConfig, ModelConfig, TrainConfig, flag_of
from training.errors import ConfigError


def test_every_config_field_has_a_flag_in_help() -> None:
    text = build_parser().format_help()
    for config in (DataConfig, ModelConfig, TrainConfig):
        for f in dataclasses.fields(config):
            if f.metadata.get("cli", True):
                assert flag_of(f) in text, f.name


def test_the_command_lines_defaults_are_the_configs_defaults() -> None:
    data, model_options, train = configs(build_parser().parse_args(["--data", "builtin:digits"]))
    assert train == TrainConfig() and data == DataConfig(source="builtin:digits")
    assert ModelConfig(input_dim=3, **model_options) == ModelConfig(input_dim=3)


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
        (lambda: ModelConfig(input_dim=4, hidden=(8, 0)), "--hidden must be positive sizes, got (8, 0)"),
        (lambda: ModelConfig(input_dim=4, latent_dim=0), "--latent-dim must be positive, got 0"),
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
        (["--objective", "iwae", "--free-bits", "1"], "--free-bits applies to the ELBO objective"),
    ],
)
def test_the_command_line_refuses_the_same_values_before_reading_data(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data", "does-not-exist.csv", *argv]) == 2
    assert message in capsys.readouterr().err


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
