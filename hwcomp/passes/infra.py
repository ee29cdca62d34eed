"""The one pass driver: run named ONNX passes in order, log each, keep one record per step.

Legalisation (:func:`hwcomp.lower.frontend.legalize.legalize_for_tvm`) and compression
(:func:`hwcomp.compress.pipeline.compress_graph`) both run their passes through :class:`PassRunner`,
so the manifest, the CLI and the logs see the same step record for both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx_ir as ir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRecord:
    """One step: its name, whether it changed the graph, and the node count after it."""

    name: str
    modified: bool
    nodes_after: int


@dataclass
class PassRunner:
    """Runs passes on a model one after another, recording each step under ``stage``.

    Attributes:
        stage: What the steps belong to, for the log (``legalize``, ``compress``).
        steps: The record of the steps run so far, in order.

    """

    stage: str
    steps: list[StepRecord] = field(default_factory=list)

    def run(self, model: ir.Model, name: str, step: ir.passes.PassBase) -> ir.Model:
        """Run ``step`` on ``model``, record it as ``name`` and return the resulting model."""
        result = step(model)
        count = sum(1 for _ in result.model.graph)
        logger.info("%s %-24s modified=%s nodes=%d", self.stage, name, result.modified, count)
        self.steps.append(StepRecord(name=name, modified=result.modified, nodes_after=count))
        return result.model

    def run_all(self, model: ir.Model, steps: list[tuple[str, ir.passes.PassBase]]) -> ir.Model:
        """Run the named ``steps`` in order and return the final model."""
        for name, step in steps:
            model = self.run(model, name, step)
        return model


def take_over(old: ir.Value, new: ir.Value) -> None:
    """Make ``new`` stand for ``old`` everywhere, a graph output's name included.

    ``new`` takes ``old``'s uses, shape and type; the model's outputs keep their names.
    """
    new.shape, new.type = old.shape, old.type
    name, is_output = old.name, old.is_graph_output()
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    if is_output:
        old.name = None
        new.name = name
