"""Training-free reconstruction: refit changed layers by least squares.

After pruning or low-rank splitting, a layer's input is no longer what it was trained
on. For each layer whose weight changed shape, in execution order, this pass takes its
input in the *compressed* model (so earlier refits are accounted for) and its output in
the *original* model on calibration data, and solves for the weight and bias that map one
to the other (ridge-regularised least squares):

    1. Conv (group 1, any kernel, stride, padding, dilation): over image patches (im2col);
    2. Gemm / MatMul with a constant weight on 2-D input: over rows.

For a pruned layer only its kept output channels are matched; a low-rank split refits
the second factor (which keeps the layer's name and output). Layers it cannot refit
(depthwise or grouped convs, runtime weights, missing original output) are reported with
the reason. The report gives each layer's relative output error before and after.

A refit is kept only when it lowers the error on calibration batches it was not fitted on
(the last quarter, at least one, when there are two or more): least squares on few samples
fits their noise, and a refit that made held-out outputs worse is worse than none. With
fewer fitting rows than a layer has parameters per output, a warning gives the numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from hwcomp.irutil import add_constant, constant_array, node_input, set_constant_input
from hwcomp.model import Capture

logger = logging.getLogger(__name__)

RIDGE = 1e-4


@dataclass(frozen=True)
class LayerFit:
    """Relative output error of one layer before and after its refit.

    The errors are measured on held-out batches where there are any. ``kept`` says whether
    the refit replaced the layer's weights (False: it did not lower the held-out error).
    """

    layer: str
    error_before: float
    error_after: float
    kept: bool = True
    held_out: bool = False
    skipped: str = ""  # why no refit was attempted (then the errors are NaN)


@dataclass
class ReconstructReport:
    """Refitted layers and the ones left alone, with why."""

    fitted: list[LayerFit] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class ReconstructPass(ir.passes.InPlacePass):
    """Refit the compressed model's changed layers to the original's outputs.

    Args:
        original: The model before compression (same node and tensor names).
        batches: Calibration feeds.
        kept: For pruned tensors, the original channel indices they keep.
    """

    def __init__(self, original: ir.Model, batches: Sequence[Mapping[str, np.ndarray]],
                 kept: Mapping[str, list[int]] | None = None) -> None:
        super().__init__()
        self.original = original
        self.batches = list(batches)
        self.kept = dict(kept or {})
        self.report = ReconstructReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Refit layer by layer, in execution order."""
        self.report = ReconstructReport()
        originals = {n.name: n for n in self.original.graph}
        targets = [n for n in model.graph if _changed(n, originals.get(n.name or ""))]
        if not targets:
            return ir.passes.PassResult(model, modified=False)
        wanted = [n.outputs[0].name or "" for n in targets]
        # One layer's original outputs at a time: holding every changed layer's outputs for
        # every batch at once grew to gigabytes on VGG-19.
        reference = Capture(self.original, wanted)
        for node in targets:
            name = node.name or ""
            reason = _why_not(node)
            if reason:
                self.report.skipped[name] = reason
                continue
            source = node.inputs[0]
            inputs = capture(model, [source.name or "" if source is not None else ""], self.batches)[0]
            outputs = reference.values([node.outputs[0].name or ""], self.batches)[0]
            channels = self.kept.get(node.outputs[0].name or "")
            if channels is not None:  # axis 1 of a conv's output, the last of a MatMul's
                outputs = [o[:, channels] if node.op_type in ("Conv", "ConvTranspose")
                           else o[..., channels] for o in outputs]
            fit = _refit(node, model.graph, inputs, outputs)
            if fit.skipped:
                self.report.skipped[name] = fit.skipped
                continue
            self.report.fitted.append(fit)
            logger.info("refit %s: relative error %.4f -> %.4f (%s)%s", name, fit.error_before,
                        fit.error_after, "held-out" if fit.held_out else "fitting samples",
                        "" if fit.kept else "; not kept: it did not lower the held-out error")
        modified = any(fit.kept for fit in self.report.fitted)
        if modified:
            common.RemoveUnusedNodesPass()(model)  # the replaced weights
        return ir.passes.PassResult(model, modified=modified)


def _changed(node: ir.Node, original: ir.Node | None) -> bool:
    if node.op_type not in ("Conv", "Gemm", "MatMul") or original is None:
        return False
    now, before = constant_array(node_input(node, 1)), constant_array(node_input(original, 1))
    return now is not None and before is not None and now.shape != before.shape


