"""Mixed precision: calibration, per-layer precision choice under an accuracy budget, QDQ output.

``--precision int8|fp16|auto`` turns the model into a standard QDQ model (what
``model.optimized.onnx`` holds, and what any onnxruntime user can run as is):

* **Calibration** uses onnxruntime's own calibrators (min-max, percentile, entropy) on the
  ``--calib`` samples. Inputs and output of a residual ``Add``/``Sub`` or a ``Concat`` get the
  union of their ranges, so the integer kernels see one scale per shared tensor.
* **Quantization** is onnxruntime's QDQ quantizer: int8 per-channel symmetric weights, int32
  biases, activations in the dtype the target's dot product multiplies (u8 for x86 VNNI,
  s8 for Arm ``sdot``).
* **fp16** layers read fp16 weights and cast their activation in and out.
* **Choice** (``auto``): each Conv/MatMul/Gemm gets the candidate precisions its target really
  runs faster (int8 only where hwcomp has a dot-product kernel for it, fp16 only with fp16
  arithmetic), starts at the fastest by the roofline estimate, and the whole model is measured
  in onnxruntime on held-out samples. While the budget fails, the layer whose own quantization
  costs most (measured alone) falls back one step (int8 -> fp16 -> fp32). A greedy rollback,
  not an integer program: per-layer losses do not add up (errors compound through the
  network), so an optimiser over additive costs would need the same whole-model checks anyway;
  with N layers the rollback costs at most 2N evaluations.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from hwcomp import model as model_io
from hwcomp.analysis.cost import graph_cost
from hwcomp.analysis.sensitivity import metrics
from hwcomp.compress.distill import DistillOptions, Progress, distill, load_data
from hwcomp.compress.qat import fake_quant_hooks
from hwcomp.errors import BudgetError, CalibrationDataError, HwcompError, UnsupportedOpError
from hwcomp.lower import activation_dtype, lowering_for
from hwcomp.targets import Target
from hwcomp.verify import first_outputs

logger = logging.getLogger(__name__)

PRECISION_CHOICES = ("fp32", "fp16", "int8", "auto")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_MIN_SQNR_DB = 25.0
QUANTIZED_OPS = frozenset({"Conv", "MatMul", "Gemm"})
_SHARED_RANGE_OPS = frozenset({"Add", "Sub", "Concat"})
_ORDER = ("int8", "fp16", "fp32")  # fastest first when the target runs them natively


class PrecisionError(HwcompError):
    """A precision request that cannot be honoured (options, budget)."""


class PrecisionBudgetError(PrecisionError, BudgetError):
    """The accuracy budget cannot be met at the requested precisions."""


class UnsupportedQuantizationError(PrecisionError, UnsupportedOpError):
    """A layer planned in int8 cannot be quantized (``layers`` names them)."""

    def __init__(self, message: str, layers: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.layers = list(layers)


@dataclass
class LayerChoice:
    """One quantizable layer: the candidates, the estimate per candidate, what was chosen."""

    name: str
    op: str
    candidates: dict[str, str]
    estimated_us: dict[str, float]
    precision: str = "fp32"
    reason: str = ""
    loss_alone: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "op": self.op, "precision": self.precision,
                "reason": self.reason, "candidates": self.candidates,
                "estimated_us": {k: round(v, 3) for k, v in self.estimated_us.items()},
                "loss_alone": self.loss_alone}


@dataclass
class PrecisionPlan:
    """The per-layer precisions, how they were found and what they cost in accuracy."""

    mode: str
    calibration: str
    activation_dtype: str
    metric: str
    budget: float
    loss: float
    layers: list[LayerChoice]
    samples: int
    decisions: list[str] = field(default_factory=list)
    fp32_accuracy: float | None = None
    accuracy: float | None = None
    sqnr_db: float | None = None
    qat: dict[str, Any] | None = None

    def counts(self) -> dict[str, int]:
        """Layers per precision."""
        return {p: sum(layer.precision == p for layer in self.layers) for p in _ORDER}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's ``precision`` section)."""
        return {"mode": self.mode, "calibration": self.calibration,
                "activation_dtype": self.activation_dtype, "metric": self.metric,
                "budget": self.budget, "loss": self.loss, "held_out_samples": self.samples,
                "fp32_accuracy": self.fp32_accuracy, "accuracy": self.accuracy,
                "sqnr_db": self.sqnr_db, "counts": self.counts(), "qat": self.qat,
                "decisions": self.decisions, "layers": [x.to_dict() for x in self.layers]}


