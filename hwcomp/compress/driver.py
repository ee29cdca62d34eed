"""The data-driven compression driver: fit on calibration samples, judge on held-out ones.

:func:`compress_with_data` is what ``hwcomp compress`` and ``hwcomp build --prune/--lowrank``
run: it loads (or seeds) the samples, splits off a held-out quarter, lets
:mod:`hwcomp.compress.prune_plan` choose ratios for ``--prune auto``, runs the pipeline
(:func:`hwcomp.compress.pipeline.compress_graph`) with reconstruction fitted on the rest, and
measures the result against the original with onnxruntime on the held-out samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from hwcomp import model as model_io
from hwcomp.analysis.cost import graph_cost
from hwcomp.analysis.sensitivity import metrics
from hwcomp.compress.distill import (
    DistillOptions,
    DistillReport,
    Progress,
    check_data_source,
    check_sample_count,
    distill,
    load_data,
)
from hwcomp.compress.pipeline import (
    CompressionError,
    PipelineResult,
    check_lowrank_and_importance,
    compress_graph,
    parse_budget,
    parse_ratios,
)
from hwcomp.compress.planner import (
    OBJECTIVES,
    JointPlan,
    Measure,
    parse_latency_budget,
    plan_jointly,
)
from hwcomp.compress.precision import DEFAULT_MIN_SQNR_DB
from hwcomp.compress.prune_plan import PrunePlan, plan_pruning
from hwcomp.compress.torch_graph import check_convertible
from hwcomp.errors import OptionError
from hwcomp.model import calibration_label, check_calibration_source, warn_random_planning
from hwcomp.passes.reconstruct import capture
from hwcomp.targets import Target
from hwcomp.verify import first_outputs


@dataclass(frozen=True)
class CompressionOptions:
    """What the user asked of compression (``hwcomp compress`` / ``hwcomp build``).

    Attributes:
        prune: A ratio, a ratio-file path, ``auto``, or None.
        importance: Channel ranking, one of :data:`IMPORTANCE`.
        lowrank: Singular-value energy kept by low-rank splitting (every layer, or
            ``{layer: energy}``), or None.
        reconstruct: Refit changed layers by least squares.
        accuracy_budget: For ``prune=auto``: ``1%`` or ``0.01``.
        labels: Class labels of the calibration samples.
        calib: Calibration samples; seeded random ones when None.
        seed: Seed of the random samples.
        calib_random: Plan ``prune=auto`` on this many seeded random samples (the user's
            explicit ``--calib-random N``), said in the output and the manifest.
        distill: Fine-tune the compressed model against the original on these samples
            (``--distill``); without ``calib`` they are the calibration samples too.
        optimize: ``latency``, ``size`` or ``memory``: let the joint planner
            (:mod:`hwcomp.compress.planner`) choose pruning ratios (and, on build,
            precisions) under the accuracy budget (``--optimize``).
        latency_budget: With ``optimize``: ``5ms`` / ``800us`` / milliseconds.
        min_sqnr_db: With ``optimize`` and no ``accuracy_budget``: the output SQNR floor
            against the original.
        measure_top: With ``optimize`` on build: build and time this many of the best
            predicted plans and keep the fastest measured (0: trust the prediction).
    """

    prune: str | float | None = None
    importance: str = "l1"
    lowrank: float | Mapping[str, float] | None = None
    reconstruct: bool = True
    accuracy_budget: str | float | None = None
    labels: Path | None = None
    calib: Path | None = None
    seed: int = 0
    calib_random: int = 0
    distill: DistillOptions | None = None
    optimize: str | None = None
    latency_budget: str | float | None = None
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB
    measure_top: int = 3

    @property
    def samples(self) -> Path | None:
        """Return the calibration samples' file: ``calib``, else the ``--distill`` data."""
        if self.calib is not None:
            return self.calib
        return None if self.distill is None else self.distill.data

    @property
    def requested(self) -> bool:
        """Whether any transformation beyond cleanup was asked for."""
        return self.prune is not None or self.lowrank is not None or self.optimize is not None

    def validate(self) -> None:
        """Check the options before any work: ratios, budget, energy, importance."""
        parse_ratios(self.prune)
        if self.prune == "auto" and parse_budget(self.accuracy_budget) is None:
            raise CompressionError("--prune auto needs --accuracy-budget (e.g. 1%)")
        check_calibration_source(self.calib, self.calib_random)
        if self.prune == "auto" and self.calib is None and not self.calib_random:
            # Judged on seeded random samples, a 1 % budget let 75 % of every group go
            # (-92.8 % MACs) on a real CNN: random inputs say nothing of accuracy.
            raise CompressionError(
                "--prune auto needs --calib with real samples (and --labels for an accuracy "
                "budget): on random inputs the budget would be judged on noise (pass "
                "--calib-random N to plan on random samples anyway)")
        parse_budget(self.accuracy_budget)
        self._validate_optimize()
        check_lowrank_and_importance(self.lowrank, self.importance)
        if self.distill is not None:
            self.distill.validate()
            check_data_source(self.distill, self.calib, self.labels)
            if self.calib_random:
                raise OptionError(f"--calib-random {self.calib_random} with --distill: the "
                                  "distillation samples are real; drop --calib-random")

    def _validate_optimize(self) -> None:
        if self.optimize is None:
            if self.latency_budget is not None:
                raise OptionError("--latency-budget constrains the planner: add --optimize "
                                  "latency (or size / memory)")
            return
        if self.optimize not in OBJECTIVES:
            raise OptionError(f"--optimize {self.optimize!r} is not one of "
                              f"{', '.join(OBJECTIVES)}")
        parse_latency_budget(self.latency_budget)
        if self.measure_top < 0:
            raise OptionError(f"--measure-top {self.measure_top}: give 0 (trust the "
                              "prediction) or more plans to build and time")
        if self.prune is not None or self.lowrank is not None:
            given = "--prune" if self.prune is not None else "--lowrank"
            raise OptionError(f"--optimize chooses pruning and low-rank itself: drop {given} (or drop "
                              "--optimize to prune as you say)")
        if self.calib is None and not self.calib_random and self.distill is None:
            raise CompressionError(
                f"--optimize {self.optimize} needs --calib with real samples (and --labels for "
                "an accuracy budget): on random inputs the budget would be judged on noise "
                "(pass --calib-random N to plan on random samples anyway)")

    def require_student(self) -> None:
        """Refuse ``--distill`` with nothing that makes the student differ from the teacher.

        Raises:
            OptionError: ``--distill`` without ``--prune`` or ``--lowrank``.
        """
        if self.distill is not None and not self.requested:
            raise OptionError(
                "--distill fine-tunes a compressed model against the original: give --prune "
                "or --lowrank too (on build, --precision int8 also makes it quantization-aware)")


