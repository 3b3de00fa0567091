"""Training-side failures, each raised where it is detected; the CLI turns them into one clear line."""


class TrainingError(Exception):
    """A failure reported to the user of `vae-train`."""


class ConfigError(TrainingError):
    """An option is invalid or cannot be honoured (e.g. --device cuda without CUDA, a bad model name)."""


class DataError(TrainingError):
    """The input data cannot be used: missing, unreadable, non-numeric, non-finite, too small, wrong shape."""


class UnsupportedFormat(DataError):
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