@dataclass(frozen=True)
class QatRequest:
    """Quantization-aware fine-tuning (``--precision int8 --distill``): against whom, how.

    Attributes:
        teacher: The original model, whose outputs the int8 student learns to match.
        options: The distillation options (``options.data`` holds the samples).
        progress: Hears each epoch.
        on_calibration: ``options.data`` is the calibration file (its held-out quarter then
            chooses the epoch); else the data are loaded and split on their own.
    """

    teacher: onnx.ModelProto
    options: DistillOptions
    progress: Progress | None = None
    on_calibration: bool = True


@dataclass(frozen=True)
class PrecisionOptions:
    """What the user asked: ``--precision``, ``--calib-method``, budget, SQNR floor."""

    precision: str = "fp32"
    calibration: str = "minmax"
    accuracy_budget: float | None = None
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB
    labels: Path | None = None
    calib_random: int = 0  # plan on this many seeded random samples (explicit --calib-random)
    seed: int = 0
    # precision "planned": each layer's precision as --optimize's joint plan chose it.
    planned: tuple[tuple[str, str], ...] = ()

    @property
    def requested(self) -> bool:
        """Whether anything but fp32 was asked for."""
        return self.precision != "fp32"

    def validate(self) -> None:
        """Check the options before any work."""
        if self.precision == "planned" and self.planned:
            return
        if self.precision not in PRECISION_CHOICES:
            raise PrecisionError(
                f"--precision {self.precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
        if self.calibration not in CALIBRATION_METHODS:
            raise PrecisionError(f"--calib-method {self.calibration!r} is not one of "
                                 f"{', '.join(CALIBRATION_METHODS)}")


def layer_candidates(model: ir.Model, target: Target) -> list[LayerChoice]:
    """Every Conv/MatMul/Gemm with a constant weight, its candidates and roofline estimates."""
    costs = {c.name: c for c in graph_cost(model).nodes}
    instruction = lowering_for(target).int8_kernel(target)
    layers = []
    for node in model.graph:
        if node.op_type not in QUANTIZED_OPS or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if weight is None or weight.const_value is None:
            continue
        name = node.name or node.outputs[0].name or ""
        candidates = {"fp32": "always available"}
        grouped = node.op_type == "Conv" and int(node.attributes.get_int("group", 1)) != 1
        if instruction is None:
            why = ("no int8 dot product on this target: int8 would run as float after "
                   "dequantize, no faster")
        elif grouped and not instruction.grouped:
            why = "grouped/depthwise conv: no dot-product reduction for an int8 kernel"
        else:
            why = ""
            candidates["int8"] = f"{instruction.name} kernel"
        if target.fp16_arith:
            candidates["fp16"] = "native fp16 arithmetic"
        cost = costs.get(name)
        estimates = {p: _estimate_us(cost, target, p) for p in candidates}
        choice = LayerChoice(name, node.op_type, candidates, estimates)
        if why:
            choice.reason = why
        layers.append(choice)
    return layers


def _estimate_us(cost: Any, target: Target, precision: str) -> float:
    """Roofline time of one layer at ``precision`` (bytes shrink with the element size)."""
    if cost is None:
        return 0.0
    size = {"int8": 1, "fp16": 2, "fp32": 4}[precision]
    compute = cost.macs / target.peak_macs_per_s(precision)
    traffic = (cost.weight_bytes + cost.input_bytes + cost.output_bytes) * size / 4
    return 1e6 * max(compute, traffic / target.dram_bandwidth_bytes_s)


def calibrate(proto: onnx.ModelProto, batches: Sequence[Mapping[str, np.ndarray]],
              method: str) -> dict[str, tuple[float, float]]:
    """Activation ranges of every tensor by onnxruntime's calibrator ``method``."""
    from onnxruntime.quantization import calibrate as ort_calibrate

    methods = {"minmax": ort_calibrate.CalibrationMethod.MinMax,
               "percentile": ort_calibrate.CalibrationMethod.Percentile,
               "entropy": ort_calibrate.CalibrationMethod.Entropy}

    class Reader(ort_calibrate.CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds = iter(list(batches))

        def get_next(self) -> Mapping[str, np.ndarray] | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix="hwcomp-calib-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(proto, str(path))
        calibrator = ort_calibrate.create_calibrator(
            path, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=methods[method], extra_options={"symmetric": False},
        )
        calibrator.collect_data(Reader())
        data = calibrator.compute_data()
    return {name: (float(np.min(d.range_value[0])), float(np.max(d.range_value[1])))
            for name, d in data.data.items()}


def share_ranges(proto: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> list[str]:
    """Give the inputs and output of each Add/Sub/Concat the union of their ranges.

    Returns the names of the groups that were widened (for the report).
    """
    parent = {name: name for name in ranges}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    initializers = {t.name for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type not in _SHARED_RANGE_OPS:
            continue
        members = [t for t in [*node.input, *node.output] if t in ranges and t not in initializers]
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    groups: dict[str, list[str]] = {}
    for name in ranges:
        groups.setdefault(find(name), []).append(name)
    widened = []
    for members in groups.values():
        if len(members) < 2:
            continue
        low = min(ranges[m][0] for m in members)
        high = max(ranges[m][1] for m in members)
        for m in members:
            ranges[m] = (low, high)
        widened.append("+".join(sorted(members)))
    return widened


def quantize_model(proto: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]],
                   precisions: Mapping[str, str], act_dtype: str) -> onnx.ModelProto:
    """Return the QDQ model: int8 layers through onnxruntime's QDQ quantizer, fp16 by casts."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    int8 = [name for name, p in precisions.items() if p == "int8"]
    fp16 = [name for name, p in precisions.items() if p == "fp16"]
    result = onnx.ModelProto.FromString(proto.SerializeToString())
    if int8:
        # onnxruntime's quantizer selects layers by node name; a layer is known here by its
        # name or, unnamed, by its first output's (as in :func:`layer_candidates`).
        for node in result.graph.node:
            if not node.name:
                node.name = node.output[0]
        tensors = TensorsData(CalibrationMethod.MinMax, {
            name: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
            for name, (lo, hi) in ranges.items()})
        activation = QuantType.QUInt8 if act_dtype == "uint8" else QuantType.QInt8
        quantizer = QDQQuantizer(
            result, True, False, QuantType.QInt8, activation, tensors,
            int8 + _removable_activations(result.graph, set(int8), ranges), [],
            sorted(QUANTIZED_OPS | {"Relu", "Clip"}),
            {"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        result = quantizer.quantize_model()
        model_io.sort_nodes(result.graph)
        _check_quantized(result, int8)
    if fp16:
        _cast_layers_to_fp16(result, set(fp16))
    result.ir_version = min(result.ir_version, 10)
    return result


def _removable_activations(graph: onnx.GraphProto, int8: set[str],
                           ranges: Mapping[str, tuple[float, float]]) -> list[str]:
    """Return the Relu / Clip nodes right after an int8 layer that quantization makes exact.

    onnxruntime's quantizer (its default when Relu and Clip are quantized) removes such a
    node and quantizes the layer's output with the activation's range, whose saturation
    then clamps as the activation did: no table or float pass remains between the layers
    (the layer's own requantization clamps). Exact only while that range lies within the
    activation's bounds (as quantized, with 0 in it): not where :func:`share_ranges` widened
    it (ReLU6 feeding a residual Add) or a Clip's bounds exclude 0.
    """
    producers = {out: node.name for node in graph.node for out in node.output}
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    names = []
    for node in graph.node:
        if node.op_type not in ("Relu", "Clip") or producers.get(node.input[0]) not in int8:
            continue
        bounds = (0.0, math.inf) if node.op_type == "Relu" else _clip_bounds(node, constants)
        if bounds is None or node.output[0] not in ranges:
            continue
        low, high = ranges[node.output[0]]
        if bounds[0] <= min(low, 0.0) and max(high, 0.0) <= bounds[1]:
            names.append(node.name)
    return names


def _clip_bounds(clip: onnx.NodeProto,
                 constants: Mapping[str, np.ndarray]) -> tuple[float, float] | None:
    """Return a Clip's constant bounds (inputs, or attributes before opset 11), or None."""
    attributes = {a.name: a.f for a in clip.attribute}
    bounds = [attributes.get("min", -math.inf), attributes.get("max", math.inf)]
    for index, name in enumerate(clip.input[1:3]):
        if not name:
            continue
        value = constants.get(name)
        if value is None or value.size != 1:
            return None
        bounds[index] = float(value.reshape(()))
    return bounds[0], bounds[1]


def _check_quantized(proto: onnx.ModelProto, int8: list[str]) -> None:
    """Raise :class:`PrecisionError` unless every layer planned in int8 reads a quantized weight.

    A layer the quantizer skipped would otherwise run in fp32 under an int8 label.
    """
    dequantized = {out for node in proto.graph.node if node.op_type == "DequantizeLinear"
                   for out in node.output}
    quantized = {node.name for node in proto.graph.node
                 if node.op_type in QUANTIZED_OPS and len(node.input) > 1
                 and node.input[1] in dequantized}
    missing = sorted(set(int8) - quantized)
    if missing:
        raise UnsupportedQuantizationError(
            f"onnxruntime's quantizer left {len(missing)} layer(s) planned in int8 in float: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; nothing was "
            "written. --precision auto keeps such layers in fp32 (it checks each one)",
            missing)


def _cast_layers_to_fp16(proto: onnx.ModelProto, names: set[str]) -> None:
    """Make the named layers compute in fp16: fp16 weights, activations cast in and out."""
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in proto.graph.initializer}
    new_nodes = []
    for node in proto.graph.node:
        if (node.name or node.output[0]) not in names:
            new_nodes.append(node)
            continue
        for index, name in enumerate(node.input):
            if not name:
                continue
            if name in initializers:
                half = f"{name}__fp16"
                if half not in initializers:
                    array = numpy_helper.to_array(initializers[name]).astype(np.float16)
                    tensor = numpy_helper.from_array(array, half)
                    proto.graph.initializer.append(tensor)
                    initializers[half] = tensor
                node.input[index] = half
            else:
                cast = f"{name}__to_fp16_{node.name}"
                new_nodes.append(helper.make_node("Cast", [name], [cast], to=onnx.TensorProto.FLOAT16,
                                                  name=f"{cast}_cast"))
                node.input[index] = cast
        output = node.output[0]
        node.output[0] = f"{output}__fp16"
        new_nodes.append(node)
        new_nodes.append(helper.make_node("Cast", [node.output[0]], [output],
                                          to=onnx.TensorProto.FLOAT, name=f"{output}__to_fp32"))
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)


class _Evaluator:
    """Whole-model loss of a precision assignment on held-out samples, with onnxruntime."""

    def __init__(self, proto: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]],
                 act_dtype: str, check: Sequence[Mapping[str, np.ndarray]],
                 labels: np.ndarray | None, options: PrecisionOptions) -> None:
        self.proto, self.ranges, self.act_dtype = proto, ranges, act_dtype
        self.check, self.labels = check, labels
        self.reference = self._outputs(proto)
        self.fp32_accuracy = self.measure(self.reference)[1]
        self.use_labels = self.fp32_accuracy is not None
        if self.use_labels:
            self.metric = "top-1 accuracy drop on held-out samples"
            self.budget = options.accuracy_budget if options.accuracy_budget is not None else 0.01
        else:
            self.fp32_accuracy = None
            self.metric = f"output SQNR vs fp32 below {options.min_sqnr_db:g} dB"
            self.budget = 0.0
        self.min_sqnr = options.min_sqnr_db
        self.evaluations = 0

    def _outputs(self, proto: onnx.ModelProto) -> np.ndarray:
        outs = first_outputs(proto, self.check)
        return np.concatenate([o.reshape(o.shape[0], -1) for o in outs]).astype(np.float64)

    def measure(self, got: np.ndarray) -> tuple[float | None, float | None]:
        """(SQNR vs fp32 in dB, None when exact; top-1 accuracy with labels, else None)."""
        sqnr, _, _, accuracy, _ = metrics([self.reference], [got], self.labels)
        return sqnr, accuracy

    def shortfall(self, loss: float) -> str:
        """Say what ``loss`` means in the user's terms, and which flag sets the budget."""
        if self.use_labels:
            assert self.fp32_accuracy is not None
            return (f"top-1 accuracy {self.fp32_accuracy - loss:.2%} vs {self.fp32_accuracy:.2%} "
                    f"in fp32, a drop of {loss:.2%} > --accuracy-budget {self.budget:.2%}")
        return (f"output SQNR vs fp32 {self.min_sqnr - loss:.1f} dB, below the --min-sqnr floor "
                f"of {self.min_sqnr:g} dB")

    def cost_alone(self, loss: float) -> str:
        """Return one layer's loss when it alone is converted, in the budget's unit."""
        if self.use_labels:
            return f"-{loss:.2%} top-1 alone"
        return f"{loss:.1f} dB short alone"

    def loss(self, precisions: Mapping[str, str], proto: onnx.ModelProto | None = None
             ) -> tuple[float, np.ndarray]:
        """(loss, outputs): accuracy drop with labels, else SQNR shortfall in dB.

        ``proto``: other float weights of the same graph (quantization-aware fine-tuning's),
        quantized with the same ranges and judged against the same fp32 outputs.
        """
        self.evaluations += 1
        got = self._outputs(quantize_model(self.proto if proto is None else proto, self.ranges,
                                           precisions, self.act_dtype))
        sqnr, accuracy = self.measure(got)
        if self.use_labels:
            assert self.fp32_accuracy is not None and accuracy is not None
            return self.fp32_accuracy - accuracy, got
        return max(0.0, self.min_sqnr - (math.inf if sqnr is None else sqnr)), got


