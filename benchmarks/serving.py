"""Serving speed: the service against in-process onnxruntime (BASELINES) and a naive FastAPI app, in one run.

    sudo apt-get install wrk nghttp2-client               # the load generators, HTTP/1.1 and h2c (Debian packages)
    .venv/bin/python benchmarks/serving.py [--bundle models/digits/1] [--duration 8] [--only "1024"] [--busy 1]
        [--compare REV] [--rounds 2] [--out benchmarks/results/serving.json]

Without --bundle it trains the default digits model first. Load goes to 127.0.0.1 only, for a bounded time.
--busy N keeps N CPU-bound processes running through the whole run, the in-process baselines included: a loaded
machine, with every figure and its baseline measured under the same load. --compare REV also serves git revision
REV (a temporary worktree; default settings and one worker), each config right after this checkout's, and
--rounds N runs every service config N times in turn: a change measured side by side with the code before it.
The gRPC workloads (the Open Inference Protocol's gRPC face, raw tensors in and out, loaded by h2load) run in the
same server processes as the REST ones, right after them, so each is compared with REST binary and JSON on the
same server in the same run.
Prints a table and writes benchmarks/results/serving.json (serving_busy.json with --busy), with machine, versions
and git sha.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from hogs import cpu_hogs  # benchmarks/ is on sys.path: the folder of the script run, or set by gpu.py
from machine import machine_record
from servers import Server, checkout, free_port, grpc_frame, run_h2load, run_wrk

ROOT = Path(__file__).resolve().parents[1]
K = 16  # importance samples: the default of /score (the K of the manifest's anomaly reference)

# (name, operation, rows per request, concurrent connections)
WORKLOADS = [
    ("score 1 row x64", "score", 1, 64),
    ("score 1024 rows x4", "score", 1024, 4),
    # importance_samples 1: the model at its cheapest, where the server's own cost per row shows most
    ("score K=1 1 row x64", "score-k1", 1, 64),
    ("score K=1 1024 rows x4", "score-k1", 1024, 4),
    ("encode 1 row x64", "encode", 1, 64),
    ("encode 1024 rows x4", "encode", 1024, 4),
    ("sample 1 x64", "sample", 1, 64),
    ("sample 1024 x4", "sample", 1024, 4),
    # Open Inference Protocol v2 with binary tensors in and out (service only; compared with naive JSON)
    ("v2 binary score 1024 x4", "v2-score", 1024, 4),
    ("v2 binary encode 1024 x4", "v2-encode", 1024, 4),
    ("v2 binary score K=1 1024 x4", "v2-score-k1", 1024, 4),
    ("v2 binary score K=1 1 row x64", "v2-score-k1", 1, 64),
    ("v2 binary encode 1 row x64", "v2-encode", 1, 64),
    # Open Inference Protocol over gRPC (service only): raw_input_contents in, raw_output_contents out
    ("grpc score 1 row x64", "grpc-score", 1, 64),
    ("grpc score 1024 x4", "grpc-score", 1024, 4),
    ("grpc score K=1 1 row x64", "grpc-score-k1", 1, 64),
    ("grpc score K=1 1024 x4", "grpc-score-k1", 1024, 4),
    ("grpc encode 1 row x64", "grpc-encode", 1, 64),
    ("grpc encode 1024 x4", "grpc-encode", 1024, 4),
    # no model: what one call costs the server before any work (V2 liveness, GET over HTTP/1.1 and ServerLive over
    # gRPC), the floor under every 1-row workload of its protocol
    ("live x64", "live", 0, 64),
    ("grpc live x64", "grpc-live", 0, 64),
]
BASELINE = {
    "v2 binary score 1024 x4": "score 1024 rows x4",
    "v2 binary encode 1024 x4": "encode 1024 rows x4",
    "v2 binary score K=1 1024 x4": "score K=1 1024 rows x4",
    "v2 binary score K=1 1 row x64": "score K=1 1 row x64",
    "v2 binary encode 1 row x64": "encode 1 row x64",
    "grpc score 1 row x64": "score 1 row x64",
    "grpc score 1024 x4": "score 1024 rows x4",
    "grpc score K=1 1 row x64": "score K=1 1 row x64",
    "grpc score K=1 1024 x4": "score K=1 1024 rows x4",
    "grpc encode 1 row x64": "encode 1 row x64",
    "grpc encode 1024 x4": "encode 1024 rows x4",
}
# The gRPC face's targets (issue 27): each gRPC workload against a REST one on the same server, same run.
GRPC_VERSUS = {
    "grpc score 1024 x4": "v2 binary score 1024 x4",
    "grpc score K=1 1024 x4": "v2 binary score K=1 1024 x4",
    "grpc encode 1024 x4": "v2 binary encode 1024 x4",
    "grpc score 1 row x64": "score 1 row x64",
    "grpc score K=1 1 row x64": "score K=1 1 row x64",
    "grpc encode 1 row x64": "encode 1 row x64",
    "grpc live x64": "live x64",
}
GRPC_METHODS = {"grpc-score": "ModelInfer", "grpc-score-k1": "ModelInfer", "grpc-encode": "ModelInfer"}
GRPC_METHODS["grpc-live"] = "ServerLive"


Rates = dict[str, dict[int, float]]  # operation -> rows per request -> rows/s
# In-process baselines, each rows/s of onnxruntime alone: "limit" is the best figure of this machine (the better of
# "1 session" and one run per CPU at once on one thread each); "1 session" is run after run on onnxruntime's default
# threads, as a notebook calls a model; "1 thread" is run after run on one thread (the reference).
BASELINES = ("limit", "1 session", "1 thread")


def in_process(bundle: Path, seconds: float = 1.5) -> dict[str, Rates]:
    """Each of BASELINES at batch 1, 64 and 1024."""
    threads = os.cpu_count() or 1
    sequential, single = _sessions(bundle, 0), _sessions(bundle, 1)
    d = sequential["encoder"].get_outputs()[0].shape[1]
    x_all = np.random.default_rng(0).random((1024, sequential["encoder"].get_inputs()[0].shape[1]), dtype=np.float32)
    out: dict[str, Rates] = {name: {} for name in BASELINES}
    for op, graph, k in (
        ("score", "scorer", K),
        ("score-k1", "scorer", 1),
        ("encode", "encoder", 0),
        ("sample", "decoder", 0),
    ):
        for rates in out.values():
            rates[op] = {}
        for b in (1, 64, 1024):
            if graph == "scorer":
                feeds = {"x": x_all[:b], "eps": np.random.default_rng(1).standard_normal((b, k, d), np.float32)}
            elif graph == "encoder":
                feeds = {"x": x_all[:b]}
            else:
                feeds = {"z": np.random.default_rng(1).standard_normal((b, d), np.float32)}
                if len(sequential[graph].get_inputs()) == 2:  # a decorrelated bundle's decoder draws x from eps too
                    feeds["eps"] = np.zeros((b, x_all.shape[1]), np.float32)
            session = _rate(sequential[graph], feeds, 1, seconds)
            out["1 session"][op][b] = session * b
            out["1 thread"][op][b] = _rate(single[graph], feeds, 1, seconds) * b
            out["limit"][op][b] = max(session, _rate(single[graph], feeds, threads, seconds)) * b
    return out


def _sessions(bundle: Path, threads: int) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default
    return {
        g: ort.InferenceSession(str(bundle / f"{g}.onnx"), options, providers=["CPUExecutionProvider"])
        for g in ("encoder", "decoder", "scorer")
    }


def _rate(session: ort.InferenceSession, feeds: dict[str, np.ndarray], callers: int, seconds: float) -> float:
    """runs/s of `callers` threads calling session.run at once."""
    session.run(None, feeds)
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def call(i: int) -> None:
        while time.perf_counter() < stop:
            session.run(None, feeds)
            counts[i] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - started)


def body(op: str, rows: int, x: np.ndarray, model: str = "") -> tuple[bytes, int | None]:
    """(request body, JSON header length for binary V2 requests or None); model: the bundle's name (gRPC)."""
    k1 = {"importance_samples": 1} if op.endswith("-k1") else {}
    if op == "grpc-live":
        return grpc_frame(b""), None  # an empty ServerLiveRequest
    if op.startswith("grpc-"):
        return grpc_frame(grpc_request(op, rows, x, model)), None
    if op == "live":
        return b"", None
    if op == "sample":
        return json.dumps({"n": rows}).encode(), None
    if op.startswith("v2-"):
        data = x[:rows].astype("<f4").tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [rows, x.shape[1]],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(data)},
                    }
                ],
                "parameters": {"binary_data_output": True, **k1},
            }
        ).encode()
        return header + data, len(header)
    return json.dumps({"inputs": x[:rows].tolist(), **k1}).encode(), None


