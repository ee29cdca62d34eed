"""``hwcomp validate``: layer-by-layer comparison that finds the first divergent tensor.

A build's verification compares the final outputs only; when they disagree (or a compressed
model loses accuracy) the question is *where*. Two comparisons, each over every intermediate
float tensor, in graph order, on the same inputs:

1. **compiled vs onnxruntime**: the bundle's graph (``model.optimized.onnx``) is compiled
   again for the bundle's target with every intermediate tensor kept as an output (a probe
   bundle in a temporary folder, built and run exactly as ``hwcomp build`` builds and runs
   one), and each tensor is compared with onnxruntime running the same graph. The probe
   keeps tensors a normal build fuses away, so it checks the same graph and schedules
   rules, not the very binary of the bundle (whose outputs its build verified).
2. **bundle graph vs original** (with ``--model``): onnxruntime on the original model and on
   the bundle's graph (compressed, quantized, legalised), tensors matched by name and
   shape; layers whose shape compression changed have no counterpart and are skipped.

Per tensor: max abs error, relative L2 error, cosine and SQNR; the first tensor beyond the
tolerance (``tolerance * max(1, max |reference|)`` on the max abs error, as verification)
is the divergence reported.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from hwcomp import model as model_io
from hwcomp.errors import HwcompError, ModelLoadError
from hwcomp.verify import run_onnxruntime

logger = logging.getLogger(__name__)

MAX_PROBED = 400  # tensors kept as outputs of one probe bundle


@dataclass(frozen=True)
class TensorError:
    """One intermediate tensor: where it comes from and how far it is from the reference."""

    tensor: str
    op: str
    shape: list[int]
    max_abs: float
    rel_l2: float
    cosine: float
    sqnr_db: float | None
    within: bool


@dataclass(frozen=True)
class Comparison:
    """A layer-by-layer comparison and its first divergence."""

    name: str
    reference: str
    tolerance: float
    tensors: list[TensorError]
    skipped: int = 0
    note: str = ""

    @property
    def first_divergent(self) -> TensorError | None:
        """Return the first tensor beyond the tolerance, in graph order."""
        return next((t for t in self.tensors if not t.within), None)


@dataclass(frozen=True)
class ValidationReport:
    """Both comparisons for one bundle and one set of inputs."""

    bundle: str
    target: str
    inputs: str
    comparisons: list[Comparison] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON report (schema ``hwcomp-validate/1``)."""
        return {"schema": "hwcomp-validate/1", "bundle": self.bundle, "target": self.target,
                "inputs": self.inputs,
                "comparisons": [{**asdict(c), "first_divergent": None if c.first_divergent is None
                                 else c.first_divergent.tensor} for c in self.comparisons]}


