"""The data-driven compression driver: fit on calibration samples, judge on held-out ones.

:func:`compress_with_data` is what ``hwcomp compress`` and ``hwcomp build --prune/--lowrank``
run: it loads (or seeds) the samples, splits off a held-out quarter, lets
:mod:`hwcomp.compress.prune_plan` choose ratios for ``--prune auto``, runs the pipeline
(:func:`hwcomp.compress.pipeline.compress_graph`) with reconstruction fitted on the rest, and
measures the result against the original with onnxruntime on the held-out samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from hwcomp import model as model_io
from hwcomp.analysis.cost import graph_cost
from hwcomp.analysis.sensitivity import metrics
from hwcomp.compress.pipeline import (
    CompressionError,
    PipelineResult,
    check_lowrank_and_importance,
    compress_graph,
    parse_budget,
    parse_ratios,
)
from hwcomp.compress.prune_plan import plan_pruning
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
        lowrank: Singular-value energy kept by low-rank splitting, or None.
        reconstruct: Refit changed layers by least squares.
        accuracy_budget: For ``prune=auto``: ``1%`` or ``0.01``.
        labels: Class labels of the calibration samples.
        calib: Calibration samples; seeded random ones when None.
        seed: Seed of the random samples.
        calib_random: Plan ``prune=auto`` on this many seeded random samples (the user's
            explicit ``--calib-random N``), said in the output and the manifest.
    """

    prune: str | float | None = None
    importance: str = "l1"
    lowrank: float | None = None
    reconstruct: bool = True
    accuracy_budget: str | float | None = None
    labels: Path | None = None
    calib: Path | None = None
    seed: int = 0
    calib_random: int = 0

    @property
    def requested(self) -> bool:
        """Whether any transformation beyond cleanup was asked for."""
        return self.prune is not None or self.lowrank is not None

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
        check_lowrank_and_importance(self.lowrank, self.importance)


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

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures for a manifest."""
        return {
            "steps": [s.name for s in self.result.steps if s.modified],
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "params_before": self.params_before, "params_after": self.params_after,
            "held_out_samples": self.samples, "samples_from": self.calibration,
            "sqnr_db": self.sqnr_db,
            "sqnr_without_reconstruction_db": self.sqnr_without_reconstruction_db,
            "cosine": self.cosine, "top1_agreement": self.top1_agreement,
            "plan": None if self.plan is None else {
                "ratios": self.plan.ratios, "loss": self.plan.loss, "budget": self.plan.budget,
                "metric": self.plan.metric, "decisions": self.plan.decisions},
        }


def compress_with_data(model: ir.Model, target: Target, options: CompressionOptions) -> CompressionOutcome:
    """Compress ``model`` for ``target`` as ``options`` say, measured on held-out samples.

    Reconstruction (and ``prune=auto``) fit on the first three quarters of the samples;
    the comparison with the original uses the rest, samples the fit never saw.
    """
    options.validate()
    ratios = parse_ratios(options.prune)
    specs = model_io.graph_inputs(model)
    if options.calib is not None:
        batches = model_io.calibration_batches(
            specs, model_io.load_calibration(Path(options.calib), specs))
    elif options.calib_random:
        warn_random_planning("--prune auto" if options.prune == "auto" else "compression",
                             options.calib_random)
        batches = model_io.random_calibration(specs, options.calib_random, options.seed)
    else:
        batches = model_io.random_calibration(specs, 16, options.seed)
    fit, check = model_io.split_held_out(batches)
    labels = None
    if options.labels is not None:
        count = model_io.sample_count([*fit, *check])
        labels = model_io.load_labels(Path(options.labels), count, model_io.class_count(model))
        labels = labels[model_io.sample_count(fit):]
    alignment = int(target.channel_multiple.get("fp32", 1))
    chosen = None
    if options.prune == "auto":
        budget = parse_budget(options.accuracy_budget)
        assert budget is not None
        chosen = plan_pruning(model, budget, fit, check, labels, alignment=alignment)
        ratios = chosen.ratios
    means = _activation_means(model, fit) if options.importance == "activation" else None
    result = compress_graph(model, ratios, options.importance, alignment=alignment,
                      activation_means=means, lowrank=options.lowrank, target=target,
                      reconstruct_with=fit if options.reconstruct else None)
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
        calibration=calibration_label(options.calib, options.calib_random, options.seed),
    )


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
