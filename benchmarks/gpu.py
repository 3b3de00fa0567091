"""GPU check in one run (under 5 minutes on an H100): training speed on CUDA against one CPU process, the service on
onnxruntime's CUDA provider checked against the CPU provider, and its speed against in-process onnxruntime on CUDA
with I/O binding.

    .venv/bin/python benchmarks/gpu.py [--epochs 30] [--duration 3] [--workers N] [--out benchmarks/results/gpu.json]
    .venv/bin/python benchmarks/gpu.py --force-cpu-dry-run    # the same flow on the CPU provider: proves the plumbing

1. Without usable CUDA (torch sees no device, or onnxruntime has no CUDA provider or cannot open a CUDA session) it
   prints one line saying which and exits 0.
2. Trains builtin:digits with `--device cuda` and with `--device cpu` (--epochs each) into a temporary repository;
   rows/s = training rows x epochs / the manifest's training.seconds (steady: epochs 2.. from report/metrics.json).
3. Serves the CUDA bundle (VAE_DEVICE=cuda vae-serve on 127.0.0.1, its default workers unless --workers says);
   encode (mean, log_var: rtol = atol = 1e-3) and score (anomaly_score: 1e-3 relative), over /v1 JSON, V2 binary
   and V2 gRPC (raw contents), must match the CPU provider (runtime.local.open_bundle(device="cpu")); else it exits
   1 saying what differs.
4. rows/s of encode and score (K = 1 and the model's default K) at 1 and 1024 rows per request: in-process
   onnxruntime with I/O binding (inputs already on the device / inputs from and outputs to the host), and the
   service's /v1 JSON, V2 binary and gRPC paths under load (64 connections for 1 row, 4 for 1,024; wrk and h2load
   where installed, else a few threads of httpx clients and one grpc.aio client with a connection per caller).
5. Prints markdown tables and writes JSON (GPU name, versions, git sha).

--force-cpu-dry-run: no CUDA check; CPU everywhere (torch device, execution provider, I/O binding device), one epoch,
0.5 s per cell unless --duration says otherwise, JSON to benchmarks/results/gpu-dry-run.json unless --out says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from machine import machine_record  # noqa: E402
from servers import Server, free_port, grpc_frame, run_h2load, run_wrk  # noqa: E402

from contract.requests import REQUESTS  # noqa: E402
from runtime.bundle import CPU, CUDA, load_bundle  # noqa: E402
from runtime.local import LocalModel, open_bundle  # noqa: E402
from service.cli import worker_count  # noqa: E402
from service.grpc_codec import proto  # noqa: E402
from service.settings import ServiceSettings  # noqa: E402
from training.data import load_table  # noqa: E402

NAME = "digits"
RTOL = ATOL = 1e-3  # encode's mean and log_var
SCORE_RTOL = 1e-3  # anomaly_score, relative (to max(|cpu|, 1))
# (operation, rows per request, importance samples: None = the model's default K)
CELLS = [("encode", 1, None), ("encode", 1024, None), ("score", 1, 1), ("score", 1024, 1)]
CELLS += [("score", 1, None), ("score", 1024, None)]
MODES = ("resident", "host")  # I/O binding: inputs and outputs stay on the device / inputs from and outputs to host
CHECKED = {"encode": ("mean", "log_var"), "score": ("anomaly_score",)}
PATHS = ("v1_json", "v2_binary", "grpc")
INFER = "/inference.GRPCInferenceService/ModelInfer"
RAW_DTYPES = {"FP32": "<f4", "FP64": "<f8", "BOOL": "?", "INT64": "<i8"}


@dataclass(frozen=True)
class Target:
    device: Literal["cpu", "cuda"]  # torch's --device, VAE_DEVICE, load_bundle's device and the I/O binding device
    provider: str


def cuda_missing() -> list[str]:
    """Why CUDA is unusable here: torch's and onnxruntime's reasons (empty when both can run on it)."""
    missing = [] if torch.cuda.is_available() else [f"torch {torch.__version__} sees no CUDA device"]
    available = ort.get_available_providers()
    if CUDA not in available:
        return [*missing, f"onnxruntime {ort.__version__} has no {CUDA} ({', '.join(available)})"]
    from onnx import TensorProto, helper  # a one-node graph: no bundle exists yet

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    ort.set_default_logger_severity(4)  # a missing CUDA library is otherwise a burst of error lines
    try:
        used = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, CPU]).get_providers()[0]
    except Exception as exc:  # onnxruntime's error types vary by build
        used = f"error: {exc}"
    finally:
        ort.set_default_logger_severity(2)
    if used != CUDA:
        missing.append(f"onnxruntime {ort.__version__} cannot create a CUDA session (it got {used})")
    return missing


def train(repo: Path, device: str, epochs: int) -> dict[str, Any]:
    """vae-train on builtin:digits for exactly `epochs` epochs on device; training rows/s from the bundle."""
    argv = [sys.executable, "-m", "training", "--data", "builtin:digits", "--name", NAME, "--device", device]
    argv += ["--out", str(repo), "--epochs", str(epochs), "--patience", str(epochs + 1), "--checkpoint-every", "0"]
    done = subprocess.run([*argv, "--quiet"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"gpu.py: vae-train --device {device} failed: {done.stderr.strip()[-2000:]}")
    bundle = repo / NAME / "1"
    tr = json.loads((bundle / "manifest.json").read_text())["training"]
    rows = tr["rows"]["train"]
    out = {"device": device, "epochs": tr["epochs_run"], "seconds": tr["seconds"], "bundle": bundle}
    out["rows_per_s"] = rows * tr["epochs_run"] / tr["seconds"]
    history = json.loads((bundle / "report" / "metrics.json").read_text()).get("history", [])
    if len(history) > 1:  # the first epoch pays for CUDA's lazy initialisation
        out["steady_rows_per_s"] = rows * (len(history) - 1) / sum(h["seconds"] for h in history[1:])
    return out


def plan_feeds(reference: LocalModel, op: str, x: np.ndarray, k: int | None) -> tuple[str, dict[str, np.ndarray]]:
    """The graph and contiguous feeds the service would run for this request (runtime/operations.py's plan)."""
    params: dict[str, Any] = {"inputs": []} | ({"importance_samples": k} if k is not None else {})
    plan = reference.operations.plan(op, x, REQUESTS[op].model_validate(params, strict=False))
    return plan.graph, {n: np.ascontiguousarray(v) for n, v in plan.feeds.items()}


def bound_rows_per_s(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], device: str, resident: bool, seconds: float
) -> float:
    """rows/s of one graph with I/O binding: inputs and outputs stay on the device (resident), or inputs are bound
    from host arrays and outputs copied back to the host on every run."""
    binding = session.io_binding()
    on_device = {n: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for n, v in feeds.items()} if resident else {}
    for name, value in on_device.items():  # copied to the device once; the dict keeps them alive
        binding.bind_ortvalue_input(name, value)
    for out in session.get_outputs():  # onnxruntime allocates them on the device at each run
        binding.bind_output(out.name, device, 0)

    def once() -> None:
        if not resident:
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if not resident:
            binding.copy_outputs_to_cpu()

    once()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        once()
        n += 1
    return n * len(next(iter(feeds.values()))) / (time.perf_counter() - started)


