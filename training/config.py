"""ModelConfig and TrainConfig: the only place hyperparameter defaults live (the CLI reads them from here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Covariance = Literal["diagonal", "full"]
Activation = Literal["relu", "gelu", "tanh", "silu"]
Objective = Literal["elbo", "iwae"]

# Log-variances of both networks are softly kept in [LOG_VAR_MIN, LOG_VAR_MAX] (standardised units) so one
# bad minibatch cannot produce inf/NaN: exp(-12) ~ 6e-6, exp(8) ~ 3e3.
LOG_VAR_MIN = -12.0
LOG_VAR_MAX = 8.0
# The encoder sees standardised rows clamped to ±this: no training row lies further out (a z-score is at most
# √(N - 1)), and a row sent from far away cannot overflow the network.
ENCODER_INPUT_BOUND = 1e4


@dataclass(frozen=True)
class ModelConfig:
    input_dim: int
    latent_dim: int = 16
    hidden: tuple[int, ...] = (256, 256)
    activation: Activation = "relu"
    covariance: Covariance = "diagonal"
    # Decoder variance floor relative to each feature's own variance (standardised units); a lattice feature's floor
    # is never below its bin's variance h²/12 (training/features.py), which is what stops the likelihood running
    # off to infinity on quantised data.
    decoder_var_floor: float = 1e-3
    # Smallest diagonal entry of the full-covariance Cholesky factor: L_ii = softplus(b_i) + scale_tril_min.
    scale_tril_min: float = 1e-3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 500
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    samples: int = 1  # K reparameterised samples per row in the training objective
    objective: Objective = "elbo"  # "iwae": the importance-weighted bound IWAE_K with K = samples
    warmup_epochs: int = 20  # KL weight beta rises linearly from 0 to 1 over these epochs (0 = off)
    free_bits: float = 0.0  # nats per latent dimension (0 = off)
    grad_clip: float = 10.0  # max global gradient norm (0 = off)
    patience: int = 50  # early stopping: epochs without a better validation ELBO
    min_delta: float = 1e-3  # a validation ELBO must beat the best by this much (nats) to count as better
    seed: int = 0
    device: str = "cpu"
    eval_samples: int = 256  # K of the IWAE_K bound in the final evaluation
    score_samples: int = 16  # K of the -ELBO_K anomaly statistic in the manifest's reference
    threshold_quantile: float = 0.99
    # Rows of each of validation and test (a seeded sample when there are more) that the final diagnostics, the
    # anomaly reference and the plots use; 0 = all. Bounds rank 0's memory and time on tables larger than memory.
    eval_rows: int = 50_000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DataConfig:
    source: str
    key: str | None = None
    columns: tuple[str, ...] | None = None
    label_column: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # Find lattice (quantised) features: integers, pixels in k/16 (training/features.py). Off: all continuous.
    detect_lattice: bool = True
    # Train lattice features on x + h u, u ~ U[0, 1) (the bin [x, x + h)): a density on quantised values, not a spike.
    dequantize: bool = True
    seed: int = 0
