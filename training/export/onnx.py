"""The three exported graphs (DESIGN 3). Standardisation is baked in, and with it the bin centres: a lattice feature's
value x is encoded and scored at x + h/2 and its decoded mean moved back by h/2 (FeatureScaling.centre_shift);
randomness enters only as the `eps` input.

encoder  x[batch, D]                   -> mean[batch, d], log_var[batch, d] (+ scale_tril[batch, d, d] when full)
decoder  z[batch, d]                   -> mean[batch, D], log_var[batch, D]             (raw data space)
         decorrelated: z, eps[batch, D]  -> mean, log_var (each feature's marginal), x[batch, D] (a draw)
scorer   x[batch, D], eps[batch, K, d] -> elbo, reconstruction, kl, log_likelihood [batch], feature_nll[batch, D]
"""

from __future__ import annotations

import copy
import io
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import onnx
import onnxscript.optimizer
import torch
from torch import Tensor, nn

from contract import TensorSpec
from contract.layout import GRAPH_FILES, GRAPHS, graph_inputs, graph_outputs
from training.losses import score_terms
from training.model import GaussianVAE

OPSET = 18
log = logging.getLogger(__name__)


class EncoderGraph(nn.Module):
    def __init__(self, model: GaussianVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        post = self.model.encode(self.model.at_bin_centres(self.model.standardize(x)))
        if post.scale_tril is None:
            return post.mean, post.log_var
        return post.mean, post.log_var, post.scale_tril


class DecoderGraph(nn.Module):
    def __init__(self, model: GaussianVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor, eps: Tensor | None = None) -> tuple[Tensor, ...]:
        # standardised (m, log s²) -> raw ((m - shift) std + data_mean, log s² + 2 log std): a lattice feature's mean
        # moved back from its bin's centre onto the data's values (shift = h/2 / std, dequantised training); a constant
        # column: (c, log s²). Decorrelated, (m, log s²) are each feature's marginal (GaussianVAE.decoded), and
        # x = L (m_y + s_y eps) over the active features, a constant's value c + s eps, in raw units
        model = self.model
        mean, log_var = model.decoded(z)
        std = model.data_std
        raw_mean = model.off_bin_centres(model.full(mean)) * std + model.data_mean
        raw_log_var = model.full(log_var) + 2.0 * torch.log(std)
        if eps is None:
            return raw_mean, raw_log_var
        y_mean, y_log_var = model.decoder(z)
        x_std = model.full(model.draw(y_mean, y_log_var, model.select(eps)), eps)  # a constant's standardised sd is 1
        return raw_mean, raw_log_var, model.off_bin_centres(x_std) * std + model.data_mean


class ScorerGraph(nn.Module):
    def __init__(self, model: GaussianVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        raw = score_terms(self.model, self.model.at_bin_centres(self.model.standardize(x)), eps, per_feature=True)
        assert raw.feature_ll is not None
        return raw.elbo, raw.reconstruction, raw.kl, raw.iwae, -raw.feature_ll


def graph_io(model: GaussianVAE) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """Input and output specs of each graph, as recorded in the manifest ("batch" and "K" are dynamic)."""
    D, d = model.config.input_dim, model.config.latent_dim

    def t(name: str, *shape: int | str) -> TensorSpec:
        return TensorSpec(name=name, shape=list(shape))

    # per-row axes of every tensor name of contract/layout.py's vocabulary
    axes: dict[str, tuple[int | str, ...]] = {"x": (D,), "z": (d,), "eps": ("K", d), "scale_tril": (d, d)}
    axes["feature_nll"] = (D,)
    per_graph = {"encoder": (d,), "scorer": ()}  # mean / log_var, or the scorer's (B,) terms

    def shape(graph: str, name: str) -> tuple[int | str, ...]:
        if graph == "decoder":  # z in; mean, log_var, and a draw's eps and x: one value per feature
            return (d,) if name == "z" else (D,)
        return axes.get(name, per_graph[graph])

    def specs(graph: str, names: tuple[str, ...]) -> list[TensorSpec]:
        return [t(n, "batch", *shape(graph, n)) for n in names]

    covariance, decorrelated = model.config.covariance, model.decorrelating
    return {
        g: (specs(g, graph_inputs(g, decorrelated)), specs(g, graph_outputs(g, covariance, decorrelated)))
        for g in GRAPHS
    }


def graph_modules(model: GaussianVAE) -> dict[str, nn.Module]:
    return {"encoder": EncoderGraph(model), "decoder": DecoderGraph(model), "scorer": ScorerGraph(model)}


def _dummy_sizes(model: GaussianVAE) -> tuple[int, int]:
    # Dummy batch and K differ from every fixed size, so no symbolic axis can be confused with D or d.
    taken = {model.config.input_dim, model.config.latent_dim}
    free = [p for p in (3, 5, 7, 11, 13, 17) if p not in taken]
    return free[0], free[1]


_EXPORTING = threading.Lock()


@contextmanager
def _torchlib_registry_built_once() -> Iterator[None]:
    """Within it, torch.onnx.export builds its table of ATen -> ONNX functions once, not on every call.

    It builds the table from onnxscript's ~1,500 functions each time: about 1 s, a quarter of a warm export, three
    times a bundle. An export only reads the table (the dispatcher looks functions up; it is written to only for a
    custom_translation_table, which export_graphs never passes), so one table serves the three graphs. Where this
    torch builds it some other way (the classmethod below is the exporter's in torch 2.13), nothing changes. Held
    under a lock: two threads' patches could interleave, and torch.onnx.export is not made to run in parallel."""
    with _EXPORTING:
        yield from _with_one_table()


def _with_one_table() -> Iterator[None]:
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
    except ImportError:
        yield
        return
    build = ONNXRegistry.__dict__.get("from_torchlib")
    if not isinstance(build, classmethod):
        yield
        return
    built: dict[tuple[Any, ...], Any] = {}

    def once(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = build.__func__(cls, *args, **kwargs)
        return built[key]

    ONNXRegistry.from_torchlib = classmethod(once)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        ONNXRegistry.from_torchlib = build  # type: ignore[method-assign,assignment]


EXPORTERS = ("torchscript", "dynamo")


def export_graphs(model: GaussianVAE, out_dir: Path, exporter: str = "torchscript") -> None:
    """Write encoder.onnx, decoder.onnx and scorer.onnx (CPU float32, dynamic batch and K) into out_dir.

    exporter "torchscript" traces each graph with torch's TorchScript-based exporter: 11 to 16 times faster than the
    torch.export-based one on these graphs (0.2-0.4 s a bundle against 4.2-4.5 s warm, benchmarks/export.py), with
    outputs equal to float32 rounding and graphs no slower on onnxruntime's CPU provider. Where this torch lacks it,
    or it refuses a graph, or the tracer warns of a value it would freeze into the graph, that graph goes to the
    torch.export-based exporter with a warning ("dynamo", which export_graphs also takes by name). The parity check
    that follows every export runs each graph at several batch sizes and K against the model, whichever wrote it."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    cpu_model = copy.deepcopy(model).to("cpu").eval()  # export on CPU without moving the caller's model
    modules = graph_modules(cpu_model)
    b, k = _dummy_sizes(cpu_model)
    D, d = cpu_model.config.input_dim, cpu_model.config.latent_dim
    dummies = {
        "encoder": (torch.randn(b, D),),
        "decoder": (torch.randn(b, d), torch.randn(b, D)) if cpu_model.decorrelating else (torch.randn(b, d),),
        "scorer": (torch.randn(b, D), torch.randn(b, k, d)),
    }
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed" notices
    for name in ("onnxscript", "onnx_ir"):  # the optimiser's ~150 lines a bundle at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    with _torchlib_registry_built_once(), warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters' progress, and the TorchScript one's deprecation notice
        for name, (inputs, outputs) in graph_io(cpu_model).items():
            path = out_dir / GRAPH_FILES[name]
            if exporter == "torchscript" and _traced(modules[name], dummies[name], inputs, outputs, path):
                continue
            _exported(modules[name], dummies[name], inputs, outputs, path)
            log.debug("exported %s", name)


def _traced(
    module: nn.Module, dummy: tuple[Tensor, ...], inputs: list[TensorSpec], outputs: list[TensorSpec], path: Path
) -> bool:
    """Export by tracing; False (and nothing written) where this torch's TorchScript exporter is gone or refuses, or
    the traced graph cannot be finished."""
    dynamic = {s.name: {i: n for i, n in enumerate(s.shape) if isinstance(n, str)} for s in (*inputs, *outputs)}
    try:
        # a TracerWarning is how the tracer says a value (a size, a branch) became a constant of the graph
        warnings.simplefilter("error", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            dummy,
            str(path),
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
        onnx.save(_finished(onnx.load(str(path)), (*inputs, *outputs)), str(path))
    except Exception as exc:  # noqa: BLE001 - any refusal: the other exporter writes the graph, parity checks both
        log.warning(
            "the TorchScript exporter refused %s (%s: %s); writing it with torch.export, about ten times slower",
            path.name,
            type(exc).__name__,
            exc,
        )
        path.unlink(missing_ok=True)
        return False
    log.debug("traced %s", path.name)
    return True


def _finished(graph: onnx.ModelProto, specs: tuple[TensorSpec, ...]) -> onnx.ModelProto:
    """A traced graph made what the torch.export-based exporter writes: onnxscript's optimiser (constant folding,
    dead nodes: 209 nodes of a full decorrelated scorer become 126), the specs' shapes on the inputs and outputs (the
    tracer leaves fixed sizes symbolic, e.g. a full encoder's log_var), and every intermediate's shape in terms of
    batch and K. Without the shapes onnxruntime plans no intermediate: serving them, a soak of mixed batch sizes grew
    the arena by 35 MiB after the largest batches had been seen (tests/service/test_soak.py)."""
    graph = onnxscript.optimizer.optimize(graph)
    by_name = {s.name: s.shape for s in specs}
    for value in (*graph.graph.input, *graph.graph.output):
        for dim, size in zip(value.type.tensor_type.shape.dim, by_name[value.name], strict=True):
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size
    del graph.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(graph, strict_mode=True, data_prop=True)


def _exported(
    module: nn.Module, dummy: tuple[Tensor, ...], inputs: list[TensorSpec], outputs: list[TensorSpec], path: Path
) -> None:
    """Export through torch.export (under _torchlib_registry_built_once: one ATen -> ONNX table for the bundle)."""
    dims = {"batch": torch.export.Dim("batch", min=1), "K": torch.export.Dim("K", min=1)}
    dynamic = {s.name: {i: dims[n] for i, n in enumerate(s.shape) if isinstance(n, str)} for s in inputs}
    program = torch.onnx.export(
        module,
        dummy,
        input_names=[s.name for s in inputs],
        output_names=[s.name for s in outputs],
        dynamic_shapes=dynamic,
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    assert program is not None
    program.save(str(path))