def plan_precision(
    model: ir.Model, target: Target, options: PrecisionOptions,
    batches: Sequence[Mapping[str, np.ndarray]], labels: np.ndarray | None,
    qat: QatRequest | None = None,
) -> tuple[onnx.ModelProto, PrecisionPlan]:
    """Choose each layer's precision and return the QDQ model with the plan.

    The first three quarters of ``batches`` calibrate, the rest measure (``labels`` are for
    all samples, in order). With ``qat``, the float weights are then fine-tuned with the int8
    layers fake-quantized (the same ranges), and kept where the held-out loss improves.

    Raises:
        PrecisionError: ``--precision int8``/``fp16`` asked of a target or layers that cannot
            run it, or a budget the forced precision misses (naming the layers that block it).
    """
    options.validate()
    proto = model_io.to_proto(model)
    fit, check = model_io.split_held_out(batches)
    check_labels = None
    if labels is not None:
        check_labels = labels[model_io.sample_count(fit):]
    act_dtype = activation_dtype(target)
    layers = layer_candidates(model, target)
    ranges = calibrate(proto, fit, options.calibration)
    widened = share_ranges(proto, ranges)
    evaluator = _Evaluator(proto, ranges, act_dtype, check, check_labels, options)
    decisions = [f"calibrated with onnxruntime's {options.calibration} calibrator on "
                 f"{model_io.sample_count(fit)} samples; measured on "
                 f"{model_io.sample_count(check)} held-out samples"]
    if widened:
        decisions.append(f"shared ranges (residual add / concat): {len(widened)} group(s)")

    if options.precision == "planned":
        chosen = dict(options.planned)
        for layer in layers:
            layer.precision = chosen.get(layer.name, "fp32")
            layer.reason = "--optimize: the joint plan's choice"
    elif options.precision in ("int8", "fp16"):
        _force(layers, options.precision, target)
    else:
        drop_unquantizable(layers, proto, ranges, act_dtype, decisions)
        for layer in layers:
            best = min(layer.candidates, key=lambda p: (layer.estimated_us[p], _ORDER.index(p)))
            layer.precision = best
            if best != "fp32":
                layer.reason = (f"fastest by roofline: {layer.estimated_us[best]:.2f} us vs "
                                f"{layer.estimated_us['fp32']:.2f} us fp32 "
                                f"({layer.candidates[best]})")
            elif not layer.reason:
                layer.reason = "no faster precision on this target"
    precisions = {layer.name: layer.precision for layer in layers}
    loss, got = evaluator.loss(precisions)
    decisions.append(f"all at chosen precision: loss {loss:.4g} ({evaluator.metric})")
    if loss > evaluator.budget and options.precision != "planned":
        # (A joint plan was judged against the original model, not this pruned one.)
        _measure_alone(layers, evaluator)
        if options.precision != "auto":
            blockers = sorted((x for x in layers if x.loss_alone), key=lambda x: -(x.loss_alone or 0))
            raise PrecisionBudgetError(
                f"--precision {options.precision} misses the budget: "
                f"{evaluator.shortfall(loss)}; layers that cost most alone: "
                + ", ".join(f"{x.name} ({evaluator.cost_alone(x.loss_alone or 0.0)})"
                            for x in blockers[:5])
                + "; use --precision auto to keep those in a wider precision, or relax the "
                "budget")
        loss, got = _roll_back(layers, evaluator, loss, decisions)
    qat_record = None
    final = {x.name: x.precision for x in layers}
    if qat is not None and "int8" in final.values():
        proto, qat_record, loss, got = _fine_tune(
            model, proto, qat, (ranges, act_dtype), final, (batches, len(fit)), labels,
            evaluator, (loss, got))
        decisions.append(qat_record["decision"])
    sqnr, accuracy = evaluator.measure(got)
    plan = PrecisionPlan(
        mode=options.precision, calibration=options.calibration, activation_dtype=act_dtype,
        metric=evaluator.metric, budget=evaluator.budget, loss=loss, layers=layers,
        samples=model_io.sample_count(check), decisions=decisions,
        fp32_accuracy=evaluator.fp32_accuracy, accuracy=accuracy, sqnr_db=sqnr, qat=qat_record,
    )
    decisions.append(f"{evaluator.evaluations} whole-model evaluations in onnxruntime")
    quantized = quantize_model(proto, ranges, {x.name: x.precision for x in layers}, act_dtype)
    return quantized, plan