def grpc_request(op: str, rows: int, x: np.ndarray, model: str) -> bytes:
    """A serialised ModelInferRequest of `rows` rows of x as raw FP32 (so the answer comes raw too)."""
    from service.grpc_codec import proto  # the service's own message classes, from the vendored proto

    pb, base = proto(), op.removeprefix("grpc-").removesuffix("-k1")
    request = pb.ModelInferRequest(model_name=f"{model}.{base}")
    tensor = request.inputs.add(name="x", datatype="FP32")
    tensor.shape.extend([rows, x.shape[1]])
    request.raw_input_contents.append(x[:rows].astype("<f4").tobytes())
    if op.endswith("-k1"):
        request.parameters["importance_samples"].int64_param = 1
    return request.SerializeToString()


def grpc_check(server: Server, method: str, message: bytes) -> None:
    """One call through grpcio before the load: the workload is answered, not refused."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")  # bytes in, bytes out
        try:
            call(message, timeout=30)
        except grpc.RpcError as exc:
            raise RuntimeError(f"{server.label}: gRPC {exc.code().name} {exc.details()}\n{server.log_tail()}") from exc


def grpc_failures(server: Server, method: str) -> int:
    """Calls of `method` the server answered with an error code so far (CANCELLED is left out: the load generator
    cancels the calls in flight when its time is up)."""
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=30).text
    return sum(
        int(float(line.rpartition(" ")[2]))
        for line in text.splitlines()
        if line.startswith(f'vae_requests_total{{endpoint="grpc:{method}"')
        and 'status="OK"' not in line
        and 'status="CANCELLED"' not in line
    )


def measure(server: Server, x: np.ndarray, seconds: int, tmp: Path, names: set[str], model: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, op, rows, conns in WORKLOADS:
        if op not in server.paths or name not in names:
            continue
        payload, header_length = body(op, rows, x, model)
        path = tmp / "body.bin"
        path.write_bytes(payload)
        method = "GET" if op == "live" else "POST"
        if op.startswith("grpc-"):
            rpc = server.paths[op]
            grpc_check(server, rpc, payload[5:])
            failed_before = grpc_failures(server, rpc)
            url = f"http://127.0.0.1:{server.grpc_port}/inference.GRPCInferenceService/{rpc}"
            cpu_before = server.cpu_s()
            w = run_h2load(url, path, conns, seconds, tmp)
            cpu = server.cpu_s() - cpu_before
            w["non2xx"] += grpc_failures(server, rpc) - failed_before
        else:
            url = f"http://127.0.0.1:{server.port}{server.paths[op]}"
            headers = {"content-type": "application/json"}
            if header_length is not None:
                headers["inference-header-content-length"] = str(header_length)
            check = httpx.request(method, url, content=payload, headers=headers, timeout=30)
            if check.status_code != 200:
                raise RuntimeError(
                    f"{server.label} {name}: {check.status_code} {check.text[:200]}\n{server.log_tail()}"
                )
            cpu_before = server.cpu_s()
            w = run_wrk(url, path, header_length, conns, seconds, method)
            cpu = server.cpu_s() - cpu_before
        rps = w["requests"] / (w["duration_us"] / 1e6)
        results[name] = {
            "requests_per_s": rps,
            "rows_per_s": rps * rows,
            "p50_ms": w["p50_us"] / 1000,
            "p99_ms": w["p99_us"] / 1000,
            "errors": w["socket_errors"] + w["non2xx"],
            # the server's CPU (every process and thread) per request answered: what a request costs on a machine
            # whose cores the load generator shares, where req/s alone mixes the two
            "server_cpu_us": cpu / max(w["requests"], 1) * 1e6,
        }
        print(
            f"  {server.label:<16} {name:<28} {rps:>9.0f} req/s {rps * rows:>10.0f} rows/s "
            f"p50 {w['p50_us'] / 1000:>7.2f} ms  p99 {w['p99_us'] / 1000:>7.2f} ms  "
            f"CPU {results[name]['server_cpu_us']:>6.0f} us/req  errors {results[name]['errors']}",
            flush=True,
        )
    results["peak_rss_mib"] = server.peak_rss_mib()
    return results


def ensure_bundle(bundle: Path | None, tmp: Path) -> Path:
    if bundle is not None:
        return bundle
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "--data",
            "builtin:digits",
            "--name",
            "digits",
            "--out",
            str(tmp / "models"),
            "--quiet",
        ],
        check=True,
    )
    return tmp / "models" / "digits" / "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a bundle folder <repository>/<name>/<version>")
    parser.add_argument("--duration", type=int, default=8, help="seconds of load per workload")
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="CPU-bound processes running through the whole run, baselines included (a loaded machine)",
    )
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/serving.json (serving_busy.json)")
    parser.add_argument("--only", default="", help="run only the workloads whose name contains this text")
    parser.add_argument(
        "--compare", metavar="REV", help="also serve git revision REV (default settings, 1 worker), each in turn"
    )
    parser.add_argument("--rounds", type=int, default=1, help="run the service configs this many times in turn")
    args = parser.parse_args()
    if args.rounds < 1 or args.busy < 0:
        parser.error("--rounds must be at least 1 and --busy at least 0")
    out = args.out or ROOT / "benchmarks" / "results" / ("serving_busy.json" if args.busy else "serving.json")
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"{' and '.join(missing)} missing: sudo apt-get install wrk nghttp2-client")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundle = ensure_bundle(args.bundle, tmp).resolve()
        with checkout(args.compare, tmp) as compare, cpu_hogs(args.busy):
            baselines, servers = measure_all(bundle, args.duration, args.only, tmp, compare, args.rounds)
    summary = summarise(servers, baselines)
    print_table(servers, summary)
    machine = machine_record(busy_processes=args.busy, compared_with=args.compare)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "in_process_rows_per_s": baselines,
                "servers": servers,
                "summary": summary,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


def measure_all(
    bundle: Path, seconds: int, only: str, tmp: Path, compare: Path | None = None, rounds: int = 1
) -> tuple[dict[str, Rates], dict[str, Any]]:
    """The in-process baselines, then every server config under wrk: (baselines, server -> workload -> figures).

    compare: a checkout of another revision, whose service runs (default settings and one worker) right after
    each of this one's; rounds: every service config that many times in turn, labelled #1, #2, ..."""
    repo, name = bundle.parent.parent, bundle.parent.name
    x = np.random.default_rng(0).random((1024, json.loads((bundle / "manifest.json").read_text())["input_dim"]))
    x = (x * 0.5).round(4)
    baselines = in_process(bundle)
    for title, rates in baselines.items():
        print(f"in-process {title}, rows/s:", {op: {b: round(v) for b, v in r.items()} for op, r in rates.items()})
    servers: dict[str, Any] = {}
    bin_dir = Path(sys.executable).parent
    service_paths = {op: f"/v1/models/{name}/{op}" for op in ("score", "encode", "sample")}
    service_paths |= {f"v2-{op}": f"/v2/models/{name}.{op}/infer" for op in ("score", "encode")}
    service_paths |= {"score-k1": service_paths["score"], "v2-score-k1": service_paths["v2-score"]}
    service_paths["live"] = "/v2/health/live"
    grpc_paths = dict(GRPC_METHODS)
    ours = service_paths | grpc_paths
    names = {name for name, *_ in WORKLOADS if only in name}
    names |= {BASELINE[name] for name in names if name in BASELINE}  # what a V2 workload is compared with
    names |= {GRPC_VERSUS[name] for name in names if name in GRPC_VERSUS}  # and a gRPC one, on the same server
    serve, service_env = [str(bin_dir / "vae-serve"), "--log-level", "warning"], {"VAE_MODEL_REPOSITORY": str(repo)}
    naive = (
        "naive",
        [str(bin_dir / "uvicorn"), "benchmarks.naive_app:app", "--http", "h11", "--loop", "asyncio"],
        {"NAIVE_BUNDLE": str(bundle)},
        {op: f"/{op}" for op in ("score", "encode", "sample")} | {"score-k1": "/score"},
        ROOT,
    )
    service = [
        # default: one worker per usable CPU (at most 8); VAE_WORKERS is left to vae-serve
        ("service default", serve, {**service_env, "VAE_WORKERS": "0"}, ours, ROOT),
        ("service 1 worker", serve, {**service_env, "VAE_WORKERS": "1"}, ours, ROOT),
        (
            "service no log",
            serve,
            {**service_env, "VAE_WORKERS": "0", "VAE_LOG_REQUESTS": "false"},
            ours,
            ROOT,
        ),
    ]
    if compare is not None:
        # the other checkout's packages come first on sys.path from its folder (python -c puts the cwd first)
        other = [sys.executable, "-c", "from service.cli import main; main()", "--log-level", "warning"]
        rev = compare.name
        paths = service_paths | (grpc_paths if (compare / "service" / "grpc_face.py").exists() else {})
        service.insert(1, (f"service default @{rev}", other, service[0][2], paths, compare))
        service.insert(3, (f"service 1 worker @{rev}", other, service[2][2], paths, compare))
    configs = [naive] + [
        (f"{label} #{r + 1}" if rounds > 1 else label, argv, env, paths, cwd)
        for r in range(rounds)
        for label, argv, env, paths, cwd in service
    ]
    for label, argv, env, paths, cwd in configs:
        port, grpc_port = free_port(), 0 if "naive" in label else free_port()
        argv = [*argv, "--port", str(port)] + (["--host", "127.0.0.1"] if "naive" in label else [])
        env = {**env, "VAE_GRPC_PORT": str(grpc_port)}
        server = Server(label, argv, env, paths, port, cwd, grpc_port)
        try:
            servers[label] = measure(server, x, seconds, tmp, names, name)
        finally:
            server.stop()
    return baselines, servers


