"""Training-side failures, each raised where it is detected; the CLI turns them into one clear line.

DataError lives in vae_tables/ (torch-free), where the tables are read; it is a TrainingError because TrainingError is
the root every command-line tool reports in one line (vae_tables.errors.ReportedError).
"""

from vae_tables.errors import DataError, ReportedError

TrainingError = ReportedError  # a failure reported to the user of `vae-train`: the base of every class below


class ConfigError(TrainingError):
    """An option is invalid or cannot be honoured (e.g. --device cuda without CUDA, a bad model name)."""


class UnsupportedFormat(DataError):
    """A file name with a suffix no reader takes (vae_tables/sources.py decides)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path}: unsupported data format; use builtin:digits, .npy, .npz, .parquet, "
            ".csv, .tsv or .txt (each also .gz)"
        )


class NonFiniteLoss(TrainingError):
    """The objective became inf/NaN: training stops and no bundle is written."""


class ParityError(TrainingError):
    def __init__(self, graph: str, output: str, max_abs_diff: float, atol: float, rtol: float) -> None:
        super().__init__(
            f"ONNX parity failed for {graph}.{output}: max |ort - torch| = {max_abs_diff:.3g} "
            f"exceeds atol {atol:g} + rtol {rtol:g} * |torch|"
        )
        self.max_abs_diff = max_abs_diff
