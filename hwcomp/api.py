"""The Python API: what the CLI's commands call.

``build`` is the headline: load, legalise, compile with TVM, package, verify against
onnxruntime, and move the finished bundle into place. Each stage is a plain function of
the modules it names; this file only sequences them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

import hwcomp
from hwcomp import bench, remote, report
from hwcomp import model as model_io
from hwcomp import profile as latency
from hwcomp.analysis import cost, roofline, sensitivity
from hwcomp.compress import distill, driver
from hwcomp.compress import precision as quantize
from hwcomp.compress.planner import Measure
from hwcomp.errors import (
    CalibrationDataError,
    OptionError,
    OutputExistsError,
    VerificationError,
)
from hwcomp.lower import lowering_for
from hwcomp.lower.cpu.database import count_records
from hwcomp.lower.frontend.legalize import legalize_for_tvm
from hwcomp.lower.kernel_spec import KernelRewrite
from hwcomp.lower.library.runner import check_cross_prefix, require_tool
from hwcomp.lower.types import BundleInfo, Compiled, RunnerResult, layer_count_record, model_id
from hwcomp.package import check_output, file_hashes, staged_output, write_json
from hwcomp.passes import FoldBatchNormPass, quantized_io
from hwcomp.targets import CROSS_PREFIX_ENV, Target, load_target
from hwcomp.templates import render, render_to
from hwcomp.tune import search as tuning
from hwcomp.verify import NOT_RUN, PASSED, Verification, compare_outputs, run_onnxruntime

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4
# int8 builds: TVM's and onnxruntime's requantisation may round a value at a .5 boundary to
# different neighbours; one step of an 8-bit activation is 1/255 of its range.
QUANTIZED_TOLERANCE = 2e-2
_VERSIONED_PACKAGES = (
    "apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "onnx-ir", "numpy",
)


def analyze(
    model_path: Path,
    target_name: str,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    calib: Path | None = None,
    calib_random: int = 0,
    labels: Path | None = None,
    actions: tuple[str, ...] = sensitivity.ACTIONS,
    jobs: int = 1,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    bundle: Path | None = None,
    outputs: Sequence[str] | None = None,
    layers: str = "compiled",
) -> report.Analysis:
    """Cost, roofline estimate and (with calibration data) sensitivity of every layer.

    ``layers="compiled"``: the layers as the build compiles them, BatchNormalization folded
    into its conv / matmul and the elementwise ops after one fused into its kernel;
    ``"onnx"``: every node of the file as it is.

    Sensitivity runs when ``calib`` or ``calib_random`` is given; ``labels`` adds task
    accuracy. ``bundle``: a bundle of this model for this target whose build counted each
    kernel call's instructions (``layer_counts``); its counts join the report. Nothing is
    written; the CLI renders the result.
    """
    for action in actions:
        try:
            sensitivity.parse_action(action)
        except ValueError as exc:
            raise OptionError(f"--actions: {exc}") from None
    target = load_target(target_name)
    model_path = Path(model_path)
    model = model_io.load_model(model_path, input_shapes)
    cut = model_io.cut_at_outputs(model, outputs, model_path) if outputs else None
    unknown = model_io.unknown_shapes(model)
    if unknown:
        # Counting MACs on unknown shapes gave 0 for every layer behind them.
        logger.warning("%s: shape inference cannot reach %d tensor(s) (first: %s); their "
                       "shapes are learned from one onnxruntime run on a seeded sample",
                       model_path, len(unknown), unknown[0].name)
        model_io.learn_shapes(model, unknown, seed)
    folded = 0
    if layers == "compiled":  # as the build compiles it: BatchNorm folded, epilogues fused
        before = sum(node.op_type == "BatchNormalization" for node in model.graph)
        FoldBatchNormPass()(model)
        folded = before - sum(node.op_type == "BatchNormalization" for node in model.graph)
    elif layers != "onnx":
        raise OptionError(f"--layers {layers!r} is not one of compiled, onnx")
    graph_cost = cost.graph_cost(model)
    fused = (latency.fused_into(model, {n.name for n in graph_cost.nodes if n.macs},
                                lowering_for(target).epilogue_ops)
             if layers == "compiled" else {})
    estimate = latency.estimate_model(model, target, graph_cost, also_fused=fused)
    measured = None
    if calib is not None or calib_random:
        specs = model_io.graph_inputs(model)
        if calib is not None:
            batches = model_io.calibration_batches(specs, model_io.load_calibration(Path(calib), specs))
        else:
            logger.warning("random calibration data makes sensitivity unreliable: pass --calib "
                           "with real samples for decisions")
            batches = model_io.random_calibration(specs, calib_random, seed)
        samples = model_io.sample_count(batches)
        label_array = (model_io.load_labels(Path(labels), samples, model_io.class_count(model))
                       if labels is not None else None)
        measured = sensitivity.measure_sensitivity(
            model, batches, label_array, actions, jobs, random_calibration=calib is None,
            progress=progress,
        )
    elif labels is not None:
        raise CalibrationDataError(f"{labels}: labels need calibration data (--calib)")
    counted = _bundle_counts(Path(bundle), target, graph_cost) if bundle is not None else None
    return report.Analysis(
        model_file=model_path.name, model_sha256=model_io.file_sha256(model_path),
        target=target, cost=graph_cost, roofline=estimate, sensitivity=measured,
        counted=counted, cut=None if cut is None else cut.to_dict(), layers_view=layers,
        fused_into=fused, folded_batchnorms=folded,
    )


def _bundle_counts(bundle: Path, target: Target, graph_cost: cost.GraphCost) -> report.Counted:
    """Read a bundle's per-kernel instruction counts and match them to the model's layers.

    Kernel calls that compute a conv / matmul layer carry its MACs and output size; where
    every layer with MACs pairs with one such call (``hwcomp.profile.match_calls``: the
    executor's order may put a shortcut before the layer beside it), each layer gets its
    call's count. Otherwise (compression or a kernel covering several layers changed them)
    the counts are reported per kernel call only.
    """
    path = bundle / "manifest.json"
    if not path.is_file():
        raise OptionError(f"--bundle {bundle}: not an hwcomp bundle (no manifest.json)")
    manifest = json.loads(path.read_text())
    built_for = manifest.get("target", {}).get("name")
    if built_for != target.name:
        raise OptionError(f"--bundle {bundle} was built for '{built_for}', not '{target.name}': "
                          f"analyze with --target {built_for}, or pass a {target.name} bundle")
    counts = manifest.get("layer_counts")
    if not counts:
        raise OptionError(
            f"--bundle {bundle} has no per-layer counts (manifest.json layer_counts): only "
            "bundles verified on an emulated board that counts them have them (Cortex-M with "
            "this hwcomp); rebuild it, or analyze without --bundle")
    layers = [node for node in graph_cost.nodes if node.macs]
    calls = [(step["macs"], latency.output_elements(", ".join(step.get("args", []))),
              step["instructions"]) for step in counts["steps"] if step["macs"]]
    matched = latency.match_calls(layers, calls)
    if len(matched) < len(layers) or len(calls) != len(layers):  # one to one, or not at all
        matched = {}
        logger.warning("--bundle %s: its %d layer kernel(s) do not match the model's %d layer(s) "
                       "with MACs one to one; counts are shown per kernel call", bundle,
                       len(calls), len(layers))
    arena = manifest.get("mcu", {}).get("arena", {})
    record = {**counts, "arena_bytes": arena.get("arena_bytes"),
              "arena_live_bytes_by_step": arena.get("live_bytes_by_step")}
    return report.Counted(bundle=str(bundle), record=record, layer_instructions=matched)


def compress(
    model_path: Path,
    output: Path,
    target_name: str,
    options: driver.CompressionOptions,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    force: bool = False,
    progress: distill.Progress | None = None,
    outputs: Sequence[str] | None = None,
) -> driver.CompressionOutcome:
    """Compress ``model_path`` into ``output`` (ONNX), compared with the original.

    Kept channel counts round to the target's fp32 channel alignment; the comparison runs
    onnxruntime on both models with held-out ``options.calib`` samples (or seeded ones).
    ``options.distill`` fine-tunes the result against the original (``progress`` hears each
    epoch); an interrupted distillation writes nothing.
    """
    target = load_target(target_name)
    options.validate()
    options.require_student()
    output = Path(output)
    if output.exists() and not force:
        raise OutputExistsError(f"{output} exists; pass --force to replace it")
    model = model_io.load_model(Path(model_path), input_shapes)
    if outputs:
        model_io.cut_at_outputs(model, outputs, model_path)
    outcome = driver.compress_with_data(model, target, options, progress)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    try:
        ir.save(outcome.result.model, partial)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return outcome


@dataclass(frozen=True)
class BuildResult:
    """What ``build`` produced."""

    bundle: Path
    target: Target
    verification: Verification
    manifest: dict[str, Any]
    seconds: float


def bundle_path(model_path: Path, target: Target, output_dir: Path) -> Path:
    """Return ``<output_dir>/<model stem>-<target>``."""
    return output_dir / f"{model_path.stem}-{target.name}"


def build(
    model_path: Path,
    target_name: str,
    output_dir: Path = Path("out"),
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    const_inputs: Mapping[str, np.ndarray] | None = None,
    calib: Path | None = None,
    tolerance: float | None = None,
    force: bool = False,
    seed: int = 0,
    compression_options: driver.CompressionOptions | None = None,
    precision_options: quantize.PrecisionOptions | None = None,
    tuning_db: Path | None = None,
    use_tuning_db: bool = True,
    progress: distill.Progress | None = None,
    outputs: Sequence[str] | None = None,
    verify: str = "auto",
    device: str | None = None,
    io: str = "float",
) -> BuildResult:
    """Compile ``model_path`` for ``target_name`` into a verified bundle.

    With ``compression_options`` asking for pruning or low-rank splitting, the model is
    compressed first (measured against the original on held-out samples, recorded in the
    manifest) and the compressed model is what gets compiled and verified. ``verify`` says
    where the bundle runs for that (:data:`VERIFY_WAYS`; ``device`` with ``"device"``).
    ``io="quantized"`` makes an int8 model's inputs and outputs its 8-bit tensors
    (:mod:`hwcomp.passes.quantized_io`).

    Raises:
        HwcompError: Any user-caused failure; nothing is left at the output path.

    """
    started = time.perf_counter()
    target = load_target(target_name)
    lowering = lowering_for(target)
    check_cross_prefix(target)
    if os.environ.get(CROSS_PREFIX_ENV) and not target.is_cross:
        logger.warning("%s / --cross-prefix is not used: '%s' is compiled by this machine's "
                       "compiler", CROSS_PREFIX_ENV, target.name)
    for program, package in lowering.required_tools(target):
        require_tool(program, package, f"for target '{target.name}'")
    model_path = Path(model_path)
    address = _check_verify(verify, device, lowering, target)
    if io not in IO_KINDS:
        raise OptionError(f"--io {io!r} is not one of {', '.join(IO_KINDS)}")
    destination = bundle_path(model_path, target, Path(output_dir))
    check_output(destination, force)
    options = compression_options or driver.CompressionOptions()
    options.validate()
    precision = precision_options or quantize.PrecisionOptions()
    precision.validate()
    if options.optimize is not None and precision.requested:
        raise OptionError(f"--optimize chooses each layer's precision itself: drop --precision "
                          f"{precision.precision} (or drop --optimize)")
    if options.distill is not None and (precision.precision in ("int8", "auto")
                                        or options.optimize is not None):
        calib = calib or options.distill.data  # the distillation samples calibrate too
    else:
        options.require_student()

    measure = None
    if options.optimize is not None and options.measure_top > 0:
        measure = _plan_measurer(model_path, target, input_shapes, calib, options, precision,
                                 outputs)
    model, compressed, plan, cut = _transformed_model(model_path, target, input_shapes, options,
                                                      precision, calib, progress, outputs,
                                                      measure)
    if io == "quantized":
        proto = model_io.to_proto(model)
        quantized_io.quantize_io(proto)
        model = ir.serde.deserialize_model(proto)
    if tolerance is None:
        tolerance = QUANTIZED_TOLERANCE if plan is not None else DEFAULT_TOLERANCE
    original = model_io.to_proto(model)
    input_specs = model_io.graph_inputs(model)
    inputs = _verification_inputs(input_specs, calib, seed)
    legal, steps = legalize_for_tvm(model, const_inputs)
    legal_proto = model_io.to_proto(legal)
    prepared = lowering.prepare(legal_proto, target)
    logger.info("compiling for %s (%s)", target.name, target.family)
    database = None
    if use_tuning_db:
        database = Path(tuning_db) if tuning_db else tuning.default_database(target)
    compiled = lowering.compile(prepared.module, target, database, name=model_path.stem)
    for kernel in compiled.unscheduled_kernels:
        logger.warning("kernel left on TVM's generic schedule (slow): %s", kernel)

    with staged_output(destination, force) as staging:
        ir.save(legal, staging / "model.optimized.onnx")
        feeds = {s.name: inputs[s.name] for s in model_io.graph_inputs(legal)}
        reference = run_onnxruntime(original, inputs)
        _write_verify_data(staging, feeds, reference)
        info = BundleInfo(
            model_file=model_path.name, model_name=model_path.stem,
            inputs=model_io.graph_inputs(legal), outputs=model_io.graph_outputs(model),
            example_inputs=list(feeds.values()), example_outputs=reference, tolerance=tolerance,
            model_sha256=model_io.file_sha256(model_path),
            macs=cost.graph_cost(legal).total_macs,
            kernel_macs=prepared.kernels.macs if prepared.kernels else {})
        extras = lowering.package(compiled.executable, target, staging, info)
        source = f"--calib {calib}" if calib else f"seeded (seed {seed})"
        kernel_macs = dict(info.kernel_macs)
        kernel_args = extras.pop("kernel_args", {})
        verification, run = _verify(staging, lowering, target, model, feeds, reference,
                                    tolerance, source, verify, address)
        manifest = _manifest(model_path, target, model, legal, steps, verification, staging)
        manifest.update(extras)
        if run is not None and run.step_counts:
            manifest["layer_counts"] = layer_count_record(run, kernel_macs, kernel_args)
        manifest["cut"] = cut.to_dict() if cut else None
        manifest["compression"] = compressed.summary() if compressed else None
        manifest["precision"] = plan.to_dict() if plan else None
        manifest["planned_on"] = _planning_samples(calib, options, precision)
        manifest.update(_kernel_records(prepared.kernels, compiled, database))
        write_json(staging / "manifest.json", manifest)
        if options.optimize is not None and compressed is not None and compressed.plan:
            compressed.plan.measured = _plan_measurement(staging, target, manifest, lowering)
            manifest["plan"] = compressed.plan.to_dict()
            manifest["compression"]["plan"] = None  # the joint plan is the manifest's "plan"
            write_json(staging / "manifest.json", manifest)
            report.render_plan_report(staging / "plan.html", manifest["plan"], model_path.name,
                                      target.name)
        _write_readme(staging, model_path, target, manifest, verification)
        if verification.status not in (PASSED, NOT_RUN):
            raise VerificationError(
                f"{model_path}: compiled outputs differ from onnxruntime for target "
                f"'{target.name}': {verification.reason} (max scaled error "
                f"{max(c.max_rel_error for c in verification.outputs):.3g}, tolerance "
                f"{tolerance:g}); nothing was written"
            )
    return BuildResult(
        bundle=destination, target=target, verification=verification, manifest=manifest,
        seconds=time.perf_counter() - started,
    )


def _transformed_model(
    model_path: Path, target: Target, input_shapes: Mapping[str, tuple[int, ...]] | None,
    options: driver.CompressionOptions, precision: quantize.PrecisionOptions, calib: Path | None,
    progress: distill.Progress | None = None, outputs: Sequence[str] | None = None,
    measure: Measure | None = None,
) -> tuple[ir.Model, driver.CompressionOutcome | None, quantize.PrecisionPlan | None,
           model_io.CutReport | None]:
    """Load the model (cut at ``outputs``), compress and quantize it as asked; say what each did.

    With ``options.distill`` the compressed model is distilled against the original, and
    int8 layers are fine-tuned quantization-aware against it too.
    """
    model = model_io.load_model(model_path, input_shapes)
    cut = model_io.cut_at_outputs(model, outputs, model_path) if outputs else None
    original = model
    compressed = None
    if options.requested:
        compressed = driver.compress_with_data(model, target, options, progress,
                                               plan_precision=True, measure=measure)
        model = compressed.result.model
        joint = compressed.plan if options.optimize is not None else None
        if joint is not None and joint.precisions:
            precision = dataclasses.replace(precision, precision="planned",
                                            planned=tuple(sorted(joint.precisions.items())))
    plan = None
    if precision.requested:
        qat = None
        if options.distill is not None:
            same = calib is not None and Path(calib).resolve() == Path(options.distill.data).resolve()
            qat = quantize.QatRequest(model_io.to_proto(original),
                                      dataclasses.replace(options.distill, labels=options.labels),
                                      progress, on_calibration=same)
        model, plan = _quantize(model, target, precision, calib, qat)
    return model, compressed, plan, cut


def _plan_measurer(model_path: Path, target: Target,
                   input_shapes: Mapping[str, tuple[int, ...]] | None, calib: Path | None,
                   options: driver.CompressionOptions, precision: quantize.PrecisionOptions,
                   outputs: Sequence[str] | None) -> Measure:
    """Return what builds one candidate plan's bundle in scratch and times it (or None).

    Each bundle is built as the final one would be (pruned with reconstruction on the same
    samples, quantized at the planned precisions, verified) and timed by
    :func:`_plan_measurement`: measured here, or counted on the emulated board.
    """
    lowering = lowering_for(target)
    timed = lowering.kernel_timing == latency.COUNTED or (
        lowering.kernel_timing == latency.MEASURED and not lowering.not_run_reason(target))
    if not timed:
        return lambda ratios, precisions, ranks: None  # neither runs here nor is counted

    def measure(ratios: Mapping[str, float], precisions: Mapping[str, str],
                ranks: Mapping[str, float]) -> float | None:
        with tempfile.TemporaryDirectory(prefix="hwcomp-plan-") as scratch:
            ratio_file = None
            if ratios:
                ratio_file = Path(scratch) / "ratios.json"
                ratio_file.write_text(json.dumps(dict(ratios)))
            fixed = dataclasses.replace(options, optimize=None, latency_budget=None,
                                        prune=None if ratio_file is None else str(ratio_file),
                                        lowrank=dict(ranks) or None, distill=None)
            planned = dataclasses.replace(precision, precision="planned",
                                          planned=tuple(sorted(precisions.items()))) \
                if precisions else precision
            with _quiet():
                result = build(model_path, target.name, Path(scratch) / "out",
                               input_shapes=input_shapes, calib=calib, compression_options=fixed,
                               precision_options=planned, outputs=outputs)
            return _plan_measurement(result.bundle, target, result.manifest,
                                     lowering).get("seconds")

    return measure


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence hwcomp's warnings while candidate bundles build (the final build says them)."""
    root = logging.getLogger("hwcomp")
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _plan_measurement(bundle: Path, target: Target, manifest: dict[str, Any],
                      lowering: Any) -> dict[str, Any]:
    """Time the planned bundle where this machine can, to set beside the plan's prediction.

    Cortex-M: the build's emulated instruction count at the profile's cycles per
    instruction and clock (counted, not measured). A target this machine runs natively: the
    bundle's runner, median of 20 runs after 3 warm-up runs. Else: not measured here.
    """
    counts = manifest.get("layer_counts")
    if counts:
        instructions = int(counts["kernel_instructions"])
        return {"seconds": instructions * target.cycles_per_instruction / target.clock_hz,
                "source": "counted", "instructions": instructions,
                "how": (f"instructions executed on the emulated board x "
                        f"{target.cycles_per_instruction:g} cycle(s) per instruction at "
                        f"{target.clock_hz / 1e6:g} MHz: COUNTED, NOT MEASURED")}
    reason = lowering.not_run_reason(target)
    if target.emulator or reason or not (bundle / "bin" / "hwcomp_runner").is_file():
        return {"seconds": None, "source": "not measured",
                "how": reason or "runs under emulation here: time it on the board with "
                                 "hwcomp bench --device rpc://HOST:PORT"}
    samples = bench.runner_samples(bundle, warmup=3, repeat=20, number=1, threads=target.cores)
    return {"seconds": float(np.median(samples)) / 1e3, "source": "measured",
            "how": "the bundle's runner on this machine: median of 20 runs after 3 warm-up"}


def _planning_samples(calib: Path | None, options: driver.CompressionOptions,
                      precision: quantize.PrecisionOptions) -> str | None:
    """Say, for the manifest, what samples a plan was judged on (None: nothing planned)."""
    if not (options.requested or precision.requested):
        return None
    return model_io.calibration_label(calib, max(options.calib_random, precision.calib_random),
                                      options.seed)


def _kernel_records(kernels: KernelRewrite | None, compiled: Compiled,
                    database: Path | None) -> dict[str, Any]:
    """Return the manifest's record of hwcomp's kernels and of the tuning database applied."""
    quantized = kernels is not None and bool(kernels.rewritten or kernels.kept_float)
    return {
        "integer_kernels": None if not quantized or kernels is None else {
            "instruction": kernels.instruction, "ops": kernels.rewritten,
            "kept_float": kernels.kept_float},
        "float_kernels": [] if kernels is None else kernels.float_ops,
        # A conv / matmul layer kernel's multiply-adds by its name (hwcomp profile's MACs).
        "kernel_macs": {} if kernels is None else kernels.macs,
        "unscheduled_kernels": compiled.unscheduled_kernels,
        "tuning": None if compiled.tuned_functions is None else {
            "database": str(database), "records": count_records(database) if database else 0,
            "functions_tuned": compiled.tuned_functions},
    }


def _quantize(model: ir.Model, target: Target, options: quantize.PrecisionOptions,
              calib: Path | None, qat: quantize.QatRequest | None = None
              ) -> tuple[ir.Model, quantize.PrecisionPlan]:
    """Fold batch norms, choose precisions, and return the QDQ model and its plan."""
    FoldBatchNormPass()(model)
    batches, labels = quantize.calibration_for(model, calib, options)
    logger.info("choosing precisions (%s) on %d calibration batches", options.precision,
                len(batches))
    proto, plan = quantize.plan_precision(model, target, options, batches, labels, qat)
    return model_io.infer_shapes(ir.serde.deserialize_model(proto)), plan


def _verification_inputs(
    specs: list[model_io.TensorSpec], calib: Path | None, seed: int
) -> dict[str, np.ndarray]:
    if calib is None:
        return model_io.seeded_inputs(specs, seed)
    data = model_io.load_calibration(Path(calib), specs)
    # Verification uses the first sample(s): as many rows as the model's batch axis holds.
    return {s.name: np.require(data[s.name][: s.shape[0]], requirements="C") for s in specs}


def _write_verify_data(
    staging: Path, feeds: Mapping[str, np.ndarray], reference: list[np.ndarray]
) -> None:
    folder = staging / "verify"
    folder.mkdir()
    for index, (name, array) in enumerate(feeds.items()):
        np.save(folder / f"input_{index:02d}_{_safe(name)}.npy", array)
    for index, array in enumerate(reference):
        np.save(folder / f"expected_output_{index:02d}.npy", array)


VERIFY_WAYS = ("auto", "host", "emulator", "device", "skip")
IO_KINDS = ("float", "quantized")


def _check_verify(way: str, device: str | None, lowering: Any,
                  target: Target) -> remote.DeviceAddress | None:
    """Refuse a ``--verify`` way this target's bundle cannot take here, before any work.

    Returns the device's address for ``device``.

    Raises:
        OptionError: An unknown way, a way that cannot run here (saying why), ``--device``
            without ``--verify device`` or the reverse.
    """
    if way not in VERIFY_WAYS:
        raise OptionError(f"--verify {way!r} is not one of {', '.join(VERIFY_WAYS)}")
    if (device is not None) != (way == "device"):
        raise OptionError("--verify device runs the bundle on --device rpc://HOST:PORT (or "
                          "tracker://HOST:PORT/KEY): give both, or neither")
    if way == "device":
        if not lowering.rpc_device:
            raise OptionError(f"--verify device: {target.name} bundles are C sources for a "
                              "firmware, not a library a device server loads: flash the "
                              "bundle's example on the board, or --verify host / emulator")
        return remote.parse_device(str(device))
    if way in ("host", "emulator"):
        reason = lowering.verify_ways(target)[way]
        if reason:
            raise OptionError(f"--verify {way} is not possible here for {target.name}: {reason}")
    return None


def _verify(
    staging: Path,
    lowering: Any,
    target: Target,
    model: ir.Model,
    feeds: Mapping[str, np.ndarray],
    reference: list[np.ndarray],
    tolerance: float,
    source: str,
    way: str = "auto",
    address: remote.DeviceAddress | None = None,
) -> tuple[Verification, RunnerResult | None]:
    """Run the bundle as ``way`` says and compare; also return the run (None: not run).

    ``auto`` runs it the family's preferred way among those this machine has (the same
    rule for every family); with none, verification is "not run" and the warning says why.
    """
    if way == "skip":
        return Verification(status=NOT_RUN, tolerance=tolerance, inputs=source,
                            reason="skipped (--verify skip)"), None
    if address is not None:
        outputs = bench.run_on_device(staging, address, list(feeds.values()),
                                      lowering.rpc_device)
        result = RunnerResult(outputs=outputs, timing=f"on the device at {address}")
    else:
        if way == "auto":
            reasons = lowering.verify_ways(target)
            if all(reasons.values()):
                reason = "; ".join(f"{k}: {v}" for k, v in reasons.items())
                logger.warning("verification not run: %s", reason)
                return Verification(status=NOT_RUN, tolerance=tolerance, inputs=source,
                                    reason=reason), None
        result = lowering.execute(staging, target, list(feeds.values()), way)
    names = [spec.name for spec in model_io.graph_outputs(model)]
    verification = dataclasses.replace(
        compare_outputs(names, reference, result.outputs, tolerance, source),
        ran_on=result.timing.splitlines()[0][:200] if result.timing else way)
    for label, outputs in result.also.items():
        verification = verification.with_run(
            label, compare_outputs(names, reference, outputs, tolerance, source))
    logger.info("verification %s (%s)", verification.status, result.timing)
    return verification, result


def _manifest(
    model_path: Path,
    target: Target,
    model: ir.Model,
    legal: ir.Model,
    steps: list[Any],
    verification: Verification,
    staging: Path,
) -> dict[str, Any]:
    return {
        "format": "hwcomp-bundle/1",
        "hwcomp_version": hwcomp.__version__,
        "model": {
            "file": model_path.name,
            "sha256": model_io.file_sha256(model_path),
            "opset": model.opset_imports.get("", None),
        },
        "target": {
            "name": target.name,
            "family": target.family,
            "tvm_target": dict(target.tvm_target),
            "runtime": target.runtime,
            **({"cross_compiler": target.cross_compiler} if target.is_cross else {}),
        },
        "inputs": [_spec_dict(s) for s in model_io.graph_inputs(legal)],
        "outputs": [_spec_dict(s) for s in model_io.graph_outputs(model)],
        "versions": {p: importlib.metadata.version(p) for p in _VERSIONED_PACKAGES},
        "passes_applied": [s.name for s in steps if s.modified],
        "legalization": [
            {"step": s.name, "modified": s.modified, "nodes_after": s.nodes_after} for s in steps
        ],
        "verification": verification.to_dict(),
        "files": file_hashes(staging),
    }


def _spec_dict(spec: model_io.TensorSpec) -> dict[str, Any]:
    quantized = {} if spec.scale is None else {"scale": spec.scale, "zero_point": spec.zero_point}
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype, **quantized}