def summarise(servers: dict[str, Any], baselines: dict[str, Rates]) -> dict[str, Any]:
    """Each service workload against the naive app's and onnxruntime's figures for the same work (where those have
    one: the no-model workloads have neither), and each gRPC workload against its REST one on the same server."""
    summary: dict[str, Any] = {}
    naive = servers["naive"]
    for label in (label for label in servers if label.startswith("service")):
        s = servers[label]
        summary[label] = {}
        for name, op, rows, _ in WORKLOADS:
            if name not in s:
                continue
            r, q = s[name], summary[label].setdefault(name, {})
            if (n := naive.get(BASELINE.get(name, name))) is not None:
                q["vs_naive_throughput"] = r["requests_per_s"] / n["requests_per_s"]
                q["vs_naive_p99"] = r["p99_ms"] / n["p99_ms"]
            if rows:
                base = op.removeprefix("v2-").removeprefix("grpc-")
                q["vs_in_process_rows"] = {b: r["rows_per_s"] / rates[base][rows] for b, rates in baselines.items()}
            if (rest := s.get(GRPC_VERSUS.get(name, ""))) is not None:
                q["vs_rest"] = r["requests_per_s"] / rest["requests_per_s"]
                q["cpu_vs_rest"] = r["server_cpu_us"] / rest["server_cpu_us"]
    return summary


