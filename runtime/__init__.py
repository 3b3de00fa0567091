"""The bundle runtime: load and verify a bundle, and run its four operations (encode, decode, sample, score) with
the noise, threshold and percentile rules of the API. onnxruntime and numpy only: no torch, no event loop. The
service's batched runner, the Python API and `vae-score` all run through it, so they return the same numbers."""

from runtime.bundle import Bundle, BundleError, DeviceUnavailable, load_bundle, resolve_providers
from runtime.errors import InputError, LimitExceeded, OperationError
from runtime.local import LocalModel, open_bundle
from runtime.operations import Limits, Operations, Plan

__all__ = [
    "Bundle",
    "BundleError",
    "DeviceUnavailable",
    "InputError",
    "LimitExceeded",
    "Limits",
    "LocalModel",
    "OperationError",
    "Operations",
    "Plan",
    "load_bundle",
    "open_bundle",
    "resolve_providers",
]