def _fine_tune(model: ir.Model, proto: onnx.ModelProto, qat: QatRequest,
               quantization: tuple[Mapping[str, tuple[float, float]], str],
               precisions: Mapping[str, str],
               samples: tuple[Sequence[Mapping[str, np.ndarray]], int], labels: np.ndarray | None,
               evaluator: _Evaluator, without: tuple[float, np.ndarray],
               ) -> tuple[onnx.ModelProto, dict[str, Any], float, np.ndarray]:
    """Fine-tune ``proto`` quantization-aware; return the weights to quantize and the record.

    Trained on the calibration samples' first three quarters when ``--distill`` names the
    calibration file (the last quarter chooses the epoch and judges), else on its own data.
    The fine-tuned weights are kept only if the quantized model's held-out loss is no worse.
    """
    ranges, act_dtype = quantization
    batches, fitted = samples
    int8 = {name for name, p in precisions.items() if p == "int8"}
    hooks = fake_quant_hooks(model, ranges, int8, act_dtype)
    data: Sequence[Mapping[str, np.ndarray]] = batches
    held_out: list[int] | None = list(range(fitted, len(batches)))
    if not qat.on_calibration:
        data, labels = load_data(model, qat.options)
        held_out = None
    trained, report = distill(proto, qat.teacher, qat.options, data, labels, held_out=held_out,
                              fake_quant=hooks, progress=qat.progress)
    loss_before, got_before = without
    loss_after, got_after = evaluator.loss(precisions, trained)
    kept = loss_after <= loss_before
    sqnr_before, accuracy_before = evaluator.measure(got_before)
    sqnr_after, accuracy_after = evaluator.measure(got_after)
    record = {
        "kept": kept, "loss_without": loss_before, "loss_with": loss_after,
        "accuracy_without": accuracy_before, "accuracy_with": accuracy_after,
        "sqnr_without_db": sqnr_before, "sqnr_with_db": sqnr_after,
        "fake_quantized": len(hooks), "distillation": report.to_dict(),
        "decision": (f"quantization-aware fine-tuning ({report.epochs_run} epochs, best "
                     f"{report.best_epoch}): int8 loss {loss_before:.4g} -> {loss_after:.4g} "
                     f"on held-out samples; {'kept' if kept else 'not kept (no better)'}"),
    }
    if kept:
        return trained, record, loss_after, got_after
    return proto, record, loss_before, got_before


