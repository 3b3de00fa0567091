"""The baseline: a FastAPI app written the obvious way, for benchmarks/serving.py to compare against.

One request = one onnxruntime run, a pydantic `list[list[float]]` body validated float by float, sync routes
(FastAPI runs them on its thread pool), JSON via the standard library, plain h11 uvicorn with its access log.
Run: NAIVE_BUNDLE=models/digits/1 uvicorn benchmarks.naive_app:app --http h11 --loop asyncio
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

BUNDLE = Path(os.environ.get("NAIVE_BUNDLE", "models/digits/1"))
encoder = ort.InferenceSession(str(BUNDLE / "encoder.onnx"), providers=["CPUExecutionProvider"])
decoder = ort.InferenceSession(str(BUNDLE / "decoder.onnx"), providers=["CPUExecutionProvider"])
scorer = ort.InferenceSession(str(BUNDLE / "scorer.onnx"), providers=["CPUExecutionProvider"])
LATENT = encoder.get_outputs()[0].shape[1]
app = FastAPI()


class Rows(BaseModel):
    inputs: list[list[float]]
    importance_samples: int = 16
    seed: int | None = None


class Sample(BaseModel):
    n: int = 16
    seed: int | None = None


@app.post("/score")
def score(body: Rows) -> dict[str, list[float]]:
    x = np.asarray(body.inputs, dtype=np.float32)
    eps = np.random.default_rng(body.seed).standard_normal((len(x), body.importance_samples, LATENT), np.float32)
    elbo, rec, kl, log_lik, _ = scorer.run(None, {"x": x, "eps": eps})
    return {
        "elbo": elbo.tolist(),
        "reconstruction": rec.tolist(),
        "kl": kl.tolist(),
        "log_likelihood": log_lik.tolist(),
        "anomaly_score": (-elbo).tolist(),
    }


@app.post("/encode")
def encode(body: Rows) -> dict[str, list[list[float]]]:
    mean, log_var = encoder.run(None, {"x": np.asarray(body.inputs, dtype=np.float32)})[:2]
    return {"mean": mean.tolist(), "log_var": log_var.tolist()}


@app.post("/sample")
def sample(body: Sample) -> dict[str, list[list[float]]]:
    z = np.random.default_rng(body.seed).standard_normal((body.n, LATENT), np.float32)
    feeds = {"z": z}
    if len(decoder.get_inputs()) == 2:  # a decorrelated bundle's decoder draws x from eps too; no draw here
        feeds["eps"] = np.zeros((body.n, decoder.get_inputs()[1].shape[1]), np.float32)
    (mean,) = decoder.run(["mean"], feeds)
    return {"samples": mean.tolist()}
