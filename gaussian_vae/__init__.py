"""The Gaussian VAE in Python, one import for users:

    from gaussian_vae import VAE, load

    detector = VAE(epochs=200).fit(X_train)        # trains (needs the `train` extra: torch)
    detector.decision_function(X_new)              # anomaly scores, higher = more anomalous
    detector.save("models", "my-model")            # a bundle vae-serve serves
    same = load("models/my-model/1")               # scoring without torch (onnxruntime only)
    score_frame(batch, "models/my-model/1")        # a DataFrame or pyarrow Table with the scores beside it
    score_files("models/my-model/1", "s3://lake/events/", "s3://lake/scores/", workers=4)   # as vae-score does

See README.md, "Python API".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gaussian_vae.cli import score_files
from gaussian_vae.model import BundleModel, load
from gaussian_vae.partitions import score_frame
from runtime import BundleError, DeviceUnavailable
from vae_tables import DataError

if TYPE_CHECKING:
    from gaussian_vae.estimator import VAE

# what they raise: DataError (bad data, options, partitions), BundleError (a bundle that cannot be opened),
# DeviceUnavailable (device="cuda" without a usable GPU)
__all__ = ["VAE", "BundleError", "BundleModel", "DataError", "DeviceUnavailable", "load", "score_files", "score_frame"]


def __getattr__(name: str) -> Any:
    # VAE needs torch; importing it lazily keeps `load` usable where only onnxruntime is installed
    if name == "VAE":
        from gaussian_vae.estimator import VAE

        return VAE
    raise AttributeError(f"module 'gaussian_vae' has no attribute {name!r}")