def drop_unquantizable(layers: list[LayerChoice], proto: onnx.ModelProto,
                        ranges: Mapping[str, tuple[float, float]], act_dtype: str,
                        decisions: list[str]) -> None:
    """``auto``: take int8 off the layers onnxruntime's quantizer would leave in float.

    Otherwise auto stopped with the same error as int8 and each sent the user to the other.
    """
    int8 = {x.name: "int8" for x in layers if "int8" in x.candidates}
    if not int8:
        return
    try:
        quantize_model(proto, ranges, int8, act_dtype)
    except UnsupportedQuantizationError as exc:
        for layer in layers:
            if layer.name in exc.layers:
                del layer.candidates["int8"]
                layer.estimated_us.pop("int8", None)
                layer.reason = "onnxruntime's quantizer leaves it in float: kept wider"
        decisions.append(f"int8 not possible for {len(exc.layers)} layer(s) "
                         f"({', '.join(exc.layers[:5])}): onnxruntime's quantizer skips them")


def _force(layers: list[LayerChoice], precision: str, target: Target) -> None:
    """``--precision int8|fp16``: every layer that can, at that precision; the rest say why."""
    if precision == "fp16" and not target.fp16_arith:
        raise PrecisionError(
            f"--precision fp16: target '{target.name}' has no fp16 arithmetic (it would "
            "convert to fp32 and gain nothing); use --precision auto or fp32")
    if precision == "int8" and lowering_for(target).int8_kernel(target) is None:
        # Measured (bench/RESULTS.md, issue 21): the example CNN forced to int8 on arm-a72
        # executed 11.7x the instructions of onnxruntime's int8 (and 11x hwcomp's fp32)
        # under qemu: dequantized convs leave hwcomp's fp32 kernels for TVM's generic ones.
        logger.warning("target '%s' has no int8 dot product: int8 layers will be "
                       "dequantized and run in float on TVM's generic schedule, several times "
                       "SLOWER than fp32 (the example CNN: 11x the instructions); use "
                       "--precision fp32 or auto for speed", target.name)
    for layer in layers:
        if precision in layer.candidates or precision == "int8":
            layer.precision = precision
            why = "" if precision in layer.candidates else (
                f" ({layer.reason or 'no integer kernel'}: runs dequantized)")
            layer.reason = f"--precision {precision}{why}"
        else:
            layer.reason = layer.reason or f"{precision} not available"


