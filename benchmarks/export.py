"""What the exporter costs and what its graphs cost to serve: training/export/onnx.py's TorchScript path (tracing,
the default) against the torch.export-based one, side by side on the same models.

    .venv/bin/python benchmarks/export.py [--rounds 5] [--runs 200] [--bundle DIR ...] [--out FILE]

Models: the bundles given (folders holding checkpoint.pt), else two trained here in a few seconds each with the
defaults' networks (hidden 256x2, latent 16; 5 epochs: the weights do not matter to either timing): digits as they
are, and breast cancer decorrelated with the full encoder (the graphs with the most operations).

Per model: the wall time of export_graphs with each exporter (`--rounds` interleaved exports, median; the first
round's exports also build what torch caches for the rest), each graph file's size, and onnxruntime's time per
call of each graph on one CPU thread, traced / torch.export, at 1 row and at 1,024 rows (the scorer with K = 16):
the two sessions are timed in `--runs` alternating calls, median of the per-call ratio of neighbours. Not run by
the test suite. Writes benchmarks/results/export.json with the machine record.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_breast_cancer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import machine_record  # noqa: E402

from contract.layout import GRAPH_FILES  # noqa: E402
from training.checkpoint import load_model  # noqa: E402
from training.cli import main as vae_train  # noqa: E402
from training.export.onnx import EXPORTERS, export_graphs  # noqa: E402
from training.model import GaussianVAE  # noqa: E402

QUICK = ["--epochs", "5", "--warmup-epochs", "1", "--refine-steps", "0", "--quiet"]


def trained_models(folder: Path) -> dict[str, Path]:
    cancer = folder / "breast_cancer.csv"
    data = load_breast_cancer()
    np.savetxt(cancer, data.data, delimiter=",", header=",".join(data.feature_names), comments="")
    runs = {
        "digits": ["--data", "builtin:digits", "--decorrelate", "off"],
        "breast cancer, decorrelated, full": ["--data", str(cancer), "--decorrelate", "on", "--covariance", "full"],
    }
    bundles = {}
    for i, (label, args) in enumerate(runs.items()):
        assert vae_train([*args, *QUICK, "--name", f"m{i}", "--out", str(folder / "models")]) == 0
        bundles[label] = folder / "models" / f"m{i}" / "1"
    return bundles


def export_seconds(model: GaussianVAE, folder: Path, rounds: int) -> dict[str, list[float]]:
    took: dict[str, list[float]] = {e: [] for e in EXPORTERS}
    for r in range(rounds):
        for exporter in EXPORTERS if r % 2 == 0 else EXPORTERS[::-1]:
            out = folder / exporter
            out.mkdir(exist_ok=True)
            started = time.perf_counter()
            export_graphs(model, out, exporter=exporter)
            took[exporter].append(time.perf_counter() - started)
    return took


def feeds(model: GaussianVAE, graph: str, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    D, d = model.config.input_dim, model.config.latent_dim
    x = rng.standard_normal((rows, D)).astype(np.float32) * model.data_std.numpy() + model.data_mean.numpy()
    if graph == "encoder":
        return {"x": x}
    if graph == "scorer":
        return {"x": x, "eps": rng.standard_normal((rows, 16, d)).astype(np.float32)}
    z = {"z": rng.standard_normal((rows, d)).astype(np.float32)}
    return z | ({"eps": rng.standard_normal((rows, D)).astype(np.float32)} if model.decorrelating else {})


def call_ratio(a: ort.InferenceSession, b: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int) -> float:
    for session in (a, b):
        session.run(None, feed)  # warm: first-call allocations
    ratios = []
    for _ in range(runs):
        times = []
        for session in (a, b):
            started = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - started)
        ratios.append(times[0] / times[1])
    return statistics.median(ratios)


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def report(label: str, bundle: Path, rounds: int, runs: int) -> dict[str, object]:
    model = load_model(bundle / "checkpoint.pt").eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        took = export_seconds(model, folder, rounds)
        traced, exported = (statistics.median(took[e]) for e in EXPORTERS)
        print(f"\n{label} ({bundle})")
        print(
            f"  export_graphs: torchscript {traced:.2f} s, torch.export {exported:.2f} s (median of {rounds}; "
            f"first round {took['torchscript'][0]:.2f} and {took['dynamo'][0]:.2f} s); {exported / traced:.0f}x"
        )
        rng = np.random.default_rng(0)
        graphs: dict[str, dict[str, object]] = {}
        for graph, file in GRAPH_FILES.items():
            a, b = (folder / e / file for e in EXPORTERS)
            kib = [a.stat().st_size / 1024, b.stat().st_size / 1024]
            line = f"  {graph:8s} {kib[0]:7.0f} KiB / {kib[1]:7.0f} KiB"
            ratios = {}
            for rows in (1, 1024):
                ratios[rows] = call_ratio(session(a), session(b), feeds(model, graph, rows, rng), runs)
                line += f"; {rows} row{'s' if rows > 1 else ''}: traced / torch.export {ratios[rows]:.3f}"
            graphs[graph] = {"kib": kib, "call_ratio": ratios}
            print(line)
    return {"bundle": str(bundle), "export_seconds": took, "graphs": graphs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved exports with each exporter")
    parser.add_argument("--runs", type=int, default=200, help="alternating onnxruntime calls per graph and size")
    parser.add_argument("--bundle", type=Path, nargs="*", default=[], help="bundle folders (default: train two)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {str(b): b for b in args.bundle} or trained_models(Path(tmp))
        models = {label: report(label, bundle, args.rounds, args.runs) for label, bundle in bundles.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_record(), "models": models}, indent=2))


if __name__ == "__main__":
    main()