def _write_readme(
    staging: Path, model_path: Path, target: Target, manifest: dict, verification: Verification
) -> None:
    if verification.outputs:
        worst = max(c.max_abs_error for c in verification.outputs)
        detail = (f"(max abs error {worst:.3g}, tolerance {verification.tolerance:g}, "
                  f"inputs {verification.inputs})")
    else:
        detail = f"({verification.reason})"
    runner_inputs = " ".join(
        f"verify/{p.name}" for p in sorted((staging / "verify").glob("input_*.npy"))
    )
    files = "\n".join(f"| `{path}` | {what} |" for path, what in _BUNDLE_FILES
                      if (staging / path.rstrip("/")).exists())
    if "mcu" in manifest:
        mcu = manifest["mcu"]
        run = render("bundle/run_mcu.md.in", prefix=mcu["prefix"],
                     prefix_upper=mcu["prefix"].upper(), target=target.name,
                     emulator=" ".join([target.emulator, *target.emulator_args]),
                     arena=mcu["arena"]["arena_bytes"], flash=mcu["library"]["flash"],
                     ram=mcu["library"]["ram"], flash_budget=target.flash_bytes,
                     ram_budget=target.sram_bytes)
    elif (staging / "bin" / "hwcomp_runner").exists():
        run = render("bundle/run_runner.md.in", runner_inputs=runner_inputs,
                     bundle_id=model_id(model_path.stem))
    else:
        run = render("bundle/run_python.md.in")
    render_to(
        "bundle/README.md.in", staging / "README.md",
        model_name=model_path.stem, target=target.name, target_description=target.description,
        hwcomp_version=hwcomp.__version__, model_file=model_path.name,
        model_sha256=manifest["model"]["sha256"][:16], verification_status=verification.status,
        verification_detail=detail, files_table=files, run_section=run,
    )


