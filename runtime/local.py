"""LocalModel: a bundle in this process, its four operations called like the API's, synchronously.

The same request parameters (contract/requests.py, validated the same way), the same plans (runtime/operations.py)
and the same chunking of big inputs into runs of at most one batch as the service: the numbers equal the service's
for the same rows and seed. Rows are not limited in number (a file of a million rows is scored run by run).
"""

from __future__ import annotations

import hashlib
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from contract import MANIFEST_FILE, Manifest, list_versions
from contract.face import Face
from contract.operations import OPERATIONS
from contract.requests import REQUESTS, describe
from runtime.bundle import Bundle, BundleError, Device, load_bundle
from runtime.errors import InputError
from runtime.operations import Columns, Limits, Operations, Outputs, Plan
from runtime.rows import check_rows

UNLIMITED = 1 << 62
# the service's K limit, fixed here: VAE_MAX_IMPORTANCE_SAMPLES is the service's setting, not read by load()
LOCAL_LIMITS = Limits(max_rows=UNLIMITED, max_draws=UNLIMITED, max_importance_samples_setting="")


def open_bundle(
    path: str | Path,
    device: Device = "auto",
    limits: Limits = LOCAL_LIMITS,
    intra_op_threads: int = 0,
    shown_as: str | None = None,
) -> LocalModel:
    """Verify a bundle folder (<repository>/<name>/<version>) and open it for encode, decode, sample and score; a
    BundleError names the folder (or `shown_as`)."""
    folder = Path(path).absolute()  # absolute: a model pickled after the process changed folder finds its files
    versions = list_versions(folder) if folder.is_dir() and not (folder / MANIFEST_FILE).exists() else []
    if versions:  # a model's folder (<repository>/<name>), one level above its bundles
        raise BundleError(
            f"{path} holds versions {versions} of a model, not a bundle: open one, e.g. {path}/{versions[-1]}"
        )
    try:
        bundle = load_bundle(folder, device, intra_op_threads)
    except BundleError as exc:  # its reasons name files in the bundle: say which bundle
        raise BundleError(f"{shown_as or path}: {exc}") from exc
    return LocalModel(bundle, limits, intra_op_threads)


def _reopened(files: dict[str, bytes], device: Device, limits: Limits, intra_op_threads: int) -> LocalModel:
    """A pickled LocalModel where it lands: its bundle's files written to a folder of its own (removed with it), then
    verified and opened as any bundle is."""
    folder = tempfile.TemporaryDirectory(prefix="gaussian-vae-bundle-")
    root = Path(folder.name) / "bundle"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    try:  # named as the model it is, not by the temporary folder it was written to
        m = Manifest.model_validate_json(files[MANIFEST_FILE])
        shown = f"the unpickled model {m.name!r} version {m.version}"
    except ValueError:  # refused by open_bundle below, by its reason
        shown = "the unpickled model"
    model = open_bundle(root, device, limits, intra_op_threads, shown_as=shown)
    model._folder = folder
    return model


class LocalModel(Face[Columns, Columns]):
    """One bundle's encode, decode, sample and score (contract/face.py: the request models' parameters), each
    answering the API's columns; `call` runs any of them by name."""

    def __init__(self, bundle: Bundle, limits: Limits = LOCAL_LIMITS, intra_op_threads: int = 0) -> None:
        self.bundle = bundle
        self.limits, self.intra_op_threads = limits, intra_op_threads
        self.operations = Operations(bundle.manifest, limits)
        self._folder: tempfile.TemporaryDirectory[str] | None = None  # an unpickled model's copy of its bundle

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (joblib.dump, copy.deepcopy, a task sent to Spark, Ray or Dask workers) as what it scores with, the
        manifest it runs and its three graphs, and opened again where it lands: onnxruntime's sessions cannot be
        pickled, and the folder may not exist there (the report and the training checkpoint stay behind). On the
        provider it runs on (CUDA falls back as device="auto" does). The graphs are read from the folder now, so a
        folder gone or replaced since it was opened is a PicklingError here, not a model that fails to open or
        differs over there."""
        m, root = self.manifest, self.bundle.path
        try:  # the manifest as written (a value such as Infinity survives), if it is still the one running
            files = {MANIFEST_FILE: (root / MANIFEST_FILE).read_bytes()}
            same = Manifest.model_validate_json(files[MANIFEST_FILE]) == m
        except (OSError, ValueError) as exc:
            raise pickle.PicklingError(f"{root}: cannot read {MANIFEST_FILE} to pickle the model ({exc})") from None
        if not same:
            raise pickle.PicklingError(f"{root}: {MANIFEST_FILE} changed since the model was opened; open it again")
        for spec in (m.graphs.encoder, m.graphs.decoder, m.graphs.scorer):
            try:
                data = (root / spec.file).read_bytes()
            except OSError as exc:
                raise pickle.PicklingError(f"{root}: cannot read {spec.file} to pickle the model ({exc})") from None
            if hashlib.sha256(data).hexdigest() != spec.sha256:
                raise pickle.PicklingError(f"{root}: {spec.file} changed since the model was opened; open it again")
            files[spec.file] = data
        device: Device = "auto" if self.bundle.provider.startswith("CUDA") else "cpu"
        return (_reopened, (files, device, self.limits, self.intra_op_threads))

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    def _call(self, op: str, rows: Any, params: dict[str, Any], model: str | None) -> Columns:
        self._check_model(model)
        return self.call(op, rows, **params)

    def _sample(self, params: dict[str, Any], model: str | None) -> Columns:
        self._check_model(model)
        return self.call("sample", None, **params)

    def _check_model(self, model: str | None) -> None:
        """A local face runs its own bundle: `model` is None or that bundle's name."""
        if model is not None and model != self.manifest.name:
            raise InputError(f"model {model!r} asked of a local bundle of model {self.operations.label}")

    def call(self, op: str, rows: Any, **params: Any) -> Columns:
        """Any operation by name, with the API's parameters: validate, check the rows, plan, run, finish."""
        spec = OPERATIONS[op]
        if spec.rows is not None:
            params[spec.rows] = []  # the rows are checked below, with numpy
        try:
            request = REQUESTS[op].model_validate(params, strict=False)  # numpy integers are integers here
        except ValidationError as exc:
            raise InputError(describe(exc)) from None
        x = None
        if spec.rows is not None:
            arr = np.asarray(rows)
            if arr.dtype.kind not in "biuf":  # bool as 0 and 1, as a frame's bool columns and true/false cells
                raise InputError(f"{spec.rows} must be numbers, got an array of dtype {arr.dtype}")
            x = check_rows(
                arr, spec.rows, self.operations.width(op), self.operations.limits.max_rows, self.operations.label
            )
        return self.run(self.operations.plan(op, x, request))

    def run(self, plan: Plan) -> Columns:
        """The plan's graph over its rows, in runs of at most one batch (the service's memory bound), then finished."""
        step = self.operations.limits.rows_per_run(plan.graph, plan.key)
        parts = [
            self.bundle.run(plan.graph, {n: np.ascontiguousarray(v[s : s + step]) for n, v in plan.feeds.items()})
            for s in range(0, plan.rows, step)
        ]
        outs: Outputs = parts[0] if len(parts) == 1 else {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        return plan.finish(outs)