def in_process(
    bundle: Path, target: Target, reference: LocalModel, x: np.ndarray, seconds: float
) -> list[dict[str, float]]:
    model = load_bundle(bundle, target.device)
    if model.provider != target.provider:
        sys.exit(f"gpu.py: in-process sessions run on {model.provider}, not {target.provider}")
    results = []
    for op, rows, k in CELLS:
        graph, feeds = plan_feeds(reference, op, x[:rows], k)
        session = model.sessions[graph]
        results.append(
            {
                f"in_process_{m}": bound_rows_per_s(session, feeds, target.device, m == "resident", seconds)
                for m in MODES
            }
        )
    return results


def requests_for(op: str, x: np.ndarray, k: int | None, port: int) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """(url, body, headers) of the /v1 JSON and the V2 binary request for these rows."""
    params = {"importance_samples": k} if k is not None else {}
    base = f"http://127.0.0.1:{port}"
    v1: tuple[str, bytes, dict[str, str]] = (
        f"{base}/v1/models/{NAME}/{op}",
        json.dumps({"inputs": x.tolist(), **params}).encode(),
        {},
    )
    data = np.ascontiguousarray(x, dtype="<f4").tobytes()
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": len(data)}}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True, **params}}).encode()
    v2_headers = {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}
    return {"v1_json": v1, "v2_binary": (f"{base}/v2/models/{NAME}.{op}/infer", header + data, v2_headers)}


