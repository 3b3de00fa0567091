"""Bundle: one model bundle, verified, with its onnxruntime sessions; graphs are run and answered by tensor name.

A bundle is used only after its manifest validates, its format tag matches, every graph is a plain file of the
bundle folder whose sha256 matches, every graph's inputs and outputs match the manifest, and a warm-up inference
gives finite numbers. Any failed check is a BundleError saying which.

What is verified is what runs: nothing is read through a link leading outside the model repository (or, for a bundle
opened on its own, outside its folder), each graph is read once and its session created from the very bytes that
were hashed, and a graph cannot pull in other files (ONNX external data).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from contract import ENCODER_FILE, FORMAT, FORMAT_VERSION, MANIFEST_FILE, READABLE_VERSIONS, GraphSpec, Manifest
from contract.layout import GRAPHS, graph_outputs, list_versions, sha256_bytes
from runtime import cpus
from runtime.operations import decoder_feeds

log = logging.getLogger(__name__)
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
Device = Literal["auto", "cpu", "cuda"]
ASKED_CUDA = "device cuda was asked for (VAE_DEVICE=cuda, --device cuda or device='cuda')"
MAX_FILE_BYTES = (1 << 31) - 1  # protobuf's limit on one message: no ONNX graph without external data is larger
# Where onnxruntime looks for the external data files of a graph loaded from bytes (default: the working directory)
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


class BundleError(Exception):
    """A bundle failed verification; the message says which check."""


class DeviceUnavailable(RuntimeError):
    """device=cuda, but onnxruntime cannot run on CUDA here."""


Fingerprint = tuple[tuple[str, int, int], ...]  # (entry, size, mtime ns) of a bundle folder's entries


def fingerprint(folder: Path) -> Fingerprint:
    """What tells a bundle folder's files changed (replaced in place, a copy completed, re-published, a model
    retrained into the same folder): its entries' names, sizes and modification times; () when it cannot be read."""
    try:
        entries = [(p.name, p.stat()) for p in folder.iterdir()]
    except OSError:
        return ()
    return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in entries))


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
        return graph_outputs(graph, self.manifest.covariance, self.manifest.preprocessing.decorrelate)

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
    """Execution providers for every bundle of a repository (probed once, on any encoder found inside it)."""
    probe = next((g for b in newest_bundles(repository) if (g := _probe_graph(b, repository)) is not None), None)
    return providers_for(device, probe)


def _probe_graph(bundle: Path, repository: Path) -> bytes | None:
    try:
        return _Confined.of(bundle, repository).read(ENCODER_FILE)
    except (BundleError, OSError):  # reported by load_bundle; here only the provider matters
        return None