def print_table(servers: dict[str, Any], summary: dict[str, Any]) -> None:
    w = max(17, *(len(label) + 1 for label in servers))
    print(
        f"\n{'workload':<31}{'server':<{w}}{'req/s':>9}{'rows/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'err':>5}"
        f"{'CPU us':>8}{'x naive':>9}{'p99/naive':>10}" + "".join(f"{'/' + b:>11}" for b in BASELINES)
    )
    for name, *_ in WORKLOADS:
        for label, s in servers.items():
            if name not in s:
                continue
            r, q = s[name], summary.get(label, {}).get(name, {})
            extra = "".join(
                f"{q[key]:>{width}.2f}" if key in q else " " * width
                for key, width in (("vs_naive_throughput", 9), ("vs_naive_p99", 10))
            ) + "".join(f"{q['vs_in_process_rows'][b]:>11.2f}" for b in BASELINES if "vs_in_process_rows" in q)
            print(
                f"{name:<31}{label:<{w}}{r['requests_per_s']:>9.0f}{r['rows_per_s']:>11.0f}{r['p50_ms']:>9.2f}"
                f"{r['p99_ms']:>9.2f}{r['errors']:>5}{r['server_cpu_us']:>8.0f}{extra.rstrip()}"
            )
    pairs = [(label, name) for label, q in summary.items() for name in GRPC_VERSUS if "vs_rest" in q.get(name, {})]
    if pairs:
        print("\ngRPC against REST on the same server, same run (req/s ratio; server CPU per request ratio):")
        for label, name in pairs:
            q = summary[label][name]
            print(f"  {label:<{w}}{name:<28} / {GRPC_VERSUS[name]:<28}{q['vs_rest']:>7.2f}{q['cpu_vs_rest']:>7.2f}")
    print("peak RSS (MiB): " + ", ".join(f"{k} {v['peak_rss_mib']:.0f}" for k, v in servers.items()))


if __name__ == "__main__":
    main()
