"""ModelConfig, TrainConfig, DataConfig and RunConfig: every training option once, with its default, its help, its
flag and its rule. `vae-train`'s options are generated from these fields (training/cli.py) and the estimator's
parameters too (gaussian_vae/estimator.py); each config checks its rules when it is built, so a library caller gets
the same error as the command line ("--val-fraction must be in (0, 0.5), got 0.7").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from contract import is_valid_name
from training.errors import ConfigError

Covariance = Literal["diagonal", "full"]
Activation = Literal["relu", "gelu", "tanh", "silu"]
Objective = Literal["elbo", "iwae"]
PriorKind = Literal["mixture", "standard"]
NaPolicy = Literal["stop", "drop"]
Decorrelate = Literal["auto", "on", "off"]
Rule = Callable[[Any], bool]

# Log-variances of both networks are softly kept in [LOG_VAR_MIN, LOG_VAR_MAX] (standardised units) so one
# bad minibatch cannot produce inf/NaN: exp(-12) ~ 6e-6, exp(8) ~ 3e3.
LOG_VAR_MIN = -12.0
LOG_VAR_MAX = 8.0
# The encoder sees standardised rows clamped to ±this: no training row lies further out (a z-score is at most
# √(N - 1)), and a row sent from far away cannot overflow the network.
ENCODER_INPUT_BOUND = 1e4

# Epochs between resumable checkpoints of a run (0 = off), for the CLI and library callers alike: a long run can be
# continued after a pre-emption, and a save every 10 epochs costs little next to 10 epochs of training.
CHECKPOINT_EVERY = 10
RESUME_AUTO = "auto"  # --resume auto
POSITIVE: tuple[Rule, str] = (lambda v: v > 0, "must be positive")
NON_NEGATIVE: tuple[Rule, str] = (lambda v: v >= 0, "must be 0 or more")
ONCE_EACH: tuple[Rule, str] = (lambda v: len(set(v)) == len(v), "must name each column once")
POSITIVE_SIZES: tuple[Rule, str] = (lambda v: len(v) > 0 and all(s > 0 for s in v), "must be positive sizes")


def option(
    default: Any, help: str, *, flag: str | None = None, rule: tuple[Rule, str] | None = None, cli: bool = True
) -> Any:
    """A config field: its default, the help of its flag (--<name with dashes> unless `flag`), and its rule."""
    return field(default=default, metadata={"help": help, "flag": flag, "rule": rule, "cli": cli})


def flag_of(f: Field[Any]) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def options(config: type) -> list[Field[Any]]:
    """The fields of a config class that are command-line options (each has help and a flag)."""
    return [f for f in fields(config) if "help" in f.metadata and f.metadata["cli"]]


def check(config: Any) -> None:
    """Every field's rule, and every number finite; ConfigError names the flag, the rule and the value."""
    for f in fields(config):
        rule = f.metadata.get("rule")
        value = getattr(config, f.name)
        # an infinite setting (--decoder-var-floor inf) reached the manifest as null, which no reader loads
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag_of(f)} must be a finite number, got {value!r}")
        if rule is not None and value is not None and not rule[0](value):
            raise ConfigError(f"{flag_of(f)} {rule[1]}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    input_dim: int | None = option(None, "features D (None: from the data, when a run loads it)", cli=False)
    latent_dim: int = option(16, "latent size d", rule=POSITIVE)
    hidden: tuple[int, ...] = option(
        (256, 256), "comma-separated hidden layer sizes of the encoder (the decoder mirrors them)", rule=POSITIVE_SIZES
    )
    activation: Activation = option("relu", "hidden-layer activation")
    covariance: Covariance = option(
        "diagonal",
        "encoder covariance: diagonal (mean-field) or full (Cholesky factor; with the refinement on, the joint "
        "training uses a diagonal encoder, made full before the refinement learns its correlations)",
    )
    # Decoder variance floor relative to each feature's own variance (standardised units); a lattice feature's floor
    # is never below its bin's variance h²/12 (training/features.py), which is what stops the likelihood running
    # off to infinity on quantised data.
    decoder_var_floor: float = option(
        1e-3,
        "floor on the decoder variance relative to each feature's own variance (a lattice feature's floor is never "
        "below its bin's variance h^2/12)",
        rule=POSITIVE,
    )
    # Smallest diagonal entry of the full-covariance Cholesky factor: L_ii = softplus(b_i) + scale_tril_min.
    scale_tril_min: float = option(
        1e-3, "smallest diagonal entry of the full covariance's Cholesky factor", rule=POSITIVE
    )

    def __post_init__(self) -> None:
        check(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(500, "maximum epochs", rule=POSITIVE)
    batch_size: int = option(
        128, "rows per minibatch, global: under torchrun each rank takes batch-size / ranks", rule=POSITIVE
    )
    learning_rate: float = option(1e-3, "Adam learning rate", flag="--lr", rule=POSITIVE)
    weight_decay: float = option(0.0, "Adam weight decay", rule=NON_NEGATIVE)
    samples: int = option(1, "K reparameterised samples per row in the training objective", rule=POSITIVE)
    objective: Objective = option(
        "elbo",
        "training objective: the ELBO (closed-form KL, averaged over the K samples) or the importance-weighted bound "
        "IWAE_K (K = --samples; tighter, so a better density for scoring)",
    )
    warmup_epochs: int = option(
        20, "KL weight rises linearly from 0 to 1 over these epochs (0 = off)", rule=NON_NEGATIVE
    )
    trim: float = option(
        0.0,
        "leave each minibatch's worst-fitting share of rows (lowest ELBO) out of its loss, and out of the mixture "
        "prior's fit, so that anomalies among the training rows are not learnt as normal; about the share of "
        "anomalies expected (0 = off)",
        rule=(lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    )
    refine_steps: int = option(
        10_000,
        "after training (and the prior's fit), train the encoder alone, the decoder and the prior fixed, for at most "
        "this many steps and no more than 5 times training's, on training rows and rows drawn from the model; "
        "keeps the encoder of best validation ELBO. Narrows the gap between the ELBO and log p(x) on unseen rows (0 = "
        "off; not run with --objective iwae)",
        rule=NON_NEGATIVE,
    )
    free_bits: float = option(0.0, "minimum KL per latent dimension in nats (0 = off)", rule=NON_NEGATIVE)
    grad_clip: float = option(10.0, "max gradient norm (0 = off)", rule=NON_NEGATIVE)
    patience: int = option(50, "stop after this many epochs without a better validation ELBO", rule=POSITIVE)
    min_delta: float = option(
        1e-3, "a validation ELBO must beat the best by this much (nats) to count as better", rule=NON_NEGATIVE
    )
    seed: int = option(0, "seed for the split, initial weights and noise", rule=NON_NEGATIVE)
    # auto: CUDA when torch sees a GPU, else CPU; the same default for the command line and library callers
    device: str = option(
        "auto",
        "auto (cuda when available), cpu, cuda or cuda:N",
        rule=(lambda v: re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", v) is not None, "must be auto, cpu, cuda or cuda:N"),
    )
    # torch's and onnxruntime's own defaults start a thread per host core, even in a container held to 2 CPUs
    threads: int = option(
        0,
        "CPU threads for torch and the export's onnxruntime check (0 = the CPUs this process may use: its affinity "
        "mask and cgroup CPU quota, shared among torchrun's local ranks)",
        rule=NON_NEGATIVE,
    )
    # The prior after training (training/prior.py): N(0, I), or a Gaussian mixture fitted to the aggregate posterior
    # and kept only when it beats N(0, I) on the validation ELBO.
    prior: PriorKind = option(
        "mixture",
        "prior of the exported model: mixture (a Gaussian mixture fitted to the aggregate posterior after training, "
        "its size chosen on the validation ELBO, kept only when it beats N(0, I) there) or standard (N(0, I))",
    )
    prior_components: int = option(32, "largest mixture tried for --prior mixture", rule=POSITIVE)
    eval_samples: int = option(256, "K of the IWAE_K log-likelihood bound in the final evaluation", rule=POSITIVE)
    score_samples: int = option(
        16, "K of the -ELBO_K anomaly statistic whose validation quantiles go in the manifest", rule=POSITIVE
    )
    threshold_quantile: float = option(
        0.99,
        "validation quantile of the anomaly score used as the default threshold",
        rule=(lambda v: 0 < v < 1, "must lie in (0, 1)"),
    )
    # Rows of each of validation and test (a seeded sample when there are more) that the final diagnostics, the
    # anomaly reference and the plots use; 0 = all. Bounds rank 0's memory and time on tables larger than memory.
    eval_rows: int = option(
        50_000,
        "rows of each of validation and test used by the final evaluation, the anomaly reference and the plots; a "
        "seeded sample when a split has more (0 = all)",
        rule=(lambda v: v >= 0, "must be 0 (all) or a positive number of rows"),
    )

    def __post_init__(self) -> None:
        check(self)
        if self.objective == "iwae" and self.free_bits > 0:
            raise ConfigError("--free-bits applies to the ELBO objective; drop it or use --objective elbo")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DataConfig:
    source: str = option(
        MISSING,
        "builtin:digits; a .npy, .npz, .csv/.tsv/.txt (each also .gz) or .parquet file; or a folder, glob or "
        "object-store URI (s3://, gs://, abfs://) of .parquet or text partitions",
        flag="--data",
    )
    key: str | None = option(None, "array to read from a .npz file holding several")
    columns: tuple[str, ...] | None = option(
        None,
        "comma-separated feature columns of a table file (default: every column but the label and excluded ones)",
        rule=ONCE_EACH,
    )
    exclude_columns: tuple[str, ...] | None = option(
        None, "comma-separated columns to leave out (ids, timestamps)", rule=ONCE_EACH
    )
    label_column: str | None = option(
        None,
        "a table column the model never sees: it colours the latent plot, and when it holds 0/1 (1 = anomaly) AUROC, "
        "average precision and precision/recall at the threshold are reported",
    )
    delimiter: str | None = option(None, "field separator of a text table (default: tab for .tsv, else comma)")
    na: NaPolicy = option("stop", "a row with a missing value (empty, NA, NaN, null): stop with an error, or drop it")
    val_fraction: float = option(
        0.1, "rows held out for validation", rule=(lambda v: 0 < v < 0.5, "must be in (0, 0.5)")
    )
    test_fraction: float = option(
        0.1,
        "rows held out for testing (0: none; every row goes to training and validation)",
        rule=(lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    )
    # Find lattice (quantised) features: integers, pixels in k/16 (training/features.py). Off: all continuous.
    detect_lattice: bool = option(
        True,
        "treat every feature as continuous (no lattice detection, no dequantisation, no bin variance floors)",
        flag="--no-lattice",
    )
    # Train lattice features on x + h u, u ~ U[0, 1) (the bin [x, x + h)): a density on quantised values, not a spike.
    dequantize: bool = option(
        True,
        "train lattice features on their values as they are instead of uniformly dequantised in their bin",
        flag="--no-dequantize",
    )
    # Model the non-constant features as y = L⁻¹ x_std, L the Cholesky factor of their training correlation
    # (training/features.py). auto trains both and judges them on validation ELBO: no labels, no test rows.
    decorrelate: Decorrelate = option(
        "auto",
        "model the non-constant features decorrelated by the Cholesky factor of their training correlation (on), as "
        "they are (off), or train both and keep the decorrelated model when its validation ELBO is higher by more "
        "than 0.5 nats a row (auto: twice the training time; off past 1024 non-constant features)",
    )
    seed: int = option(0, "seed of the split (the CLI's --seed sets it and TrainConfig.seed)", cli=False)

    def __post_init__(self) -> None:
        check(self)


def default_name(source: str) -> str:
    """A model name from a data source: builtin:digits -> digits, /x/My Data.csv -> my-data."""
    stem = source.split(":", 1)[1] if source.startswith("builtin:") else Path(source).stem
    name = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")[:64]
    return name or "model"


@dataclass(frozen=True)
class RunConfig:
    """One run: the data, model and training configs, and where the bundle goes (training/pipeline.py runs it)."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = option(
        None,
        "model name [a-z0-9][a-z0-9_-]*; default: derived from --data",
        rule=(is_valid_name, "must match [a-z0-9][a-z0-9_-]{0,63} (lower case, digits, _ and -)"),
    )
    repository: Path = option(Path("models"), "model repository folder", flag="--out")
    image_shape: tuple[int, int] | None = option(
        None,
        "HxW when rows are images, for sample/reconstruction grids (8x8 for builtin:digits)",
        rule=POSITIVE_SIZES,
    )
    checkpoint_every: int = option(
        CHECKPOINT_EVERY,
        "write a resumable checkpoint to <out>/<name>/checkpoint-latest.pt every N epochs (0 = off)",
        rule=(lambda v: v >= 0, "must be 0 (off) or a positive number of epochs"),
    )
    resume: Path | None = option(
        None,
        "continue from a checkpoint-latest.pt, a bundle's checkpoint.pt or a bundle folder "
        "(weights, optimiser, epoch, warm-up and best-so-far); pass the same data and model options (with "
        "--covariance full, also the refinement on or off, as trained). 'auto': continue from "
        "<out>/<name>/checkpoint-latest.pt when there is one, else start anew (for jobs that are restarted)",
    )
    # The command line as parsed, recorded in the manifest (training.arguments); empty for a library call.
    arguments: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "repository", Path(self.repository))  # a str from a library caller is fine too
        if self.resume is not None:
            object.__setattr__(self, "resume", Path(self.resume))
        check(self)

    @property
    def resumes_if_any(self) -> bool:
        """--resume auto: this run's own checkpoint-latest.pt when there is one, else a fresh start."""
        return self.resume is not None and str(self.resume) == RESUME_AUTO

    @property
    def model_name(self) -> str:
        return self.name or default_name(self.data.source)

    @property
    def model_dir(self) -> Path:
        """<repository>/<name>: the bundle's versions and the run's checkpoint-latest.pt."""
        return self.repository / self.model_name