# The CUDA probe's graph when the repository holds no bundle yet (an empty folder filled later): y = Identity(x),
# x float[1], opset 13, IR version 7, as onnx.helper serialises it (tests/runtime/test_bundle_integrity.py rebuilds
# it and compares)
PROBE_GRAPH = (
    b'\x08\x07\x12\x00:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04\n\x02'
    b"\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)


def providers_for(device: Device, probe_graph: bytes | None) -> list[str]:
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
    if probe_graph is None:  # no bundle yet: decide now all the same (device=cuda must not start without CUDA)
        probe_graph = PROBE_GRAPH
    # onnxruntime-gpu lists CUDA even where its libraries or a GPU are missing, then falls back to CPU with a burst
    # of error lines per session. Probe once, quietly, and decide for all sessions.
    ort.set_default_logger_severity(4)
    try:
        used = _from_bytes(probe_graph, ENCODER_FILE, ort.SessionOptions(), [CUDA, CPU]).get_providers()[0]
    except Exception:  # a broken graph is reported by load_bundle; here only the provider matters
        used = CPU
    finally:
        ort.set_default_logger_severity(2)
    if used != CUDA:
        if device == "cuda":
            raise DeviceUnavailable(
                f"{ASKED_CUDA}, but onnxruntime cannot create a CUDA session (GPU or CUDA libraries missing)"
            )
        # info, not a warning: device "auto" on a machine without a GPU (onnxruntime-gpu is the product's one
        # onnxruntime) is the ordinary CPU case, and vae-score and the Python API would print it on every run
        log.info("CUDA provider listed but unusable here (GPU or CUDA/cuDNN libraries missing); using CPU")
        return [CPU]
    return wanted


def load_bundle(
    bundle: Path, providers: list[str] | Device = "auto", intra_op_threads: int = 0, root: Path | None = None
) -> Bundle:
    """Verify <repository>/<name>/<version> (or any bundle folder) and open its sessions.

    root: the folder no file may be read outside of through a link: the model repository (the service passes it),
    or the bundle folder itself when None (a bundle opened on its own, e.g. gaussian_vae.load).
    """
    files = _Confined.of(bundle, root)
    manifest = _read_manifest(files)
    if bundle.parent.name and bundle.name.isdigit():  # inside a repository: the folders must agree
        if manifest.name != bundle.parent.name or manifest.version != int(bundle.name):
            raise BundleError(
                f"manifest says {manifest.name}/{manifest.version}, folder is {bundle.parent.name}/{bundle.name}"
            )
    graphs = {graph: _read_graph(files, getattr(manifest.graphs, graph)) for graph in GRAPHS}
    if isinstance(providers, str):
        providers = providers_for(providers, graphs["encoder"])
    threads = cpus.threads(intra_op_threads)
    sessions = {
        graph: _session(getattr(manifest.graphs, graph), graphs[graph], _options(threads), providers)
        for graph in GRAPHS
    }
    model = Bundle(manifest, bundle, sessions["scorer"].get_providers()[0], sessions)
    _warm_up(model)
    return model


@dataclass(frozen=True)
class _Confined:
    """Reads a bundle's files, each only where it resolves (links followed) inside `root`."""

    bundle: Path
    root: Path  # resolved
    where: str  # what root is, for the messages

    @classmethod
    def of(cls, bundle: Path, root: Path | None) -> _Confined:
        where = "the bundle folder" if root is None else "the model repository"
        files = cls(bundle, _resolved(root or bundle, where), where)
        # each file is checked where it resolves too (read); this names the cause when the whole folder leads out
        if not _resolved(bundle, "the bundle folder").is_relative_to(files.root):
            raise BundleError(f"the bundle folder is, or is inside, a link leading outside {files.where}")
        return files

    def read(self, name: str) -> bytes:
        """The bytes of bundle/name; OSError when it cannot be read, BundleError when it leads outside root."""
        real = _resolved(self.bundle / name, name)
        if not real.is_relative_to(self.root):
            raise BundleError(f"{name} is a link leading outside {self.where}")
        opened = open_plain(real)
        if opened is None:
            raise BundleError(f"{name} is not a plain file")
        with opened as f:
            info = os.fstat(f.fileno())
            if info.st_size > MAX_FILE_BYTES:  # refused as this bundle's fault, before memory is spent reading it
                raise BundleError(
                    f"{name} is {info.st_size} bytes; a bundle file is at most {MAX_FILE_BYTES} (2 GiB, the most an "
                    "ONNX graph without external data can be)"
                )
            return f.read()


def open_plain(real: Path) -> BinaryIO | None:
    """`real`, a path with no links left (resolved and checked by the caller), open for reading when it is a plain
    file; None when it is anything else. Each folder on the way is opened from the one before without following a
    link, and the file too: a link swapped in anywhere on the path since the check is refused (an OSError), and
    O_NONBLOCK keeps a FIFO put there from blocking the open."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    flags = os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0)
    if os.open not in os.supports_dir_fd or not real.is_absolute():  # no openat (Windows): the last step only
        fd = os.open(real, flags)
    else:
        folder = os.open(real.anchor, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            for part in real.parts[1:-1]:
                inner = os.open(part, os.O_RDONLY | nofollow | getattr(os, "O_DIRECTORY", 0), dir_fd=folder)
                os.close(folder)
                folder = inner
            fd = os.open(real.name, flags, dir_fd=folder)
        finally:
            os.close(folder)
    f = open(fd, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        return None
    return f


def _resolved(path: Path, name: str) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a loop of links: RuntimeError up to Python 3.12, OSError from 3.13
        raise BundleError(f"{name} is a loop of links") from None


def _options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # onnxruntime's own default is a thread per host core, whatever the affinity mask or container quota allows
    options.intra_op_num_threads = threads
    # No busy-waiting between runs: onnxruntime's spinning worker threads would otherwise take the CPU that the
    # event loop needs to parse and answer requests (measured in benchmarks/serving.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def with_options(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """The providers as onnxruntime takes them: CUDA with TF32 off. TF32 rounds matmul inputs to 10 mantissa bits;
    with it (onnxruntime's default) an H100 scored 1.05e-3 relative away from the CPU provider at the model's
    default K (benchmarks/gpu.py), where full fp32 on a model this small costs nothing measurable."""
    return [(p, {"use_tf32": "0"}) if p == CUDA else p for p in providers]


def _read_graph(files: _Confined, spec: GraphSpec) -> bytes:
    """A graph's bytes, read once: the session is created from these, so a file swapped after hashing never loads."""
    try:
        graph = files.read(spec.file)
    except FileNotFoundError:
        raise BundleError(f"{spec.file} is missing") from None
    except OSError as exc:
        raise BundleError(f"cannot read {spec.file} ({exc.strerror})") from None
    if sha256_bytes(graph) != spec.sha256:
        raise BundleError(f"{spec.file}: sha256 differs from the manifest (corrupted or replaced)")
    return graph


def _session(spec: GraphSpec, graph: bytes, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    session = _from_bytes(graph, spec.file, options, with_options(providers))
    _check_io(spec, session)
    return session


def _from_bytes(
    graph: bytes, file: str, options: ort.SessionOptions, providers: list[str | tuple[str, dict[str, str]]]
) -> ort.InferenceSession:
    """A session of a graph held in memory that reads no other file, or a BundleError.

    ONNX external data (tensors a graph keeps in other files, named relative to it) is refused: its files are not
    covered by the manifest's sha256, and their names may lead anywhere. A graph loaded from bytes would look for them
    in the working directory, so they are looked for in an empty private folder instead: every reference fails there
    (a name escaping that folder, absolute or with "..", is refused by onnxruntime's own path checks, which cover all
    initializers, sparse ones included, from 1.27).
    """
    with tempfile.TemporaryDirectory(prefix="vae-no-external-data-") as empty:
        options.add_session_config_entry(EXTERNAL_DATA_FOLDER, empty)
        try:
            return ort.InferenceSession(graph, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            if "external data" in str(exc).lower() or empty in str(exc):
                # onnxruntime's message names the private folder: the reason is enough
                raise BundleError(
                    f"{file} keeps tensors in other files (ONNX external data), which a bundle may not: "
                    "its graphs must hold all their weights, so that the manifest's sha256 covers them"
                ) from None
            raise BundleError(f"{file}: onnxruntime cannot load it ({exc})") from exc


def _read_manifest(files: _Confined) -> Manifest:
    try:
        text = files.read(MANIFEST_FILE).decode()
    except OSError as exc:
        raise BundleError(f"cannot read {MANIFEST_FILE} ({exc.strerror})") from exc
    except UnicodeDecodeError:
        raise BundleError(f"{MANIFEST_FILE} is not UTF-8 text") from None
    _check_format(text)
    try:
        raw = Manifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(
            f"{MANIFEST_FILE} is invalid at {where}: {first['msg']} (format {FORMAT} v{FORMAT_VERSION})"
        ) from None
    if raw.format_version not in READABLE_VERSIONS:
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
    if (found := head.get("format_version", FORMAT_VERSION)) not in READABLE_VERSIONS:
        raise BundleError(_other_version(found))


def _other_version(found: object) -> str:
    return (
        f"format version {found}; this release reads {FORMAT} "
        f"{', '.join(f'v{v}' for v in READABLE_VERSIONS)} only "
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
            model.run("decoder", decoder_feeds(m, z, np.zeros((1, m.input_dim), np.float32))),
            model.run("scorer", {"x": x, "eps": np.zeros((1, 2, m.latent_dim), np.float32)}),
        ]
    except Exception as exc:  # onnxruntime's error types vary by provider
        raise BundleError(f"warm-up inference failed ({exc})") from exc
    if not all(np.all(np.isfinite(v)) for group in outs for v in group.values()):
        raise BundleError("warm-up inference returned non-finite values")
