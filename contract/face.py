"""The four operations' Python face, written once: the keyword arguments of encode, decode, sample and score are the
fields of their request models (contract/requests.py), with the same names, order and defaults, for every face that
runs them: LocalModel (runtime/local.py), BundleModel and the VAE estimator (gaussian_vae/), VAEClient and
AsyncVAEClient (service/client.py). Each face implements two methods, one for the operations on rows and one for
sample; tests/contract/test_face.py checks every face's signatures against the request models.

`model` names the model that answers: None is the face's own (the service's default model; a local face's bundle).
A local face runs one bundle and answers only to its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

from contract.requests import DecodeRequest, EncodeRequest, SampleRequest, ScoreRequest

R = TypeVar("R")  # what encode, decode and score give: the answer's columns, or an awaitable of them
S = TypeVar("S")  # what sample gives
# each parameter's default is its request field's
_ENCODE, _DECODE, _SAMPLE, _SCORE = (
    r.model_fields for r in (EncodeRequest, DecodeRequest, SampleRequest, ScoreRequest)
)


class Face(ABC, Generic[R, S]):
    """encode, decode, sample and score with the request models' parameters; rows are a numpy array (anything
    np.asarray takes) or, for inputs, a DataFrame whose columns are matched by name to the model's features."""

    @abstractmethod
    def _call(self, op: str, rows: Any, params: dict[str, Any], model: str | None) -> R:
        """Run encode, decode or score on `rows` with the request's parameters (rows left out)."""

    @abstractmethod
    def _sample(self, params: dict[str, Any], model: str | None) -> S:
        """Run sample with the request's parameters."""

    def encode(
        self,
        inputs: Any,
        *,
        samples: int = _ENCODE["samples"].default,
        seed: int | None = _ENCODE["seed"].default,
        fresh_noise: bool = _ENCODE["fresh_noise"].default,
        model: str | None = None,
    ) -> R:
        """mean, log_var (n, d) of q(z | x) (+ scale_tril when full, + z (n, samples, d) when samples > 0)."""
        return self._call("encode", inputs, {"samples": samples, "seed": seed, "fresh_noise": fresh_noise}, model)

    def decode(
        self,
        latents: Any,
        *,
        sample: bool = _DECODE["sample"].default,
        seed: int | None = _DECODE["seed"].default,
        fresh_noise: bool = _DECODE["fresh_noise"].default,
        model: str | None = None,
    ) -> R:
        """mean, log_var (n, D) of p(x | z) in raw data space (+ x drawn from it when sample)."""
        return self._call("decode", latents, {"sample": sample, "seed": seed, "fresh_noise": fresh_noise}, model)

    def sample(
        self,
        n: int = _SAMPLE["n"].default,
        *,
        temperature: float = _SAMPLE["temperature"].default,
        seed: int | None = _SAMPLE["seed"].default,
        fresh_noise: bool = _SAMPLE["fresh_noise"].default,
        return_latents: bool = _SAMPLE["return_latents"].default,
        noise: bool = _SAMPLE["noise"].default,
        model: str | None = None,
    ) -> S:
        """samples (n, D): decoder means of prior draws z (N(0, temperature² I), or the bundle's mixture with each
        component's spread scaled by temperature) (+ the decoder's noise when noise, + latents)."""
        params = {"n": n, "temperature": temperature, "seed": seed, "fresh_noise": fresh_noise}
        return self._sample({**params, "return_latents": return_latents, "noise": noise}, model)

    def score(
        self,
        inputs: Any,
        *,
        importance_samples: int | None = _SCORE["importance_samples"].default,
        seed: int | None = _SCORE["seed"].default,
        fresh_noise: bool = _SCORE["fresh_noise"].default,
        explain: bool = _SCORE["explain"].default,
        threshold_quantile: float | None = _SCORE["threshold_quantile"].default,
        model: str | None = None,
    ) -> R:
        """elbo, reconstruction, kl, log_likelihood, anomaly_score, percentile, p_value, is_anomaly (n,), threshold,
        importance_samples (+ feature_nll (n, D) when explain): the columns of the API's score answer."""
        params = {"importance_samples": importance_samples, "seed": seed, "fresh_noise": fresh_noise}
        return self._call(
            "score", inputs, {**params, "explain": explain, "threshold_quantile": threshold_quantile}, model
        )
