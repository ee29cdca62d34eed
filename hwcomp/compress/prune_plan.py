"""Choosing per-group pruning ratios under an accuracy budget (``--prune auto``).

The budget is a loss of top-1 accuracy (with labels), of top-1 agreement with the
original model (classifier-shaped outputs, no labels), or of relative output error
(other outputs), measured with onnxruntime on held-out calibration samples by
:class:`hwcomp.compress.judge.Judge` (as ``--optimize`` measures it: counted or by
probability, plus two standard errors).

Units are the coupled channel groups, transformer FFNs' hidden units and attention heads
(:func:`hwcomp.passes.prune_channels.prunable_units`). Greedy search, chosen over an integer
program because each evaluation is an onnxruntime run and the search must stay linear in
the number of groups:

    1. For every unit alone, find the largest candidate ratio whose loss (after
       reconstruction) stays within the budget (the group's sensitivity).
    2. Apply all of them together, with reconstruction, and measure the whole model on
       held-out samples.
    3. While the budget is exceeded, halve the ratio of the group whose own loss was the
       largest per MAC saved, and measure again (at most one step per group and ratio).

Every choice and rollback is recorded in :class:`PrunePlan` with why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from hwcomp.compress.judge import Judge
from hwcomp.compress.pipeline import compress_graph
from hwcomp.passes.prune_channels import prunable_units
from hwcomp.verify import first_outputs

logger = logging.getLogger(__name__)

CANDIDATES = (0.75, 0.5, 0.25)


@dataclass
class PrunePlan:
    """Chosen ratio per group, the measured loss, and the decisions that led there."""

    ratios: dict[str, float]
    loss: float
    budget: float
    metric: str
    decisions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the manifest's ``compression.plan``)."""
        return {"ratios": self.ratios, "loss": self.loss, "budget": self.budget,
                "metric": self.metric, "decisions": self.decisions}


Feeds = Sequence[Mapping[str, np.ndarray]]


def plan_pruning(
    model: ir.Model,
    budget: float,
    fit_batches: Feeds,
    check_batches: Feeds,
    labels: np.ndarray | None = None,
    alignment: int = 1,
) -> PrunePlan:
    """Choose per-group ratios whose combined loss stays within ``budget``.

    ``model`` must be cleaned up and BN-folded (as the compress pipeline leaves it).
    ``labels`` align with ``check_batches``' samples.
    """
    model = compress_graph(model).model  # cleanup + BN folding, as pruning sees it
    judge = Judge(model, check_batches, labels, budget, min_sqnr_db=0.0)
    metric = judge.metric

    def loss_of(candidate: ir.Model) -> float:
        return judge.loss(first_outputs(candidate, check_batches))

    units = prunable_units(model)
    plan = PrunePlan(ratios={}, loss=0.0, budget=budget, metric=metric)
    if not units:
        plan.decisions.append("nothing prunable: every group is frozen")
        return plan
    alone: dict[str, float] = {}
    for unit in units:
        for ratio in CANDIDATES:
            pruned = compress_graph(model, {unit: ratio}, alignment=alignment,
                                          reconstruct_with=fit_batches).model
            loss = loss_of(pruned)
            if loss <= budget:
                plan.ratios[unit] = ratio
                alone[unit] = loss
                plan.decisions.append(f"{unit}: {ratio:.0%} alone costs {loss:.4f}")
                break
        else:
            plan.decisions.append(f"{unit}: even {CANDIDATES[-1]:.0%} exceeds the budget")
    while plan.ratios:
        combined = compress_graph(model, dict(plan.ratios), alignment=alignment,
                                        reconstruct_with=fit_batches).model
        plan.loss = loss_of(combined)
        if plan.loss <= budget:
            plan.decisions.append(f"combined: {metric} {plan.loss:.4f} within {budget:.4f}")
            return plan
        worst = max(plan.ratios, key=lambda name: alone.get(name, 0.0) / plan.ratios[name])
        halved = plan.ratios[worst] / 2
        plan.decisions.append(f"combined {plan.loss:.4f} over budget: {worst} "
                              f"{plan.ratios[worst]:.0%} -> {halved:.0%}")
        if halved < 0.1:
            del plan.ratios[worst]
        else:
            plan.ratios[worst] = halved
            alone[worst] = alone.get(worst, 0.0) / 2
    plan.loss = 0.0
    plan.decisions.append("no combination of groups fits the budget: nothing pruned")
    return plan
