"""The ONNX-to-ONNX compression pipeline: cleanup, then pruning (then more to come).

Steps run in this order, each logged with what it changed:

1. ``bind-inputs``: inputs shadowed by initializers become constants;
2. ``lift-constants`` / ``fold-constants``: Constant nodes and constant subgraphs become
   initializers, so per-channel operands are visible as constants;
3. ``drop-identities``, ``remove-unused``: cleanup;
4. ``fold-batchnorm``: BatchNormalization merges into the layer before it;
5. ``prune-channels``: structured pruning of coupled channel groups (when asked);
6. ``lowrank``: SVD splitting of Gemm/MatMul/Conv where the target runs it faster (when asked);
7. ``reconstruct``: least-squares refit of the changed layers on calibration data (when
   given data).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from hwcomp.analysis.channels import analyze_channels
from hwcomp.errors import HwcompError
from hwcomp.model import infer_shapes
from hwcomp.passes import BindInputsPass, FoldBatchNormPass, FoldConstantsPass
from hwcomp.passes.fold_batchnorm import FoldReport
from hwcomp.passes.lowrank import LowRankPass, LowRankReport
from hwcomp.passes.prune_channels import IMPORTANCE, PruneChannelsPass, PruneReport
from hwcomp.passes.reconstruct import ReconstructPass, ReconstructReport
from hwcomp.targets import Target

logger = logging.getLogger(__name__)


class CompressionError(HwcompError):
    """A compression option is invalid (ratio, ratio file, importance)."""


@dataclass(frozen=True)
class StepResult:
    """One pipeline step: its name and whether it changed the model."""

    name: str
    modified: bool


@dataclass(frozen=True)
class CompressionResult:
    """The compressed model and what each step did."""

    model: ir.Model
    steps: list[StepResult]
    batchnorm: FoldReport
    pruning: PruneReport | None
    lowrank: LowRankReport | None
    reconstruction: ReconstructReport | None = None
    before_reconstruction: ir.Model | None = None


def parse_ratios(spec: str | float | None) -> float | dict[str, float] | None:
    """Read ``--prune``: a ratio in [0, 1), or a JSON file of ``{group or layer: ratio}``.

    Raises:
        CompressionError: A ratio outside [0, 1), or an unreadable file.
    """
    if spec is None or spec == "auto":
        return None
    if isinstance(spec, float | int) or _is_number(str(spec)):
        ratio = float(spec)
        _check_ratio(ratio, "--prune")
        return ratio
    path = Path(str(spec))
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CompressionError(
            f"--prune {spec}: neither a ratio in [0, 1) nor a readable JSON file ({exc})"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise CompressionError(f"{path}: expected a JSON object of layer or group name -> ratio")
    for name, ratio in data.items():
        _check_ratio(float(ratio), f"{path}: '{name}'")
    return {str(k): float(v) for k, v in data.items()}


def parse_budget(text: str | float | None) -> float | None:
    """Read ``--accuracy-budget``: ``1%`` or ``0.01``.

    Raises:
        CompressionError: Not a number, or outside [0, 1).
    """
    if text is None:
        return None
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise CompressionError(f"--accuracy-budget '{text}' is not a number like 1% or 0.01") from None
    if not 0.0 <= value < 1.0:
        raise CompressionError(f"--accuracy-budget {text} is outside [0 %, 100 %)")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_lowrank_and_importance(lowrank: float | None, importance: str) -> None:
    if lowrank is not None and not 0.0 < lowrank <= 1.0:
        raise CompressionError(f"--lowrank: energy {lowrank} is outside (0, 1]; 0.9 keeps 90 %")
    if importance not in IMPORTANCE:
        raise CompressionError(f"importance '{importance}' is not one of {', '.join(IMPORTANCE)}")


def _check_ratio(ratio: float, where: str) -> None:
    if not 0.0 <= ratio < 1.0:
        raise CompressionError(f"{where}: ratio {ratio} is outside [0, 1); 0.3 removes 30 %")


def compress(
    model: ir.Model,
    prune: float | Mapping[str, float] | None = None,
    importance: str = "l1",
    alignment: int = 1,
    activation_means: Mapping[str, np.ndarray] | None = None,
    lowrank: float | None = None,
    target: Target | None = None,
    reconstruct_with: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> CompressionResult:
    """Run the pipeline on ``model`` and return the compressed copy.

    ``lowrank`` is the fraction of singular-value energy kept, in (0, 1]; it needs the
    ``target`` whose roofline decides which splits pay. ``reconstruct_with`` (calibration
    feeds) refits the changed layers by least squares after pruning and splitting.
    """
    _check_lowrank_and_importance(lowrank, importance)
    steps: list[StepResult] = []

    def run(name: str, step: ir.passes.PassBase) -> None:
        nonlocal model
        result = step(model)
        model = result.model
        steps.append(StepResult(name, result.modified))
        logger.info("compress %-16s modified=%s", name, result.modified)

    model = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    run("bind-inputs", BindInputsPass())
    run("lift-constants", common.LiftConstantsToInitializersPass(size_limit=0))
    run("fold-constants", FoldConstantsPass())
    run("drop-identities", common.IdentityEliminationPass())
    run("remove-unused", common.RemoveUnusedNodesPass())
    fold = FoldBatchNormPass()
    run("fold-batchnorm", fold)
    # Reconstruction matches the layers' outputs before pruning/splitting (BN folded).
    reference = ir.serde.deserialize_model(ir.serde.serialize_model(model)) if reconstruct_with else model
    pruning = None
    if prune is not None:
        if isinstance(prune, Mapping):
            _check_names(model, prune)
        pruner = PruneChannelsPass(prune, importance, alignment, activation_means)
        run("prune-channels", pruner)
        pruning = pruner.report
    split_report = None
    if lowrank is not None:
        if target is None:
            raise CompressionError("low-rank splitting needs a target profile (--target)")
        splitter = LowRankPass(lowrank, target, alignment)
        run("lowrank", splitter)
        split_report = splitter.report
        model = infer_shapes(model)
    refit = before = None
    if reconstruct_with is not None and (prune is not None or lowrank is not None):
        before = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        reconstruct = ReconstructPass(reference, reconstruct_with, pruning.kept if pruning else None)
        run("reconstruct", reconstruct)
        refit = reconstruct.report
    return CompressionResult(model=model, steps=steps, batchnorm=fold.report, pruning=pruning,
                             lowrank=split_report, reconstruction=refit,
                             before_reconstruction=before)


def _check_names(model: ir.Model, ratios: Mapping[str, float]) -> None:
    analysis = analyze_channels(model)
    known = {g.name for g in analysis.groups} | {s for g in analysis.groups for s in g.sources}
    frozen = analysis.frozen_sources
    unknown = sorted(name for name in ratios if name not in known and name not in frozen)
    if unknown:
        raise CompressionError(
            f"ratio file names {', '.join(unknown)}, which are not prunable layers or groups; "
            f"prunable: {', '.join(sorted(known)) or 'none'}"
        )
    for name in ratios:
        if name in frozen and name not in known:
            logger.warning("layer %s cannot be pruned: %s", name, frozen[name])


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
    """

    prune: str | float | None = None
    importance: str = "l1"
    lowrank: float | None = None
    reconstruct: bool = True
    accuracy_budget: str | float | None = None
    labels: Path | None = None
    calib: Path | None = None
    seed: int = 0

    @property
    def requested(self) -> bool:
        """Whether any transformation beyond cleanup was asked for."""
        return self.prune is not None or self.lowrank is not None

    def validate(self) -> None:
        """Check the options before any work: ratios, budget, energy, importance."""
        parse_ratios(self.prune)
        if self.prune == "auto" and parse_budget(self.accuracy_budget) is None:
            raise CompressionError("--prune auto needs --accuracy-budget (e.g. 1%)")
        parse_budget(self.accuracy_budget)
        _check_lowrank_and_importance(self.lowrank, self.importance)