_BUNDLE_FILES = (
    ("manifest.json", "inputs/outputs, target, tool versions, hashes, verification"),
    ("model.optimized.onnx", "the graph that was compiled (runs in onnxruntime)"),
    ("lib/model.so", "the compiled model (TVM Relax executable)"),
    ("lib/model.h", "the C API (includes lib/<prefix>.h): run function, input/output and arena sizes"),
    ("lib/model.c", "the executor: kernel calls in order over one statically planned arena"),
    ("lib/kernels.c", "the kernels (TVM's C code generator)"),
    ("lib/weights.c", "weights as const arrays (flash)"),
    ("lib/hwcomp_runtime.c", "workspace allocator and error hook (no malloc)"),
    ("lib/hwcomp_q8.c", "hwcomp's int8 kernels (Helium on M55, SMLAD on the DSP extension, C)"),
    ("lib/hwcomp_f32.c", "hwcomp's fp32 kernels (convolution, depthwise, dense; register-blocked C)"),
    ("runtime/", "TVM runtime libraries for this architecture (libtvm_runtime.so, "
                 "libtvm_runtime_extra.so, libtvm_ffi.so)"),
    ("include/", "TVM FFI and DLPack headers for code that loads the model (and "
                 "hwcomp_model.h, the C API, on CPU bundles)"),
    ("host_api/", "hwcomp_model.cc: the C API over the TVM FFI (CMake target "
                  "hwcomp::<target>_c)"),
    ("example/", "example main.c running the verification input and checking it"),
    ("hwcomp.mk", "Makefile fragment: sources, include flags, target flags"),
    ("zephyr/", "Zephyr module (module.yml, Kconfig, CMakeLists.txt): add the bundle to "
                "ZEPHYR_EXTRA_MODULES"),
    ("library.json", "PlatformIO library manifest: put the bundle under lib/ of a project"),
    ("cmake/", "CMake toolchain file for arm-none-eabi-gcc with this target's flags"),
    ("board/", "startup code and linker script of the emulated board the firmware ran on"),
    ("bin/firmware.elf", "the example firmware for the emulated board (qemu-system-arm)"),
    ("bin/hwcomp_runner", "prebuilt runner for this architecture"),
    ("runner/", "the runner's source and CMake"),
    ("verify/", "the inputs used for verification and onnxruntime's outputs for them"),
    ("CMakeLists.txt", "add_subdirectory() this folder to link the model (or its runtime)"),
)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