def _why_not(node: ir.Node) -> str:
    if node.op_type == "Conv" and node.attributes.get_int("group", 1) != 1:
        return "grouped or depthwise convolution"
    if node.op_type == "Conv" and node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "auto_pad SAME: padding is implicit"
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0) != 0:
        return "transA is set"
    if node.op_type in ("Gemm", "MatMul"):
        weight = constant_array(node_input(node, 1))
        if weight is None or weight.ndim != 2:
            return "weight is not a constant matrix"
    return ""


def capture(model: ir.Model, names: list[str], batches: list[Mapping[str, np.ndarray]]
             ) -> list[list[np.ndarray]]:
    """Values of the named tensors for every batch: ``result[name index][batch]``."""
    return Capture(model, names).values(names, batches)


def _patches(x: np.ndarray, node: ir.Node, kernel: tuple[int, int]) -> np.ndarray:
    """im2col: ``(N * H_out * W_out, C * k_h * k_w)`` rows of the conv's receptive fields."""
    pads = list(node.attributes.get_ints("pads", [0, 0, 0, 0]))
    strides = list(node.attributes.get_ints("strides", [1, 1]))
    dilations = list(node.attributes.get_ints("dilations", [1, 1]))
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    k_h, k_w = kernel
    span_h, span_w = (k_h - 1) * dilations[0] + 1, (k_w - 1) * dilations[1] + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]
    n, c, h, w = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * k_h * k_w)


