"""Per-layer sensitivity to compression, measured with onnxruntime on calibration data.

For every layer with constant weights (Conv, ConvTranspose, Gemm, MatMul) and every
action, the action is applied to that layer alone and the model's first output is
compared with the original on the calibration samples:

- ``int8``: weights fake-quantised per output channel (symmetric int8) and the layer's
  input fake-quantised per tensor (asymmetric uint8, range from calibration);
- ``fp16``: weights, bias and input rounded to float16;
- ``prune25`` / ``prune50`` (any ``prune<P>``): the P % output channels of lowest L1 norm
  removed (their weights and bias zeroed, which is what removing them does to the output);
- ``rank50`` / ``rank25`` (any ``rank<P>``): the weight, as a ``C_out x rest`` matrix,
  truncated to P % of its singular values.

Metrics: SQNR (dB) and cosine similarity of the output, top-1 agreement with the
original (classifier-shaped outputs), and accuracy when labels are given.

It scales by building one onnxruntime session for the whole analysis: each analysed
layer's weight and bias become graph inputs, and its input passes through a switch
``x + e8 * (QDQ(x) - x) + e16 * (fp16(x) - x)`` whose ``e8``/``e16`` are inputs too. With
the switches at 0 and the original weights fed, the graph computes exactly the original
outputs (checked); an action is a different feed, never a new session. ``jobs`` splits
the layers over worker processes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from hwcomp.analysis.cost import MAC_OPS
from hwcomp.errors import ModelLoadError
from hwcomp.model import sample_count, to_proto

logger = logging.getLogger(__name__)

ACTIONS = ("int8", "fp16", "prune25", "prune50", "rank50", "rank25")


def parse_action(action: str) -> tuple[str, float]:
    """Split ``prune30`` into ``("prune", 0.30)``; ``int8``/``fp16`` have no amount.

    Raises:
        ValueError: Not an action, or a percentage outside [0, 100].
    """
    if action in ("int8", "fp16"):
        return action, 0.0
    for family in ("prune", "rank"):
        if action.startswith(family) and action[len(family):].isdigit():
            percent = int(action[len(family):])
            if 0 <= percent <= 100:
                return family, percent / 100
    raise ValueError(
        f"unknown action '{action}': use int8, fp16, prune<P> or rank<P> with P in 0..100"
    )


@dataclass(frozen=True)
class Layer:
    """A layer that sensitivity analysis can act on."""

    name: str
    op_type: str
    data_input: str
    weight: str
    bias: str
    out_axis: int
    groups: int


@dataclass(frozen=True)
class ActionResult:
    """The effect of one action on one layer, over the calibration samples.

    ``sqnr_db`` is None when the output is reproduced exactly (``exact``).
    """

    layer: str
    action: str
    sqnr_db: float | None
    cosine: float
    top1_agreement: float | None
    accuracy: float | None
    exact: bool


@dataclass(frozen=True)
class SensitivityReport:
    """All results, with what they were measured on."""

    layers: list[str]
    actions: list[str]
    results: list[ActionResult]
    samples: int
    random_calibration: bool
    baseline_accuracy: float | None
    seconds: float
    notes: list[str] = field(default_factory=list)

    def table(self) -> dict[str, dict[str, ActionResult]]:
        """Index results as ``table[layer][action]``."""
        out: dict[str, dict[str, ActionResult]] = {}
        for result in self.results:
            out.setdefault(result.layer, {})[result.action] = result
        return out


def find_layers(model: ir.Model) -> list[Layer]:
    """Layers with a constant weight, in execution order."""
    layers = []
    for node in model.graph:
        if node.op_type not in MAC_OPS or len(node.inputs) < 2:
            continue
        data, weight = node.inputs[0], node.inputs[1]
        if weight is None or data is None or weight.const_value is None:
            continue
        if data.const_value is not None or weight.const_value.numpy().ndim < 2:
            continue
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        has_bias = bias is not None and bias.const_value is not None and node.op_type != "MatMul"
        if node.op_type == "Gemm":
            out_axis = 0 if node.attributes.get_int("transB", 0) else 1
        elif node.op_type == "MatMul":
            out_axis = weight.const_value.numpy().ndim - 1
        elif node.op_type == "ConvTranspose":
            out_axis = 1
        else:
            out_axis = 0
        layers.append(Layer(
            name=node.name or (node.outputs[0].name or ""),
            op_type=node.op_type,
            data_input=data.name or "",
            weight=weight.name or "",
            bias=(bias.name or "") if has_bias and bias is not None else "",
            out_axis=out_axis,
            groups=node.attributes.get_int("group", 1),
        ))
    return layers


# --- weight transformations, one per action family -------------------------------------

def fake_quant_int8(weight: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric per-channel int8 quantise-dequantise along ``axis``."""
    moved = np.moveaxis(weight, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    scale = np.abs(flat).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(flat / scale[:, None]), -127, 127) * scale[:, None]
    return np.moveaxis(q.reshape(moved.shape), 0, axis).astype(weight.dtype)


