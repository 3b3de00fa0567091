"""Bundle: one model bundle, verified, with its onnxruntime sessions; graphs are run and answered by tensor name.

A bundle is used only after its manifest validates, its format tag matches, every graph is a plain file of the
bundle folder whose sha256 matches, every graph's inputs and outputs match the manifest, and a warm-up inference
gives finite numbers. Any failed check is a BundleError saying which.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from contract import ENCODER_FILE, FORMAT, FORMAT_VERSION, MANIFEST_FILE, GraphSpec, Manifest, sha256_file
from contract.layout import GRAPHS, graph_outputs, list_versions
from runtime import cpus

log = logging.getLogger(__name__)
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
Device = Literal["auto", "cpu", "cuda"]
ASKED_CUDA = "device cuda was asked for (VAE_DEVICE=cuda, or device='cuda')"


class BundleError(Exception):
    """A bundle failed verification; the message says which check."""


class DeviceUnavailable(RuntimeError):
    """device=cuda, but onnxruntime cannot run on CUDA here."""


@dataclass
class Bundle:
    manifest: Manifest
    path: Path
    provider: str
    sessions: dict[str, ort.InferenceSession]

    @property
    def name(self) -> str:
        return self.manifest.name

    def outputs(self, graph: str) -> tuple[str, ...]:
        return graph_outputs(graph, self.manifest.covariance)

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One onnxruntime run of `graph`: its outputs by name."""
        names = self.outputs(graph)
        return dict(zip(names, self.sessions[graph].run(list(names), feeds), strict=True))


def newest_bundles(repository: Path) -> list[Path]:
    """<repository>/<name>/<highest version> for every model folder that has a version."""
    if not repository.is_dir():
        return []
    bundles = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = list_versions(model_dir)
        if versions:
            bundles.append(model_dir / str(versions[-1]))
    return bundles


def resolve_providers(repository: Path, device: Device) -> list[str]:
    """Execution providers for every bundle of a repository (probed once, on any encoder found)."""
    bundles = newest_bundles(repository)
    probe = next((b / ENCODER_FILE for b in bundles if (b / ENCODER_FILE).is_file()), None)
    return providers_for(device, probe)


