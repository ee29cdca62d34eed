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

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from hwcomp.analysis.channels import analyze_channels
from hwcomp.errors import HwcompError
from hwcomp.model import infer_shapes
from hwcomp.passes import BindInputsPass, FoldBatchNormPass, FoldConstantsPass
from hwcomp.passes.fold_batchnorm import FoldReport
from hwcomp.passes.infra import PassRunner, StepRecord
from hwcomp.passes.lowrank import LowRankPass, LowRankReport
from hwcomp.passes.prune_channels import (
    IMPORTANCE,
    PruneChannelsPass,
    PruneReport,
    prunable_units,
)
from hwcomp.passes.reconstruct import ReconstructPass, ReconstructReport
from hwcomp.targets import Target

logger = logging.getLogger(__name__)


class CompressionError(HwcompError):
    """A compression option is invalid (ratio, ratio file, importance)."""


@dataclass(frozen=True)
class PipelineResult:
    """The compressed model and what each step did."""

    model: ir.Model
    steps: list[StepRecord]
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


def check_lowrank_and_importance(lowrank: float | Mapping[str, float] | None,
                                 importance: str) -> None:
    """Raise :class:`CompressionError` for an energy outside (0, 1] or an unknown ranking."""
    energies = [] if lowrank is None else (
        list(lowrank.values()) if isinstance(lowrank, Mapping) else [lowrank])
    for energy in energies:
        if not 0.0 < energy <= 1.0:
            raise CompressionError(f"--lowrank: energy {energy} is outside (0, 1]; 0.9 keeps "
                                   "90 %")
    if importance not in IMPORTANCE:
        raise CompressionError(f"importance '{importance}' is not one of {', '.join(IMPORTANCE)}")


def _check_ratio(ratio: float, where: str) -> None:
    if not 0.0 <= ratio < 1.0:
        raise CompressionError(f"{where}: ratio {ratio} is outside [0, 1); 0.3 removes 30 %")


def compress_graph(
    model: ir.Model,
    prune: float | Mapping[str, float] | None = None,
    importance: str = "l1",
    alignment: int = 1,
    activation_means: Mapping[str, np.ndarray] | None = None,
    lowrank: float | Mapping[str, float] | None = None,
    target: Target | None = None,
    reconstruct_with: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> PipelineResult:
    """Run the pipeline on ``model`` and return the compressed copy.

    ``lowrank`` is the fraction of singular-value energy kept, in (0, 1], for every layer or
    per layer name (``{layer: energy}``, the planner's; other layers stay whole); it needs the
    ``target`` whose roofline decides which splits pay. ``reconstruct_with`` (calibration
    feeds) refits the changed layers by least squares after pruning and splitting.
    """
    check_lowrank_and_importance(lowrank, importance)
    runner = PassRunner("compress")

    def run(name: str, step: ir.passes.PassBase) -> None:
        nonlocal model
        model = runner.run(model, name, step)

    # Clones share the weight tensors (passes replace a weight, never write into one): a
    # serialize/deserialize round trip per copy held four copies of VGG-19's 575 MB.
    model = model.clone()
    run("bind-inputs", BindInputsPass())
    run("lift-constants", common.LiftConstantsToInitializersPass(size_limit=0))
    run("fold-constants", FoldConstantsPass())
    run("drop-identities", common.IdentityEliminationPass())
    run("remove-unused", common.RemoveUnusedNodesPass())
    fold = FoldBatchNormPass()
    run("fold-batchnorm", fold)
    # Reconstruction matches the layers' outputs before pruning/splitting (BN folded).
    reference = model.clone() if reconstruct_with else model
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
        split_report = LowRankReport()
        passes: list[tuple[float, set[str] | None]]
        if isinstance(lowrank, Mapping):
            by_energy: dict[float, set[str]] = {}
            for layer, energy in lowrank.items():
                by_energy.setdefault(float(energy), set()).add(layer)
            passes = [(energy, layers) for energy, layers in sorted(by_energy.items())]
        else:
            passes = [(float(lowrank), None)]
        for energy, layers in passes:
            splitter = LowRankPass(energy, target, alignment, layers)
            run("lowrank", splitter)
            split_report.split.extend(splitter.report.split)
            split_report.skipped.update(splitter.report.skipped)
        model = infer_shapes(model)
    refit = before = None
    if reconstruct_with is not None and (prune is not None or lowrank is not None):
        before = model.clone()
        reconstruct = ReconstructPass(reference, reconstruct_with, pruning.kept if pruning else None)
        run("reconstruct", reconstruct)
        refit = reconstruct.report
    return PipelineResult(model=model, steps=runner.steps, batchnorm=fold.report, pruning=pruning,
                             lowrank=split_report, reconstruction=refit,
                             before_reconstruction=before)


def _check_names(model: ir.Model, ratios: Mapping[str, float]) -> None:
    analysis = analyze_channels(model)
    known = {*prunable_units(model), *(s for g in analysis.groups for s in g.sources)}
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