def _measure_alone(layers: list[LayerChoice], evaluator: _Evaluator) -> None:
    for layer in layers:
        if layer.precision == "fp32":
            continue
        loss, _ = evaluator.loss({layer.name: layer.precision})
        layer.loss_alone = loss


def _roll_back(layers: list[LayerChoice], evaluator: _Evaluator, loss: float,
               decisions: list[str]) -> tuple[float, np.ndarray]:
    """Demote the costliest layers one step at a time until the budget holds."""
    got = evaluator.reference
    queue = sorted((x for x in layers if x.precision != "fp32"),
                   key=lambda x: -(x.loss_alone or 0.0))
    while loss > evaluator.budget and queue:
        layer = queue.pop(0)
        wider = [p for p in _ORDER[_ORDER.index(layer.precision) + 1:] if p in layer.candidates]
        previous = layer.precision
        layer.precision = wider[0]
        layer.reason = (f"rolled back from {previous}: costs {layer.loss_alone:.4g} alone "
                        f"({evaluator.metric})")
        if layer.precision != "fp32":
            queue.append(layer)
        loss, got = evaluator.loss({x.name: x.precision for x in layers})
        decisions.append(f"{layer.name}: {previous} -> {layer.precision}, loss now {loss:.4g}")
    if loss > evaluator.budget:  # every layer fp32 is exact; only reachable through bugs
        raise PrecisionBudgetError(f"budget not met even in fp32 (loss {loss:.4g})")
    return loss, got