def profile(
    path: Path,
    target_name: str | None = None,
    *,
    runs: int = 20,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    calib: Path | None = None,
    precision_options: quantize.PrecisionOptions | None = None,
) -> tuple[latency.Profile, float]:
    """Profile a bundle's kernels (``path`` a bundle folder, or a model built here first).

    Returns the profile (recorded in the target's latency table) and the roofline estimate
    of the same graph for comparison, in seconds.
    """
    path = Path(path)
    if (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text())
        built_for = manifest.get("target", {}).get("name", "")
        if target_name and target_name != built_for:
            raise OptionError(f"{path} was built for '{built_for}', not '{target_name}': "
                              "drop --target or pass a bundle built for it")
        target = load_target(built_for)
        return _profile_bundle(path, target, manifest, runs)
    if not target_name:
        raise OptionError(f"{path}: give --target to build and profile a model")
    latency.check_profilable(load_target(target_name))
    with tempfile.TemporaryDirectory(prefix="hwcomp-profile-") as scratch:
        result = build(path, target_name, Path(scratch), input_shapes=input_shapes, calib=calib,
                       precision_options=precision_options)
        return _profile_bundle(result.bundle, result.target, result.manifest, runs)


def _profile_bundle(bundle: Path, target: Target, manifest: dict[str, Any],
                    runs: int) -> tuple[latency.Profile, float]:
    graph = cost.graph_cost(model_io.load_model(bundle / "model.optimized.onnx"))
    found = latency.profile_bundle(bundle, target, manifest, runs=runs, graph=graph)
    return found, roofline.estimate(graph, target).total_s