def tensor_error(name: str, op: str, reference: np.ndarray, actual: np.ndarray,
                 tolerance: float) -> TensorError:
    """Compare one tensor as verification does, with the finer figures beside."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    got = np.asarray(actual, dtype=np.float64).reshape(-1)
    if ref.shape != got.shape:
        return TensorError(name, op, list(np.shape(reference)), math.inf, math.inf, 0.0, None,
                           False)
    diff = got - ref
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    norm = float(np.linalg.norm(ref))
    noise = float(np.linalg.norm(diff))
    rel = noise / norm if norm else (0.0 if noise == 0 else math.inf)
    denom = norm * float(np.linalg.norm(got))
    cosine = float(np.dot(ref, got) / denom) if denom else (1.0 if noise == 0 else 0.0)
    sqnr = None if noise == 0 else 20 * math.log10(max(norm, 1e-30) / noise)
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    within = bool(np.isfinite(got).all() == np.isfinite(ref).all()) and max_abs <= tolerance * scale
    return TensorError(name, op, list(np.shape(reference)), max_abs, rel, cosine, sqnr, within)


def probe_outputs(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, str]], int]:
    """Return ``proto`` with its intermediate float tensors as outputs.

    Also the kept tensors as (name, op) and how many were left out (over :data:`MAX_PROBED`).
    """
    inferred = onnx.shape_inference.infer_shapes(proto)
    infos = {v.name: v for v in inferred.graph.value_info}
    existing = {o.name for o in proto.graph.output}
    chosen: list[tuple[str, str]] = []
    for node in proto.graph.node:
        for name in node.output:
            info = infos.get(name)
            if not name or name in existing or info is None:
                continue
            tensor = info.type.tensor_type
            if tensor.elem_type != onnx.TensorProto.FLOAT:
                continue
            if not all(d.HasField("dim_value") for d in tensor.shape.dim):
                continue
            chosen.append((name, node.op_type))
    left = max(0, len(chosen) - MAX_PROBED)
    chosen = chosen[:MAX_PROBED]
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.extend(infos[name] for name, _ in chosen)
    return probe, chosen, left


def compare_compiled(bundle: Path, target_name: str, inputs: Mapping[str, np.ndarray],
                     tolerance: float) -> Comparison:
    """Comparison 1: the bundle's graph compiled with every tensor kept, against onnxruntime."""
    from hwcomp import api  # the build path itself (api imports nothing of this module)
    from hwcomp.lower import lowering_for
    from hwcomp.targets import load_target

    proto = onnx.load(str(bundle / "model.optimized.onnx"))
    probe, chosen, left = probe_outputs(proto)
    target = load_target(target_name)
    lowering = lowering_for(target)
    reason = lowering.not_run_reason(target)
    if reason:
        return Comparison("compiled vs onnxruntime", "onnxruntime on model.optimized.onnx",
                          tolerance, [], note=f"not run: {reason}")
    with tempfile.TemporaryDirectory(prefix="hwcomp-validate-") as scratch:
        folder = Path(scratch)
        onnx.save(probe, folder / "probe.onnx")
        np.savez(folder / "inputs.npz", **dict(inputs))  # type: ignore[arg-type]
        # Verification of the probe is the comparison below; an infinite tolerance keeps
        # build from stopping at the first divergent tensor.
        try:
            built = api.build(folder / "probe.onnx", target.name, folder / "out",
                              calib=folder / "inputs.npz", tolerance=1e30, use_tuning_db=True)
        except HwcompError as exc:  # e.g. every tensor kept no longer fits the board
            return Comparison("compiled vs onnxruntime", "onnxruntime on model.optimized.onnx",
                              tolerance, [], note="not run: the probe bundle (every tensor "
                              f"kept as an output) could not be built: {exc}")
        feeds = [np.asarray(inputs[spec.name])
                 for spec in model_io.graph_inputs(ir.serde.deserialize_model(probe))]
        actual = lowering.execute(built.bundle, target, feeds).outputs
    reference = run_onnxruntime(probe, inputs)
    first = len(proto.graph.output)
    errors = [tensor_error(name, op, ref, got, tolerance) for (name, op), ref, got
              in zip(chosen, reference[first:], actual[first:], strict=True)]
    errors += [tensor_error(o.name, "output", ref, got, tolerance)
               for o, ref, got in zip(proto.graph.output, reference[:first], actual[:first],
                                      strict=True)]
    return Comparison("compiled vs onnxruntime", "onnxruntime on model.optimized.onnx",
                      tolerance, errors, skipped=left)