def calibration_for(model: ir.Model, calib: Path | None, options: PrecisionOptions
                    ) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Load ``--calib`` (required for int8/auto) and ``--labels`` as batches and labels.

    ``--calib-random N`` instead plans on N seeded random samples, said in the output.

    Raises:
        CalibrationDataError: No calibration data for a precision that needs ranges.
    """
    specs = model_io.graph_inputs(model)
    labels_path, precision = options.labels, options.precision
    model_io.check_calibration_source(calib, options.calib_random)
    if calib is None and options.calib_random and precision in ("int8", "auto"):
        model_io.warn_random_planning(f"--precision {precision}", options.calib_random)
        if labels_path is not None:
            raise CalibrationDataError(
                f"{labels_path}: labels belong to --calib samples, not to --calib-random ones")
        return model_io.random_calibration(specs, options.calib_random, options.seed), None
    if calib is None:
        if precision in ("int8", "auto"):
            shapes = ", ".join(f"'{s.name}' as (N, {', '.join(map(str, s.shape[1:]))})"
                               for s in specs)
            raise CalibrationDataError(
                f"--precision {precision} needs calibration data for activation ranges: pass "
                f"--calib FILE.npz with representative samples of {shapes} (random inputs "
                "give ranges unlike real data, so hwcomp does not guess; --calib-random N "
                "plans on random samples anyway)")
        return model_io.random_calibration(specs, 8), None
    batches = model_io.calibration_batches(specs, model_io.load_calibration(Path(calib), specs))
    labels = None
    if labels_path is not None:
        labels = model_io.load_labels(Path(labels_path), model_io.sample_count(batches),
                                      model_io.class_count(model))
    return batches, labels