def answer(path: str, response: httpx.Response) -> dict[str, np.ndarray]:
    """The response's outputs by name (V2 binary: the JSON header, then each output's raw bytes in order)."""
    if response.status_code != 200:
        sys.exit(f"gpu.py: {response.request.url} answered {response.status_code}: {response.text[:300]}")
    if path == "v1_json":
        return {k: np.asarray(v) for k, v in response.json().items()}
    split = int(response.headers["inference-header-content-length"])
    out, offset = {}, split
    for o in json.loads(response.content[:split])["outputs"]:
        size = o["parameters"]["binary_data_size"]
        dtype = {"FP32": "<f4", "FP64": "<f8", "BOOL": "?", "INT64": "<i8"}[o["datatype"]]
        out[o["name"]] = np.frombuffer(response.content[offset : offset + size], dtype).reshape(o["shape"])
        offset += size
    return out


def grpc_request(op: str, x: np.ndarray, k: int | None) -> bytes:
    """A serialised ModelInferRequest of these rows as raw FP32 (so the answer comes raw too)."""
    request = proto().ModelInferRequest(model_name=f"{NAME}.{op}")
    tensor = request.inputs.add(name="x", datatype="FP32")
    tensor.shape.extend(x.shape)
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    if k is not None:
        request.parameters["importance_samples"].int64_param = k
    return bytes(request.SerializeToString())


