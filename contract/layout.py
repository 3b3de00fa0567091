"""Where a bundle's files live: <repository>/<name>/<version>/{manifest.json, *.onnx, checkpoint.pt, report/}."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
SCORER_FILE = "scorer.onnx"
GRAPH_FILES = {"encoder": ENCODER_FILE, "decoder": DECODER_FILE, "scorer": SCORER_FILE}
GRAPHS = tuple(GRAPH_FILES)
# Each graph's tensors by name, in the order the graph declares them (scale_tril only with covariance "full"). The
# decoder of a decorrelated bundle (preprocessing.decorrelate) also takes noise eps[batch, D] and returns the draw x
# it makes of it (graph_inputs, graph_outputs): given z its features are correlated, so x cannot be drawn feature by
# feature from log_var.
GRAPH_INPUTS = {"encoder": ("x",), "decoder": ("z",), "scorer": ("x", "eps")}
DECODER_DRAW_INPUT, DECODER_DRAW_OUTPUT = "eps", "x"
GRAPH_OUTPUTS = {
    "encoder": ("mean", "log_var", "scale_tril"),
    "decoder": ("mean", "log_var"),
    "scorer": ("elbo", "reconstruction", "kl", "log_likelihood", "feature_nll"),
}
CHECKPOINT_FILE = "checkpoint.pt"
REPORT_DIR = "report"

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
_VERSION_RE = re.compile(r"^[1-9][0-9]*$")


def graph_inputs(graph: str, decorrelated: bool = False) -> tuple[str, ...]:
    """The input names of a graph of a bundle (decorrelated or not), in order."""
    names = GRAPH_INPUTS[graph]
    return (*names, DECODER_DRAW_INPUT) if graph == "decoder" and decorrelated else names


def graph_outputs(graph: str, covariance: str, decorrelated: bool = False) -> tuple[str, ...]:
    """The output names of a graph of a bundle with this covariance (decorrelated or not), in order."""
    names = GRAPH_OUTPUTS[graph]
    if graph == "decoder" and decorrelated:
        names = (*names, DECODER_DRAW_OUTPUT)
    return names if covariance == "full" else tuple(n for n in names if n != "scale_tril")


def is_valid_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


def list_versions(model_dir: Path) -> list[int]:
    """Published versions under <repository>/<name>, ascending. Temporary and hidden folders are ignored."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and _VERSION_RE.fullmatch(p.name))


def sha256_bytes(data: bytes) -> str:
    """The manifest's sha256 of a graph: hex digest of the file's bytes (the runtime hashes the bytes it loads)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