def providers_for(device: Device, probe_graph: Path | None) -> list[str]:
    """CUDA first when onnxruntime can really run on it, else CPU."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA not in available:
        if device == "cuda":
            raise DeviceUnavailable(f"{ASKED_CUDA}, but this onnxruntime has no CUDA provider ({available})")
        return [CPU]
    # device=cuda gets no CPU fallback: a session that cannot run on CUDA fails (and its bundle is refused)
    wanted = [CUDA] if device == "cuda" else [CUDA, CPU]
    if probe_graph is None:
        return wanted
    # onnxruntime-gpu lists CUDA even where its libraries or a GPU are missing, then falls back to CPU with a burst
    # of error lines per session. Probe once, quietly, and decide for all sessions.
    ort.set_default_logger_severity(4)
    try:
        used = ort.InferenceSession(str(probe_graph), providers=[CUDA, CPU]).get_providers()[0]
    except Exception:  # a broken graph is reported by load_bundle; here only the provider matters
        used = CPU
    finally:
        ort.set_default_logger_severity(2)
    if used != CUDA:
        if device == "cuda":
            raise DeviceUnavailable(
                f"{ASKED_CUDA}, but onnxruntime cannot create a CUDA session (GPU or CUDA libraries missing)"
            )
        log.warning("CUDA provider listed but unusable here (GPU or CUDA/cuDNN libraries missing); using CPU")
        return [CPU]
    return wanted


def load_bundle(bundle: Path, providers: list[str] | Device = "auto", intra_op_threads: int = 0) -> Bundle:
    """Verify <repository>/<name>/<version> (or any bundle folder) and open its sessions."""
    manifest = _read_manifest(bundle)
    if bundle.parent.name and bundle.name.isdigit():  # inside a repository: the folders must agree
        if manifest.name != bundle.parent.name or manifest.version != int(bundle.name):
            raise BundleError(
                f"manifest says {manifest.name}/{manifest.version}, folder is {bundle.parent.name}/{bundle.name}"
            )
    if isinstance(providers, str):
        providers = providers_for(providers, bundle / manifest.graphs.encoder.file)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # onnxruntime's own default is a thread per host core, whatever the affinity mask or container quota allows
    options.intra_op_num_threads = cpus.threads(intra_op_threads)
    # No busy-waiting between runs: onnxruntime's spinning worker threads would otherwise take the CPU that the
    # event loop needs to parse and answer requests (measured in benchmarks/serving.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {graph: _session(bundle, getattr(manifest.graphs, graph), options, providers) for graph in GRAPHS}
    model = Bundle(manifest, bundle, sessions["scorer"].get_providers()[0], sessions)
    _warm_up(model)
    return model


def with_options(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """The providers as onnxruntime takes them: CUDA with TF32 off. TF32 rounds matmul inputs to 10 mantissa bits;
    with it (onnxruntime's default) an H100 scored 1.05e-3 relative away from the CPU provider at the model's
    default K (benchmarks/gpu.py), where full fp32 on a model this small costs nothing measurable."""
    return [(p, {"use_tf32": "0"}) if p == CUDA else p for p in providers]


def _session(bundle: Path, spec: GraphSpec, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    path = bundle / spec.file
    if not path.is_file():
        raise BundleError(f"{spec.file} is missing")
    if sha256_file(path) != spec.sha256:
        raise BundleError(f"{spec.file}: sha256 differs from the manifest (corrupted or replaced)")
    try:
        session = ort.InferenceSession(str(path), options, providers=with_options(providers))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise BundleError(f"{spec.file}: onnxruntime cannot load it ({exc})") from exc
    _check_io(spec, session)
    return session


def _read_manifest(bundle: Path) -> Manifest:
    path = bundle / MANIFEST_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise BundleError(f"cannot read {MANIFEST_FILE} ({exc.strerror})") from exc
    _check_format(text)
    try:
        raw = Manifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(
            f"{MANIFEST_FILE} is invalid at {where}: {first['msg']} (format {FORMAT} v{FORMAT_VERSION})"
        ) from None
    if raw.format_version != FORMAT_VERSION:
        raise BundleError(_other_version(raw.format_version))
    return raw


def _check_format(text: str) -> None:
    # Before the full schema: a bundle of another format version fails on whichever field changed first, which
    # would hide the real reason (it was written by an older or newer vae-train).
    try:
        head = json.loads(text)
    except ValueError:
        return  # reported by the schema validation, with its position
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        return  # another format altogether: the schema says where
    if (found := head.get("format_version", FORMAT_VERSION)) != FORMAT_VERSION:
        raise BundleError(_other_version(found))


def _other_version(found: object) -> str:
    return (
        f"format version {found}; this release reads {FORMAT} v{FORMAT_VERSION} only "
        "(train the model again with this release's vae-train, or serve the bundle with the release that wrote it)"
    )


def _check_io(spec: GraphSpec, session: ort.InferenceSession) -> None:
    def shapes(items: list) -> list[tuple[str, list]]:  # type: ignore[type-arg]
        return [(i.name, [d if isinstance(d, int) else "?" for d in i.shape]) for i in items]

    got_in, got_out = shapes(session.get_inputs()), shapes(session.get_outputs())
    want_in, want_out = shapes(spec.inputs), shapes(spec.outputs)
    if got_in != want_in or got_out != want_out:
        raise BundleError(
            f"{spec.file}: graph I/O {got_in} -> {got_out} differs from the manifest {want_in} -> {want_out}"
        )


def _warm_up(model: Bundle) -> None:
    m = model.manifest
    x = np.asarray([m.preprocessing.mean], dtype=np.float32)
    z = np.zeros((1, m.latent_dim), np.float32)
    try:
        outs = [
            model.run("encoder", {"x": x}),
            model.run("decoder", {"z": z}),
            model.run("scorer", {"x": x, "eps": np.zeros((1, 2, m.latent_dim), np.float32)}),
        ]
    except Exception as exc:  # onnxruntime's error types vary by provider
        raise BundleError(f"warm-up inference failed ({exc})") from exc
    if not all(np.all(np.isfinite(v)) for group in outs for v in group.values()):
        raise BundleError("warm-up inference returned non-finite values")