def grpc_answer(grpc_port: int, message: bytes) -> dict[str, np.ndarray]:
    """One ModelInfer call through grpcio: the response's outputs by name (raw contents, in output order)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        try:
            raw = channel.unary_unary(INFER)(message, timeout=60)  # bytes in, bytes out
        except grpc.RpcError as exc:
            sys.exit(f"gpu.py: gRPC ModelInfer answered {exc.code().name}: {exc.details()}")
    response = proto().ModelInferResponse.FromString(raw)
    return {
        o.name: np.frombuffer(data, RAW_DTYPES[o.datatype]).reshape(list(o.shape))
        for o, data in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def check_numbers(port: int, grpc_port: int, reference: LocalModel, x: np.ndarray) -> dict[str, float]:
    """Largest differences of the service from the CPU reference; exits 1 outside the tolerance."""
    worst: dict[str, float] = {}
    for op, k in (("encode", None), ("score", 1), ("score", None)):
        want = reference.call(op, x, **({"importance_samples": k} if k is not None else {}))
        answers = {
            path: answer(path, httpx.post(url, content=body, headers={"content-type": "application/json"} | headers))
            for path, (url, body, headers) in requests_for(op, x, k, port).items()
        }
        answers["grpc"] = grpc_answer(grpc_port, grpc_request(op, x, k))
        for path, got in answers.items():
            for field in CHECKED[op]:
                a, b = got[field].astype(np.float64), np.asarray(want[field], np.float64)
                if op == "encode":
                    ok, diff = np.allclose(a, b, rtol=RTOL, atol=ATOL), float(np.abs(a - b).max())
                else:
                    rel = np.abs(a - b) / np.maximum(np.abs(b), 1.0)
                    ok, diff = bool((rel <= SCORE_RTOL).all()), float(rel.max())
                key = f"{path} {op} K={k or 'default'} {field}"
                worst[key] = diff
                if not ok:
                    sys.exit(f"gpu.py: {key} differs from the CPU provider by {diff:.3g}, outside the tolerance")
    return worst


def load(url: str, body: bytes, headers: dict[str, str], rows: int, seconds: float) -> dict[str, Any]:
    """rows/s under concurrent requests: wrk when installed, else threads of httpx clients."""
    connections = 64 if rows == 1 else 4
    if shutil.which("wrk"):
        with tempfile.NamedTemporaryFile(suffix=".bin") as f:
            f.write(body)
            f.flush()
            length = headers.get("inference-header-content-length")
            w = run_wrk(url, Path(f.name), int(length) if length else None, connections, max(1, round(seconds)))
        return {
            "rows_per_s": w["requests"] * rows / (w["duration_us"] / 1e6),
            "errors": w["socket_errors"] + w["non2xx"],
        }
    connections = min(connections, 8)
    deadline = time.perf_counter() + seconds

    def client(_: int) -> tuple[int, int]:
        done = errors = 0
        with httpx.Client(timeout=30, headers={"content-type": "application/json"} | headers) as c:
            while time.perf_counter() < deadline:
                errors += c.post(url, content=body).status_code != 200
                done += 1
        return done, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        counts = list(pool.map(client, range(connections)))
    elapsed = time.perf_counter() - started
    return {"rows_per_s": sum(c[0] for c in counts) * rows / elapsed, "errors": sum(c[1] for c in counts)}


def grpc_load(grpc_port: int, message: bytes, rows: int, seconds: float) -> dict[str, Any]:
    """rows/s of ModelInfer calls under concurrent callers, one call at a time each: h2load when installed, else
    one grpc.aio client with a connection per caller."""
    connections = 64 if rows == 1 else 4
    if shutil.which("h2load"):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "body.bin").write_bytes(grpc_frame(message))
            url = f"http://127.0.0.1:{grpc_port}{INFER}"
            h = run_h2load(url, Path(tmp) / "body.bin", connections, max(1, round(seconds)), Path(tmp))
        # h2load counts HTTP statuses; a gRPC error is a 200 with an error in its trailers, which the
        # parity check before the load has ruled out for this very message
        return {"rows_per_s": h["requests"] * rows / (h["duration_us"] / 1e6), "errors": h["socket_errors"]}
    return asyncio.run(_grpc_callers(grpc_port, message, rows, connections, seconds))


async def _grpc_callers(grpc_port: int, message: bytes, rows: int, callers: int, seconds: float) -> dict[str, Any]:
    import grpc

    # a subchannel pool of its own per channel: one HTTP/2 connection per caller, as h2load -c opens them
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", options=options) for _ in range(callers)]
    deadline = time.perf_counter() + seconds

    async def caller(channel: Any) -> tuple[int, int]:
        call, done, errors = channel.unary_unary(INFER), 0, 0
        while time.perf_counter() < deadline:
            try:
                await call(message, timeout=60)
            except grpc.RpcError:
                errors += 1
            done += 1
        return done, errors

    started = time.perf_counter()
    counts = await asyncio.gather(*(caller(c) for c in channels))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return {"rows_per_s": sum(c[0] for c in counts) * rows / elapsed, "errors": sum(c[1] for c in counts)}


def serve_and_measure(
    bundle: Path, target: Target, reference: LocalModel, x: np.ndarray, seconds: float, workers: int
) -> dict[str, Any]:
    port, grpc_port = free_port(), free_port()
    argv = [str(Path(sys.executable).parent / "vae-serve"), "--log-level", "warning", "--port", str(port)]
    env = {"VAE_MODEL_REPOSITORY": str(bundle.parent.parent), "VAE_DEVICE": target.device, "VAE_LOG_REQUESTS": "false"}
    env |= {"VAE_WORKERS": str(workers), "VAE_GRPC_PORT": str(grpc_port)}
    try:
        server = Server(f"vae-serve {target.device}", argv, env, {}, port, grpc_port=grpc_port)
    except RuntimeError:
        sys.exit(f"gpu.py: VAE_DEVICE={target.device} vae-serve did not start (run it by hand to see why)")
    try:
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        used = [m["provider"] for m in models["models"]]
        if used != [target.provider]:
            sys.exit(f"gpu.py: the service runs on {used} (refused: {models['refused']}), not {target.provider}")
        parity = check_numbers(port, grpc_port, reference, x)
        cells = []
        for op, rows, k in CELLS:
            cell = {}
            for path, (url, body, headers) in requests_for(op, x[:rows], k, port).items():
                answer(path, httpx.post(url, content=body, headers={"content-type": "application/json"} | headers))
                cell[path] = load(url, body, headers, rows, seconds)
            message = grpc_request(op, x[:rows], k)
            grpc_answer(grpc_port, message)
            cell["grpc"] = grpc_load(grpc_port, message, rows, seconds)
            cells.append(cell)
        generator = f"{'wrk' if shutil.which('wrk') else 'httpx'}, {'h2load' if shutil.which('h2load') else 'grpc.aio'}"
        return {"parity_max_diff": parity, "cells": cells, "load_generator": generator, "service_workers": workers}
    finally:
        server.stop()


def gpu_record(target: Target) -> dict[str, Any]:
    """What the machine record adds here: the GPU, its driver and memory, and the CUDA torch was built for."""
    smi = ""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        smi = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    gpu = torch.cuda.get_device_name(0) if target.device == "cuda" else None
    return {"gpu": gpu, "nvidia_smi": smi, "torch_cuda": torch.version.cuda}


def print_tables(training: dict[str, dict[str, Any]], cells: list[dict[str, Any]]) -> None:
    print("\n| vae-train, builtin:digits | epochs | seconds | rows/s | rows/s, epochs 2.. |\n|---|---:|---:|---:|---:|")
    for t in training.values():
        steady = f"{t['steady_rows_per_s']:.0f}" if "steady_rows_per_s" in t else "-"
        print(f"| --device {t['device']} | {t['epochs']} | {t['seconds']:.2f} | {t['rows_per_s']:.0f} | {steady} |")
    ratio = training["target"]["rows_per_s"] / training["cpu"]["rows_per_s"]
    print(f"\ntraining rows/s, --device {training['target']['device']} / one CPU process: {ratio:.2f}")
    print(
        "\n| request | in-process resident | in-process host | /v1 JSON | V2 binary | gRPC | JSON / host | V2 / host "
        "| gRPC / host | gRPC / V2 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for c in cells:
        label = f"{c['op']} {c['rows']} row{'s' if c['rows'] > 1 else ''}"
        label += f" K={c['importance_samples']}" if c["op"] == "score" else ""
        errors = sum(c[path]["errors"] for path in PATHS)
        rates = " | ".join(f"{c[path]['rows_per_s']:.0f}" for path in PATHS)
        ratios = " | ".join(f"{c[f'{path}_over_in_process']:.3f}" for path in PATHS)
        over_v2 = c["grpc"]["rows_per_s"] / c["v2_binary"]["rows_per_s"]
        print(
            f"| {label}{f' ({errors} errors)' if errors else ''} | {c['in_process_resident']:.0f} | "
            f"{c['in_process_host']:.0f} | {rates} | {ratios} | {over_v2:.2f} |"
        )


def run(target: Target, epochs: int, seconds: float, workers: int) -> dict[str, Any]:
    """Train on the target device and on the CPU, then serve, check and measure the target's bundle."""
    x = load_table("builtin:digits").x[:1024]  # (1024, 64) raw pixel values 0..16
    with tempfile.TemporaryDirectory() as tmp:
        training = {"target": train(Path(tmp) / "target", target.device, epochs)}
        training["cpu"] = train(Path(tmp) / "cpu", "cpu", epochs)
        training["target"]["over_cpu"] = training["target"]["rows_per_s"] / training["cpu"]["rows_per_s"]
        bundle = training["target"].pop("bundle")
        training["cpu"].pop("bundle")
        reference = open_bundle(bundle, device="cpu")
        served = serve_and_measure(bundle, target, reference, x, seconds, workers)
        local = in_process(bundle, target, reference, x, seconds)
    k_default = reference.manifest.anomaly.importance_samples
    cells = []
    for (op, rows, k), s, p in zip(CELLS, served.pop("cells"), local, strict=True):
        cell = {"op": op, "rows": rows, "importance_samples": (k or k_default) if op == "score" else None} | s | p
        for path in PATHS:
            cell[f"{path}_over_in_process"] = cell[path]["rows_per_s"] / cell["in_process_host"]
        cells.append(cell)
    return {"training": training, "inference": cells, **served}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs on each device")
    parser.add_argument("--duration", type=float, help="seconds per measured cell (default 3; 0.5 in the dry run)")
    parser.add_argument("--workers", type=int, default=0, help="vae-serve workers (default: the service's own)")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/gpu.json)")
    parser.add_argument("--force-cpu-dry-run", action="store_true", help="the whole flow on CPU, 1 epoch")
    args = parser.parse_args()
    dry = args.force_cpu_dry_run
    if not dry and (missing := cuda_missing()):
        print(f"gpu.py: no usable CUDA here, nothing measured: {'; '.join(missing)}")
        return 0
    target = Target("cpu", CPU) if dry else Target("cuda", CUDA)
    epochs, seconds = (1, 0.5) if dry else (args.epochs, 3.0)
    seconds = args.duration if args.duration is not None else seconds
    if args.workers < 0:
        parser.error("--workers must be 0 (the service's default) or more")
    workers = worker_count(ServiceSettings.model_construct(workers=args.workers, device=target.device))
    measured = run(target, epochs, seconds, workers)
    print(f"\nvae-serve: {measured['service_workers']} worker(s); load from {measured['load_generator']}")
    print_tables(measured["training"], measured["inference"])
    print(f"\nservice vs CPU provider, largest difference: {max(measured['parity_max_diff'].values()):.3g} (passed)")
    result = {
        "machine": machine_record(**gpu_record(target)),
        "dry_run": dry,
        "provider": target.provider,
        "seconds_per_cell": seconds,
    }
    out = args.out or ROOT / "benchmarks" / "results" / ("gpu-dry-run.json" if dry else "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result | measured, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