def _design(node: ir.Node, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    if node.op_type == "Conv":
        return _patches(x, node, (weight.shape[2], weight.shape[3]))
    return x.reshape(-1, x.shape[-1])


def _targets(node: ir.Node, y: np.ndarray) -> np.ndarray:
    if node.op_type == "Conv":
        return y.transpose(0, 2, 3, 1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


def _refit(node: ir.Node, graph: ir.Graph, inputs: list[np.ndarray], outputs: list[np.ndarray]
           ) -> LayerFit:
    weight = constant_array(node_input(node, 1))
    assert weight is not None
    trans_b = node.op_type == "Gemm" and node.attributes.get_int("transB", 0) != 0
    # Current weight as a (features, outputs) matrix, and the current bias.
    if node.op_type == "Conv":
        current = weight.reshape(weight.shape[0], -1).T
    else:
        current = weight.T if trans_b else weight
    bias_now = constant_array(node_input(node, 2))
    alpha = node.attributes.get_float("alpha", 1.0) if node.op_type == "Gemm" else 1.0
    beta = node.attributes.get_float("beta", 1.0) if node.op_type == "Gemm" else 1.0
    bias = (np.zeros(current.shape[1]) if bias_now is None
            else np.broadcast_to(bias_now * beta, (current.shape[1],)))
    held = max(1, len(inputs) // 4) if len(inputs) >= 2 else 0
    fit_pairs = list(zip(inputs[:len(inputs) - held], outputs[:len(inputs) - held], strict=True))
    judge_pairs = list(zip(inputs[len(inputs) - held:], outputs[len(inputs) - held:],
                           strict=True)) if held else fit_pairs
    rows = sum(_row_count(node, y) for _, y in fit_pairs)
    params = current.shape[0] + 1
    if rows < params:
        logger.warning("refit %s: %d fitting rows for %d parameters per output: too few "
                       "calibration samples to refit it reliably", node.name, rows, params)
    system = params * params if rows >= params else rows * (rows + params)
    if system * 8 > MAX_SYSTEM_BYTES:
        return LayerFit(node.name or "", float("nan"), float("nan"), kept=False,
                        held_out=bool(held), skipped=(
                            f"its least-squares system ({rows} rows x {params} parameters) "
                            f"needs {system * 8 / 1e6:.1f} MB, above the "
                            f"{MAX_SYSTEM_BYTES / 1e6:.1f} MB limit"))
    if rows >= params:
        solution = _solve_normal(node, fit_pairs, weight, params, current.shape[1])
    else:
        solution = _solve_dual(node, fit_pairs, weight)
    new_weight, new_bias = solution[:-1], solution[-1]
    err_before = err_after = norm = 0.0
    for design, target in _row_chunks(node, judge_pairs, weight):
        err_before += float(((design @ (alpha * current) + bias - target) ** 2).sum())
        err_after += float(((design @ new_weight + new_bias - target) ** 2).sum())
        norm += float((target**2).sum())
    scale = max(norm, 1e-30) ** 0.5
    if err_after >= err_before:
        # Already as good as least squares gets (only output channels were removed), or the
        # refit fitted the fitting samples' noise: the layer keeps its weights.
        return LayerFit(node.name or "", err_before**0.5 / scale, err_after**0.5 / scale,
                        kept=False, held_out=bool(held))
    dtype = weight.dtype
    if node.op_type == "Conv":
        shaped = new_weight.T.reshape(weight.shape)
    else:
        shaped = (new_weight.T if trans_b else new_weight) / alpha
    set_constant_input(graph, node, 1, shaped.astype(dtype), f"{node.name}_refit_w")
    if node.op_type == "MatMul":
        _add_bias(graph, node, new_bias.astype(dtype))
    else:
        if node.op_type == "Gemm":
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        set_constant_input(graph, node, 2, new_bias.astype(dtype), f"{node.name}_refit_b")
    return LayerFit(node.name or "", err_before**0.5 / scale, err_after**0.5 / scale,
                    held_out=bool(held))


# The largest least-squares system solved, in float64 (X^T X; or X and X X^T when there are
# fewer rows than parameters): a VGG-19 classifier layer with 25,088 inputs needs 5 GB.
MAX_SYSTEM_BYTES = 256 << 20


def _row_count(node: ir.Node, y: np.ndarray) -> int:
    """Rows ``y`` contributes to the layer's design matrix (pixels x samples, or rows)."""
    if node.op_type == "Conv":
        return int(y.shape[0] * np.prod(y.shape[2:]))
    return int(np.prod(y.shape[:-1]))


def _solve_normal(node: ir.Node, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                  weight: np.ndarray, params: int, outputs: int) -> np.ndarray:
    """Ridge least squares through X^T X, accumulated chunk by chunk (rows >= params)."""
    gram = np.zeros((params, params))
    cross = np.zeros((params, outputs))
    for features, target in _row_chunks(node, pairs, weight):
        design = np.hstack([features, np.ones((features.shape[0], 1))])
        gram += design.T @ design
        cross += design.T @ target
    gram[np.diag_indices_from(gram)] += RIDGE * np.trace(gram) / params
    return np.linalg.solve(gram, cross)


def _solve_dual(node: ir.Node, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                weight: np.ndarray) -> np.ndarray:
    """Solve the same ridge problem through X X^T, for fewer rows than parameters.

    ``(X^T X + r I)^-1 X^T Y = X^T (X X^T + r I)^-1 Y``: the system is rows x rows, not
    params x params (9 rows of a 18,033-input layer solved a 2.6 GB system before).
    """
    chunks = list(_row_chunks(node, pairs, weight))
    design = np.vstack([np.hstack([f, np.ones((f.shape[0], 1))]) for f, _ in chunks])
    target = np.vstack([t for _, t in chunks])
    kernel = design @ design.T
    kernel[np.diag_indices_from(kernel)] += RIDGE * np.trace(kernel) / design.shape[1]
    return design.T @ np.linalg.solve(kernel, target)


# Rows of a layer's design matrix converted to float64 at a time (a VGG-19 3x3 layer at
# 224x224 has 50,176 rows of 576 features per sample: 231 MB in float64).
_ROW_CHUNK = 4096


def _row_chunks(node: ir.Node, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                weight: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (features, targets) in float64, :data:`_ROW_CHUNK` rows at a time."""
    for x, y in pairs:
        features, targets = _design(node, x, weight), _targets(node, y)
        for start in range(0, len(features), _ROW_CHUNK):
            stop = start + _ROW_CHUNK
            yield (features[start:stop].astype(np.float64),
                   targets[start:stop].astype(np.float64))


def _add_bias(graph: ir.Graph, node: ir.Node, bias: np.ndarray) -> None:
    """MatMul has no bias input: add one after it (or update the Add that follows)."""
    output = node.outputs[0]
    value = add_constant(graph, f"{node.name}_refit_b", bias)
    uses = list(output.uses())  # before the Add exists: it reads ``output`` too
    add = ir.node("Add", [output, value], name=f"{node.name}_refit_add")
    add.outputs[0].name = f"{output.name}_refit_biased"
    graph.insert_after(node, add)
    for use in uses:
        use.node.replace_input_with(use.idx, add.outputs[0])
    if output in graph.outputs:
        graph.outputs[graph.outputs.index(output)] = add.outputs[0]
        add.outputs[0].name, output.name = output.name, f"{output.name}_unbiased"