@dataclass(frozen=True)
class CompressOutcome:
    """The compressed model, how much smaller it is, and how close it stays."""

    result: CompressionResult
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

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures for a manifest."""
        return {
            "steps": [s.name for s in self.result.steps if s.modified],
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "params_before": self.params_before, "params_after": self.params_after,
            "held_out_samples": self.samples, "sqnr_db": self.sqnr_db,
            "sqnr_without_reconstruction_db": self.sqnr_without_reconstruction_db,
            "cosine": self.cosine, "top1_agreement": self.top1_agreement,
            "plan": None if self.plan is None else {
                "ratios": self.plan.ratios, "loss": self.plan.loss, "budget": self.plan.budget,
                "metric": self.plan.metric, "decisions": self.plan.decisions},
        }


def compress_with_data(model: ir.Model, target: Target, options: CompressionOptions) -> CompressOutcome:
    """Compress ``model`` for ``target`` as ``options`` say, measured on held-out samples.

    Reconstruction (and ``prune=auto``) fit on the first three quarters of the samples;
    the comparison with the original uses the rest, samples the fit never saw.
    """
    from hwcomp import model as model_io
    from hwcomp.analysis.cost import graph_cost
    from hwcomp.analysis.sensitivity import metrics
    from hwcomp.compress.prune_plan import plan_pruning
    from hwcomp.verify import run_onnxruntime

    options.validate()
    ratios = parse_ratios(options.prune)
    specs = model_io.graph_inputs(model)
    if options.calib is not None:
        batches = model_io.calibration_batches(
            specs, model_io.load_calibration(Path(options.calib), specs))
    else:
        batches = model_io.random_calibration(specs, 16, options.seed)
    fit, check = model_io.split_held_out(batches)
    labels = None
    if options.labels is not None:
        count = model_io.sample_count([*fit, *check])
        labels = model_io.load_labels(Path(options.labels), count)[model_io.sample_count(fit):]
    alignment = int(target.channel_multiple.get("fp32", 1))
    chosen = None
    if options.prune == "auto":
        budget = parse_budget(options.accuracy_budget)
        assert budget is not None
        chosen = plan_pruning(model, budget, fit, check, labels, alignment=alignment)
        ratios = chosen.ratios
    means = _activation_means(model, fit) if options.importance == "activation" else None
    result = compress(model, ratios, options.importance, alignment=alignment,
                      activation_means=means, lowrank=options.lowrank, target=target,
                      reconstruct_with=fit if options.reconstruct else None)
    before, after = graph_cost(model), graph_cost(result.model)
    original, compressed = model_io.to_proto(model), model_io.to_proto(result.model)
    reference = [run_onnxruntime(original, b)[0] for b in check]
    sqnr, cosine, top1, _, _ = metrics(reference, [run_onnxruntime(compressed, b)[0] for b in check], None)
    unfitted = None
    if result.before_reconstruction is not None:
        unfitted_proto = model_io.to_proto(result.before_reconstruction)
        unfitted = metrics(reference, [run_onnxruntime(unfitted_proto, b)[0] for b in check], None)[0]
    return CompressOutcome(
        result=result, macs_before=before.total_macs, macs_after=after.total_macs,
        params_before=before.total_params, params_after=after.total_params, sqnr_db=sqnr,
        cosine=cosine, top1_agreement=top1,
        samples=model_io.sample_count(check),
        sqnr_without_reconstruction_db=unfitted, plan=chosen,
    )


def _activation_means(model: ir.Model, batches: Sequence[Mapping[str, np.ndarray]]
                      ) -> dict[str, np.ndarray]:
    """Mean |activation| per channel of every layer output, over the calibration samples.

    Measured after the layer's activation function (a channel a ReLU always zeroes is
    unimportant however large its weights), on the cleaned, BN-folded model whose tensor
    names pruning sees; the post-activation tensor is in the same channel group.
    """
    from hwcomp.passes.reconstruct import capture

    cleaned = compress(model).model
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
