"""Fake quantization for quantization-aware fine-tuning (``--precision int8 --distill``).

The QDQ model :func:`hwcomp.compress.precision.quantize_model` writes rounds each int8
layer's weight per output channel (symmetric, -127..127) and the tensors around the layer
per tensor with the calibrated ranges (asymmetric, onnxruntime's scale and zero point). The
hooks here round the same tensors the same way in the PyTorch module during distillation,
with the straight-through estimator (the gradient passes the rounding unchanged), so the
weights learn to sit where rounding hurts least; the trained float model then goes to the
same quantizer with the same ranges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from hwcomp.analysis.sensitivity import find_layers

_ACTIVATIONS = frozenset({"Relu", "Clip"})


def fake_quant_hooks(model: ir.Model, ranges: Mapping[str, tuple[float, float]],
                     int8_layers: set[str], act_dtype: str) -> dict[str, Callable[[Any], Any]]:
    """Return PyTorch hooks by tensor name that round as the int8 layers' QDQ nodes will.

    Weights: per output channel, symmetric; activations (each int8 layer's data input and
    output, and the output of a Relu / Clip right after it, which quantization folds into
    the layer): per tensor, by ``ranges`` in ``act_dtype`` (``uint8`` or ``int8``).
    """
    hooks: dict[str, Callable[[Any], Any]] = {}
    for layer in find_layers(model):
        if layer.name not in int8_layers:
            continue
        hooks[layer.weight] = _weight_hook(layer.out_axis)
        tensors = [layer.data_input]
        output = next((n.outputs[0] for n in model.graph
                       if (n.name or n.outputs[0].name) == layer.name), None)
        if output is not None and output.name:
            tensors.append(output.name)
            tensors += [use.node.outputs[0].name or "" for use in output.uses()
                        if use.node.op_type in _ACTIVATIONS]
        for name in tensors:
            if name in ranges and name not in hooks:
                hooks[name] = _activation_hook(*ranges[name], act_dtype)
    return hooks


def _weight_hook(axis: int) -> Callable[[Any], Any]:
    def hook(weight: Any) -> Any:
        dims = tuple(d for d in range(weight.dim()) if d != axis)
        scale = weight.detach().abs().amax(dim=dims, keepdim=True) / 127.0
        scale = scale.where(scale > 0, scale.new_ones(()))
        rounded = (weight / scale).round().clamp(-127, 127) * scale
        return weight + (rounded - weight).detach()
    return hook


def quant_params(low: float, high: float, act_dtype: str) -> tuple[float, int, int, int]:
    """Return onnxruntime's (scale, zero point, qmin, qmax) for an asymmetric range."""
    qmin, qmax = (0, 255) if act_dtype == "uint8" else (-128, 127)
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / (qmax - qmin) if high > low else 1.0
    zero = int(np.clip(round(qmin - low / scale), qmin, qmax))
    return scale, zero, qmin, qmax


def _activation_hook(low: float, high: float, act_dtype: str) -> Callable[[Any], Any]:
    scale, zero, qmin, qmax = quant_params(low, high, act_dtype)

    def hook(x: Any) -> Any:
        rounded = ((x / scale).round() + zero).clamp(qmin, qmax)
        return x + ((rounded - zero) * scale - x).detach()
    return hook
