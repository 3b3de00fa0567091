"""onnxruntime vs PyTorch on held-out rows with the same eps, at batch sizes and K unlike the export's dummies.

A size read from a shape can be frozen into a traced graph as a constant; only a run at other sizes catches it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from contract import ParityReport
from contract.layout import GRAPH_FILES
from training.errors import ParityError
from training.export.onnx import graph_io, graph_modules
from training.model import GaussianVAE

# |ort - torch| <= ATOL + RTOL * |torch| for every output element (float32 kernels differ in summation order).
ATOL = 1e-3
RTOL = 1e-4
BATCH_SIZES = (1, 2, 19)
IMPORTANCE_SAMPLES = (1, 2, 23)


def check_parity(model: GaussianVAE, graph_dir: Path, x_raw: np.ndarray, seed: int) -> ParityReport:
    """Run each graph in onnxruntime (CPU) and in PyTorch on rows of x_raw; raise ParityError past tolerance."""
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    modules = graph_modules(cpu_model)
    io_specs = graph_io(cpu_model)
    gen = torch.Generator().manual_seed(seed)
    d = cpu_model.config.latent_dim
    worst = 0.0
    for name, module in modules.items():
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = torch.get_num_threads()  # as many as training was given (TrainConfig.threads)
        session = ort.InferenceSession(str(graph_dir / GRAPH_FILES[name]), opts, providers=["CPUExecutionProvider"])
        outputs = [s.name for s in io_specs[name][1]]
        for b, k in zip(BATCH_SIZES, IMPORTANCE_SAMPLES, strict=True):
            rows = torch.from_numpy(np.resize(x_raw, (b, x_raw.shape[1])).astype(np.float32))
            eps = torch.randn(b, k, d, generator=gen)
            if name == "encoder":
                feeds = {"x": rows}
            elif name == "decoder":
                feeds = {"z": torch.randn(b, d, generator=gen) * 1.5}
                if cpu_model.decorrelating:
                    feeds["eps"] = torch.randn(b, x_raw.shape[1], generator=gen)
            else:
                feeds = {"x": rows, "eps": eps}
            with torch.no_grad():
                expected = [t.numpy() for t in module(*feeds.values())]
            got = session.run(outputs, {key: v.numpy() for key, v in feeds.items()})
            for out_name, e, g in zip(outputs, expected, got, strict=True):
                if g.shape != e.shape:
                    raise ParityError(name, f"{out_name} shape {g.shape} vs {e.shape}", float("inf"), ATOL, RTOL)
                diff = np.abs(g.astype(np.float64) - e)
                worst = max(worst, float(diff.max(initial=0.0)))
                if not np.all(diff <= ATOL + RTOL * np.abs(e)) or not np.all(np.isfinite(g)):
                    raise ParityError(name, out_name, float(diff.max(initial=0.0)), ATOL, RTOL)
    return ParityReport(
        atol=ATOL,
        rtol=RTOL,
        max_abs_diff=worst,
        batch_sizes=list(BATCH_SIZES),
        importance_samples=list(IMPORTANCE_SAMPLES),
        passed=True,
    )