def compare_graphs(original: onnx.ModelProto, optimized: onnx.ModelProto,
                   inputs: Mapping[str, np.ndarray], tolerance: float) -> Comparison:
    """Comparison 2: the bundle's graph against the original, tensors matched by name and shape."""
    reference_probe, reference_names, _ = probe_outputs(original)
    actual_probe, _, _ = probe_outputs(optimized)
    seen_as = _dequantized_names(optimized)
    feeds = {i.name: inputs[i.name] for i in original.graph.input if i.name in inputs}
    reference = dict(zip([o.name for o in reference_probe.graph.output],
                         run_onnxruntime(reference_probe, feeds), strict=True))
    actual = dict(zip([o.name for o in actual_probe.graph.output],
                      run_onnxruntime(actual_probe, inputs), strict=True))
    errors, skipped = [], 0
    in_order = [*reference_names, *((o.name, "output") for o in original.graph.output)]
    for name, op in in_order:  # graph order, the model's outputs last
        got = actual.get(seen_as.get(name, name))
        if got is not None and np.shape(got) == np.shape(reference[name]):
            errors.append(tensor_error(name, op, reference[name], got, tolerance))
        else:
            skipped += 1
    return Comparison("bundle graph vs original", "onnxruntime on the original model",
                      tolerance, errors, skipped=skipped,
                      note=f"{skipped} tensor(s) of the original have no same-named, same-shaped "
                           "tensor in the bundle's graph (folded, fused or pruned)")


def _dequantized_names(proto: onnx.ModelProto) -> dict[str, str]:
    """Map a float tensor that is only quantized to the dequantized tensor layers read.

    In a QDQ graph the tensor keeping an original name (a conv's output, say) is the value
    before quantization; what the next layer sees, clamped and rounded, is the
    DequantizeLinear output. A ReLU the quantizer folded leaves only that clamp.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    aliases = {}
    for name, users in consumers.items():
        if len(users) == 1 and users[0].op_type == "QuantizeLinear":
            after = consumers.get(users[0].output[0], [])
            if len(after) == 1 and after[0].op_type == "DequantizeLinear":
                aliases[name] = after[0].output[0]
    return aliases


def validate(bundle: Path, inputs: Mapping[str, np.ndarray], input_label: str,
             tolerance: float | None = None, model: Path | None = None,
             graph_tolerance: float = 0.05) -> ValidationReport:
    """Run both comparisons for ``bundle`` on ``inputs``.

    Raises:
        ModelLoadError: The folder is no bundle (no manifest or graph).
    """
    manifest = read_bundle(bundle)
    target = manifest.get("target", {}).get("name", "")
    if tolerance is None:
        tolerance = float(manifest.get("verification", {}).get("tolerance") or 1e-4)
    report = ValidationReport(bundle=str(bundle), target=target, inputs=input_label)
    report.comparisons.append(compare_compiled(bundle, target, inputs, tolerance))
    if model is not None:
        original = model_io.to_proto(model_io.load_model(model, _shapes(inputs)))
        optimized = onnx.load(str(bundle / "model.optimized.onnx"))
        report.comparisons.append(compare_graphs(original, optimized, inputs, graph_tolerance))
    return report


def read_bundle(bundle: Path) -> dict[str, Any]:
    """Return the bundle's manifest.

    Raises:
        ModelLoadError: The folder is no bundle (no manifest or graph).
    """
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file() or not (bundle / "model.optimized.onnx").is_file():
        raise ModelLoadError(f"{bundle}: not an hwcomp bundle (no manifest.json and "
                             "model.optimized.onnx); pass the folder hwcomp build wrote")
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{manifest_path}: unreadable ({exc})") from None
    return manifest


def _shapes(inputs: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(np.shape(array)) for name, array in inputs.items()}


def bundle_inputs(bundle: Path, calib: Path | None, seed: int
                  ) -> tuple[dict[str, np.ndarray], str]:
    """Return the inputs to validate on: the first batch of ``calib``, else seeded ones."""
    read_bundle(bundle)
    specs = model_io.graph_inputs(model_io.load_model(bundle / "model.optimized.onnx"))
    if calib is None:
        return model_io.seeded_inputs(specs, seed), f"seeded (seed {seed})"
    data = model_io.load_calibration(Path(calib), specs)
    batch = model_io.calibration_batches(specs, data)[0]
    return {k: np.asarray(v) for k, v in batch.items()}, f"--calib {calib} (first batch)"