@dataclass(frozen=True)
class CompressionOutcome:
    """The compressed model, how much smaller it is, and how close it stays."""

    result: PipelineResult
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    sqnr_db: float | None
    cosine: float
    top1_agreement: float | None
    samples: int
    sqnr_without_reconstruction_db: float | None = None
    plan: Any = None
    calibration: str = "seeded random"
    distillation: DistillReport | None = None
    sqnr_without_distillation_db: float | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures for a manifest."""
        return {
            "steps": [s.name for s in self.result.steps if s.modified],
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "params_before": self.params_before, "params_after": self.params_after,
            "held_out_samples": self.samples, "samples_from": self.calibration,
            "sqnr_db": self.sqnr_db,
            "sqnr_without_reconstruction_db": self.sqnr_without_reconstruction_db,
            "sqnr_without_distillation_db": self.sqnr_without_distillation_db,
            "distillation": None if self.distillation is None else self.distillation.to_dict(),
            "cosine": self.cosine, "top1_agreement": self.top1_agreement,
            "plan": None if self.plan is None else self.plan.to_dict(),
        }


def compress_with_data(model: ir.Model, target: Target, options: CompressionOptions,
                       progress: Progress | None = None, *,
                       plan_precision: bool = False,
                       measure: Measure | None = None) -> CompressionOutcome:
    """Compress ``model`` for ``target`` as ``options`` say, measured on held-out samples.

    Reconstruction (and ``prune=auto``) fit on the first three quarters of the samples;
    the comparison with the original uses the rest, samples the fit never saw. With
    ``options.distill`` the result is then fine-tuned against ``model`` (``progress`` hears
    each epoch); where its samples are the calibration samples, the same last quarter is
    held out there too. With ``options.optimize`` the joint planner chooses the ratios (and,
    with ``plan_precision``, per-layer precisions the caller quantizes: ``outcome.plan``;
    ``measure`` builds and times candidate plans).
    """
    options.validate()
    ratios = parse_ratios(options.prune)
    lowrank = options.lowrank
    specs = model_io.graph_inputs(model)
    if options.samples is not None:
        batches = model_io.calibration_batches(
            specs, model_io.load_calibration(Path(options.samples), specs))
    elif options.calib_random:
        warn_random_planning(f"--optimize {options.optimize}" if options.optimize else
                             "--prune auto" if options.prune == "auto" else "compression",
                             options.calib_random)
        batches = model_io.random_calibration(specs, options.calib_random, options.seed)
    else:
        batches = model_io.random_calibration(specs, 16, options.seed)
    if options.distill is not None:
        # Refused before any work: an op the training cannot run, too few samples.
        check_convertible(model_io.to_proto(model).graph)
        if options.samples == options.distill.data:
            check_sample_count(batches, options.distill.data)
    fit, check = model_io.split_held_out(batches)
    labels = all_labels = None
    if options.labels is not None:
        count = model_io.sample_count([*fit, *check])
        all_labels = model_io.load_labels(Path(options.labels), count, model_io.class_count(model))
        labels = all_labels[model_io.sample_count(fit):]
    alignment = int(target.channel_multiple.get("fp32", 1))
    chosen: PrunePlan | JointPlan | None = None
    if options.prune == "auto":
        budget = parse_budget(options.accuracy_budget)
        assert budget is not None
        chosen = plan_pruning(model, budget, fit, check, labels, alignment=alignment)
        ratios = chosen.ratios
    elif options.optimize is not None:
        chosen = plan_jointly(
            model, target, options.optimize, fit, check, labels,
            accuracy_budget=parse_budget(options.accuracy_budget),
            min_sqnr_db=options.min_sqnr_db,
            latency_budget_s=parse_latency_budget(options.latency_budget),
            with_precision=plan_precision, measure=measure, measure_top=options.measure_top)
        ratios = chosen.ratios
        lowrank = chosen.ranks or None
    means = _activation_means(model, fit) if options.importance == "activation" else None
    result = compress_graph(model, ratios, options.importance, alignment=alignment,
                      activation_means=means, lowrank=lowrank, target=target,
                      reconstruct_with=fit if options.reconstruct else None)
    undistilled = report = None
    if options.distill is not None:
        undistilled = result.model
        result, report = _distill(model, result, options, (fit, check), all_labels, progress)
    before, after = graph_cost(model), graph_cost(result.model)
    reference = first_outputs(model, check)
    sqnr, cosine, top1, _, _ = metrics(reference, first_outputs(result.model, check), None)
    unfitted = None
    if result.before_reconstruction is not None:
        unfitted = metrics(reference, first_outputs(result.before_reconstruction, check),
                           None)[0]
    return CompressionOutcome(
        result=result, macs_before=before.total_macs, macs_after=after.total_macs,
        params_before=before.total_params, params_after=after.total_params, sqnr_db=sqnr,
        cosine=cosine, top1_agreement=top1,
        samples=model_io.sample_count(check),
        sqnr_without_reconstruction_db=unfitted, plan=chosen,
        calibration=(f"--distill {options.samples}" if options.calib is None and options.distill
                     else calibration_label(options.calib, options.calib_random, options.seed)),
        distillation=report,
        sqnr_without_distillation_db=None if undistilled is None else metrics(
            reference, first_outputs(undistilled, check), None)[0],
    )


def _distill(model: ir.Model, result: PipelineResult, options: CompressionOptions,
             split: tuple[list[Mapping[str, np.ndarray]], list[Mapping[str, np.ndarray]]],
             labels: np.ndarray | None, progress: Progress | None
             ) -> tuple[PipelineResult, DistillReport]:
    """Fine-tune the pipeline's result against ``model`` as ``options.distill`` asks.

    Where the distillation samples are the calibration samples (``split`` = fit, check),
    the held-out quarter chooses the epoch, so no figure is measured on trained samples.
    """
    assert options.distill is not None
    fit, check = split
    batches: Sequence[Mapping[str, np.ndarray]]
    if options.samples == options.distill.data:
        batches = [*fit, *check]
        held_out: list[int] | None = list(range(len(fit), len(batches)))
    else:
        batches, labels = load_data(model, options.distill)
        held_out = None
    trained, report = distill(model_io.to_proto(result.model), model_io.to_proto(model),
                              replace(options.distill, labels=options.labels), batches,
                              labels, held_out=held_out, progress=progress)
    student = model_io.infer_shapes(ir.serde.deserialize_model(trained))
    return replace(result, model=student), report


def _activation_means(model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]
                      ) -> dict[str, np.ndarray]:
    """Mean |activation| per channel of every layer output, over the calibration samples.

    Measured after the layer's activation function (a channel a ReLU always zeroes is
    unimportant however large its weights), on the cleaned, BN-folded model whose tensor
    names pruning sees; the post-activation tensor is in the same channel group.
    """
    cleaned = compress_graph(model).model
    names = [_after_activation(n.outputs[0]).name or "" for n in cleaned.graph
             if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and n.outputs]
    values = capture(cleaned, names, list(batches))
    return {name: np.mean([np.abs(v).mean(axis=tuple(i for i in range(v.ndim) if i != 1))
                           for v in per_batch], axis=0)
            for name, per_batch in zip(names, values, strict=True)}


_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
                          "Tanh", "Gelu", "Elu", "Selu", "Softplus", "Mish"})


def _after_activation(value: ir.Value) -> ir.Value:
    """Follow a value through the activation functions that alone consume it."""
    uses = list(value.uses())
    while len(uses) == 1 and uses[0].node.op_type in _ACTIVATIONS:
        value = uses[0].node.outputs[0]
        uses = list(value.uses())
    return value