def prune_channels(weight: np.ndarray, bias: np.ndarray | None, axis: int, ratio: float
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero the ``ratio`` output channels of lowest L1 norm (and their bias)."""
    moved = np.moveaxis(weight, axis, 0)
    count = int(math.floor(ratio * moved.shape[0]))
    if count == 0:
        return weight, bias
    norms = np.abs(moved.reshape(moved.shape[0], -1)).sum(axis=1)
    drop = np.argsort(norms, kind="stable")[:count]
    pruned = moved.copy()
    pruned[drop] = 0
    new_bias = None
    if bias is not None:
        new_bias = bias.copy()
        new_bias[drop] = 0
    return np.moveaxis(pruned, 0, axis), new_bias


def truncate_rank(weight: np.ndarray, axis: int, keep: float) -> np.ndarray:
    """Keep ``keep`` of the singular values of the weight as a ``C_out x rest`` matrix."""
    if keep >= 1.0:
        return weight
    moved = np.moveaxis(weight, axis, 0)
    matrix = moved.reshape(moved.shape[0], -1).astype(np.float64)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    rank = max(1, int(math.ceil(keep * len(s))))
    approx = (u[:, :rank] * s[:rank]) @ vt[:rank]
    return np.moveaxis(approx.reshape(moved.shape), 0, axis).astype(weight.dtype)


# --- the switchable graph ----------------------------------------------------------------

def _switch_names(index: int) -> dict[str, str]:
    prefix = f"hwcomp_sens_{index}"
    return {key: f"{prefix}_{key}" for key in ("w", "b", "e8", "e16", "scale", "zp", "x")}


def instrument(model: ir.Model, layers: Sequence[Layer]) -> onnx.ModelProto:
    """Return the model with every layer's weights, bias and input switches as inputs."""
    proto = to_proto(model)
    graph = proto.graph
    by_name = {node.name or node.output[0]: node for node in graph.node}
    # The initializers stay (other nodes may read them); the layers read the new inputs.
    weights = {t.name: t for t in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    switches: dict[str, list[onnx.NodeProto]] = {}
    for index, layer in enumerate(layers):
        names = _switch_names(index)
        node = by_name[layer.name]
        tensor = weights[layer.weight]
        graph.input.append(helper.make_tensor_value_info(names["w"], tensor.data_type, list(tensor.dims)))
        node.input[1] = names["w"]
        if layer.bias:
            bias = weights[layer.bias]
            graph.input.append(helper.make_tensor_value_info(names["b"], bias.data_type, list(bias.dims)))
            node.input[2] = names["b"]
        for key in ("e8", "e16", "scale"):
            graph.input.append(helper.make_tensor_value_info(names[key], TensorProto.FLOAT, []))
        graph.input.append(helper.make_tensor_value_info(names["zp"], TensorProto.UINT8, []))
        x, p = layer.data_input, names["x"]
        switches[layer.name] = [
            helper.make_node("QuantizeLinear", [x, names["scale"], names["zp"]], [f"{p}_q"]),
            helper.make_node("DequantizeLinear", [f"{p}_q", names["scale"], names["zp"]], [f"{p}_dq"]),
            helper.make_node("Cast", [x], [f"{p}_h"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", [f"{p}_h"], [f"{p}_hf"], to=TensorProto.FLOAT),
            helper.make_node("Sub", [f"{p}_dq", x], [f"{p}_d8"]),
            helper.make_node("Sub", [f"{p}_hf", x], [f"{p}_d16"]),
            helper.make_node("Mul", [f"{p}_d8", names["e8"]], [f"{p}_m8"]),
            helper.make_node("Mul", [f"{p}_d16", names["e16"]], [f"{p}_m16"]),
            helper.make_node("Add", [x, f"{p}_m8"], [f"{p}_a"]),
            helper.make_node("Add", [f"{p}_a", f"{p}_m16"], [p]),
        ]
        node.input[0] = p
    for node in graph.node:
        key = node.name or node.output[0]
        new_nodes.extend(switches.get(key, []))
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return proto


def _at_least_opset_13(model: ir.Model) -> ir.Model:
    """Convert older models to opset 13, which the switches (QuantizeLinear, Cast) need."""
    if model.opset_imports.get("", 1) >= 13:
        return model
    try:
        converted = onnx.version_converter.convert_version(to_proto(model), 13)
    except Exception as exc:  # noqa: BLE001 - the converter raises plain RuntimeErrors
        raise ModelLoadError(
            f"sensitivity analysis needs opset 13; converting this opset-"
            f"{model.opset_imports.get('', 1)} model failed: {str(exc).splitlines()[0][:200]}"
        ) from None
    return ir.serde.deserialize_model(converted)


# --- measuring ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    proto: bytes
    layers: list[Layer]
    base_feeds: dict[str, np.ndarray]
    batches: list[dict[str, np.ndarray]]
    reference: list[np.ndarray]
    labels: np.ndarray | None
    actions: list[str]
    threads: int


def _session(proto: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 4  # errors come back as exceptions
    # The reference and the instrumented graph run with the same (basic) optimisations so
    # that "no action" reproduces the reference bit for bit: fusions would reorder math.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])


def _run_all(session: ort.InferenceSession, job: _Job, overrides: Mapping[str, np.ndarray]
             ) -> list[np.ndarray]:
    feeds = {**job.base_feeds, **overrides}
    output = session.get_outputs()[0].name
    return [session.run([output], {**feeds, **batch})[0] for batch in job.batches]


def _action_feeds(layer: Layer, index: int, action: str, base: Mapping[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    names = _switch_names(index)
    weight = base[names["w"]]
    bias = base.get(names["b"]) if layer.bias else None
    feeds: dict[str, np.ndarray] = {}
    if action == "int8":
        feeds[names["w"]] = fake_quant_int8(weight, layer.out_axis)
        feeds[names["e8"]] = np.array(1.0, np.float32)
    elif action == "fp16":
        feeds[names["w"]] = weight.astype(np.float16).astype(weight.dtype)
        if bias is not None:
            feeds[names["b"]] = bias.astype(np.float16).astype(bias.dtype)
        feeds[names["e16"]] = np.array(1.0, np.float32)
    else:
        family, amount = parse_action(action)
        if family == "prune":
            pruned, pruned_bias = prune_channels(weight, bias, layer.out_axis, amount)
            feeds[names["w"]] = pruned
            if pruned_bias is not None:
                feeds[names["b"]] = pruned_bias
        else:
            feeds[names["w"]] = truncate_rank(weight, layer.out_axis, amount)
    return feeds


def metrics(reference: list[np.ndarray], actual: list[np.ndarray], labels: np.ndarray | None
            ) -> tuple[float | None, float, float | None, float | None, bool]:
    """SQNR, cosine, top-1 agreement and accuracy of ``actual`` against ``reference``."""
    ref = np.concatenate([r.reshape(r.shape[0], -1) for r in reference]).astype(np.float64)
    got = np.concatenate([a.reshape(a.shape[0], -1) for a in actual]).astype(np.float64)
    noise = float(((ref - got) ** 2).sum())
    signal = float((ref**2).sum())
    exact = noise == 0.0
    sqnr = None if exact else 10 * math.log10(max(signal, 1e-30) / noise)
    denom = float(np.linalg.norm(ref) * np.linalg.norm(got))
    if exact:
        cosine = 1.0
    else:
        cosine = float(np.clip((ref * got).sum() / denom, -1.0, 1.0)) if denom else 0.0
    top1 = accuracy = None
    if ref.shape[1] > 1:
        top1 = float((ref.argmax(axis=1) == got.argmax(axis=1)).mean())
        if labels is not None:
            accuracy = float((got.argmax(axis=1) == labels[: len(got)]).mean())
    return sqnr, cosine, top1, accuracy, exact


def _measure_with(session: ort.InferenceSession, job: _Job, indices: list[int]) -> list[ActionResult]:
    results = []
    for index in indices:
        layer = job.layers[index]
        for action in job.actions:
            actual = _run_all(session, job, _action_feeds(layer, index, action, job.base_feeds))
            sqnr, cosine, top1, accuracy, exact = metrics(job.reference, actual, job.labels)
            results.append(ActionResult(layer.name, action, sqnr, cosine, top1, accuracy, exact))
    return results


def _activation_ranges(model: ir.Model, layers: Sequence[Layer],
                       batches: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Min/max of each layer's input over the calibration batches."""
    proto = to_proto(model)
    wanted = sorted({layer.data_input for layer in layers})
    existing = {o.name for o in proto.graph.output}
    for name in wanted:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    session = _session(proto.SerializeToString(), 0)
    ranges: dict[str, tuple[float, float]] = {}
    for batch in batches:
        for name, value in zip(wanted, session.run(wanted, batch), strict=True):
            low, high = float(np.min(value)), float(np.max(value))
            old = ranges.get(name, (low, high))
            ranges[name] = (min(old[0], low), max(old[1], high))
    return ranges


def _uint8_params(low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0 or 1.0
    zero_point = int(round(-low / scale))
    return np.array(scale, np.float32), np.array(min(max(zero_point, 0), 255), np.uint8)


def measure_sensitivity(
    model: ir.Model,
    batches: list[dict[str, np.ndarray]],
    labels: np.ndarray | None = None,
    actions: Sequence[str] = ACTIONS,
    jobs: int = 1,
    random_calibration: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SensitivityReport:
    """Measure every (layer, action) pair on ``batches`` (feeds of the model's batch size).

    Args:
        model: The model, shapes static.
        batches: Calibration feeds, each a complete input dict.
        labels: Class labels for the samples, in order, for task accuracy.
        actions: Subset of :data:`ACTIONS`.
        jobs: Worker processes (layers are split between them).
        random_calibration: Recorded in the report (random data is unreliable).
        progress: Called with (layers done, layers total).
    """
    started = time.perf_counter()
    model = _at_least_opset_13(model)
    layers = find_layers(model)
    for action in actions:
        parse_action(action)
    ranges = _activation_ranges(model, layers, batches) if layers else {}
    proto = instrument(model, layers)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in to_proto(model).graph.initializer}
    base: dict[str, np.ndarray] = {}
    for index, layer in enumerate(layers):
        names = _switch_names(index)
        base[names["w"]] = weights[layer.weight]
        if layer.bias:
            base[names["b"]] = weights[layer.bias]
        base[names["e8"]] = np.array(0.0, np.float32)
        base[names["e16"]] = np.array(0.0, np.float32)
        base[names["scale"]], base[names["zp"]] = _uint8_params(*ranges[layer.data_input])
    # The reference is the instrumented graph with every switch off and the original
    # weights: then any difference is the action's alone (onnxruntime pre-packs constant
    # weights, so the untouched model can differ from it in the last bits).
    job = _Job(proto.SerializeToString(), layers, base, batches, [], labels, list(actions),
               threads=1 if jobs > 1 else 0)
    reference = _run_all(_session(job.proto, job.threads), job, {})
    job = _Job(job.proto, layers, base, batches, reference, labels, list(actions), job.threads)
    original = _session(to_proto(model).SerializeToString(), 0)
    first = original.get_outputs()[0].name
    untouched = [original.run([first], batch)[0] for batch in batches]
    drift = metrics(untouched, reference, None)[0]
    notes = []
    if drift is not None and drift < 80:
        notes.append(f"the instrumented graph differs from the model: SQNR {drift:.1f} dB")
    results = _run_layers(job, jobs, progress)
    baseline_accuracy = metrics(reference, reference, labels)[3] if labels is not None else None
    order = {layer.name: i for i, layer in enumerate(layers)}
    results.sort(key=lambda r: (order[r.layer], list(actions).index(r.action)))
    return SensitivityReport(
        layers=[layer.name for layer in layers], actions=list(actions), results=results,
        samples=sample_count(batches),
        random_calibration=random_calibration, baseline_accuracy=baseline_accuracy,
        seconds=time.perf_counter() - started, notes=notes,
    )


def _run_layers(job: _Job, jobs: int, progress: Callable[[int, int], None] | None
                ) -> list[ActionResult]:
    total = len(job.layers)
    results: list[ActionResult] = []
    if jobs <= 1 or total <= 1:
        session = _session(job.proto, job.threads)
        for index in range(total):
            results.extend(_measure_with(session, job, [index]))
            if progress:
                progress(index + 1, total)
        return results
    done = 0
    # The job (model, weights, samples) goes to each worker once, with its session; then
    # layers are handed out one by one, which keeps the progress bar moving.
    with ProcessPoolExecutor(max_workers=jobs, initializer=_start_worker, initargs=(job,)) as pool:
        futures = [pool.submit(_worker_measure, index) for index in range(total)]
        for future in as_completed(futures):
            results.extend(future.result())
            done += 1
            if progress:
                progress(done, total)
    return results


class _WorkerState:
    """The job and session a worker process keeps between layers (one per process)."""

    job: _Job | None = None
    session: ort.InferenceSession | None = None


def _start_worker(job: _Job) -> None:
    _WorkerState.job = job
    _WorkerState.session = _session(job.proto, job.threads)


def _worker_measure(index: int) -> list[ActionResult]:
    job, session = _WorkerState.job, _WorkerState.session
    assert job is not None and session is not None
    return _measure_with(session, job, [index])
