"""Legalisation: the named steps that make an ONNX model importable by TVM.

The steps run in this order; each is logged with what it changed.

1. ``bind-inputs``: parameter-like inputs (and inputs shadowed by initializers) become
   constants.
2. ``inline-local-functions``: model-local functions are inlined (onnx_ir InlinePass).
3. ``lift-constants``: Constant nodes become initializers, so folding sees them.
4. ``expand-functions``: ops TVM lacks become their ONNX function bodies.
5. ``fold-constants``: constant subgraphs (and shapes, now static) are evaluated.
6. ``fold-batchnorm``: inference BatchNormalization merges into the Conv/Gemm/MatMul before
   it (one kernel instead of two passes over memory; what onnxruntime does too).
7. ``resize-to-matmul``: Resize nodes TVM gets wrong become interpolation MatMuls.
8. ``convtranspose-pads``: ConvTranspose ``output_shape`` becomes explicit pads.
9. ``sum-to-add``: variadic Sum becomes a chain of Add (one fused pass, not stack + reduce).
10. ``drop-identities``: Identity nodes are removed.
11. ``remove-unused``: dead nodes and initializers are removed.
12. ``toposort``: the graph is put back in topological order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common

from hwcomp.lower.frontend.gaps import EXPAND, gap_for
from hwcomp.lower.frontend.relax_import import supported_ops
from hwcomp.passes import (
    BindInputsPass,
    ConvTransposePadsPass,
    EmptyTensorsPass,
    ExpandFunctionsPass,
    FoldBatchNormPass,
    FoldConstantsPass,
    FoldIfPass,
    PowTypesPass,
    ReduceInfinityPass,
    ResizeToMatMulPass,
    SumToAddPass,
    UnrollRecurrentPass,
)
from hwcomp.passes.infra import PassRunner, StepRecord

logger = logging.getLogger(__name__)


def legalize_for_tvm(
    model: ir.Model, const_inputs: Mapping[str, np.ndarray] | None = None
) -> tuple[ir.Model, list[StepRecord]]:
    """Run the legalisation steps on ``model`` and return the new model and the step log."""
    known = supported_ops()

    def should_expand(node: onnx.NodeProto) -> bool:
        gap = gap_for(node, {})
        return node.op_type not in known or (gap is not None and gap.action == EXPAND)

    steps: list[tuple[str, ir.passes.PassBase]] = [
        ("bind-inputs", BindInputsPass(const_inputs)),
        ("inline-local-functions", common.InlinePass()),
        ("lift-constants", common.LiftConstantsToInitializersPass(size_limit=0)),
        ("expand-functions", ExpandFunctionsPass(should_expand)),
        ("lift-constants-again", common.LiftConstantsToInitializersPass(size_limit=0)),
        ("fold-constants", FoldConstantsPass()),
        ("fold-if", FoldIfPass()),
        ("fold-constants-after-if", FoldConstantsPass()),
        ("unroll-recurrent", UnrollRecurrentPass()),
        ("empty-tensors", EmptyTensorsPass()),
        ("fold-batchnorm", FoldBatchNormPass(standalone=True)),
        ("resize-to-matmul", ResizeToMatMulPass()),
        ("convtranspose-pads", ConvTransposePadsPass()),
        ("sum-to-add", SumToAddPass()),
        ("reduce-infinity", ReduceInfinityPass()),
        ("pow-types", PowTypesPass()),
        ("drop-identities", common.IdentityEliminationPass()),
        ("remove-unused", common.RemoveUnusedNodesPass()),
        ("toposort", common.TopologicalSortPass()),
    ]
    runner = PassRunner("legalize")
    return runner.run_all(model, steps), runner.steps
