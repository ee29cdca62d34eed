"""Roofline latency estimates per layer for a target profile.

Each layer's time is ``max(compute time, memory time)``: its MACs at the target's peak
for the layer's precision, and its no-reuse memory traffic at the target's DRAM
bandwidth. The larger term names the bound. Ops without MACs count FLOPs / 2 as their
MAC-equivalent work; pure views (Reshape, Flatten, ...) cost nothing.

Estimates are a model, not a measurement: every layer carries ``source = "roofline"``,
and :func:`estimate` takes measured per-layer times (``hwcomp profile``'s latency table,
``source = "measured"``) and times predicted from them (``"predicted"``) that replace the
estimate layer by layer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from hwcomp.analysis.cost import GraphCost, NodeCost
from hwcomp.targets import Target

VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape",
                      "Constant", "Size", "Dropout"})
ROOFLINE, MEASURED, PREDICTED, FUSED = "roofline", "measured", "predicted", "fused"


@dataclass(frozen=True)
class LayerEstimate:
    """Estimated (or measured) time of one layer on the target.

    Attributes:
        name: Layer (node) name.
        compute_s: Time at peak compute for the layer's precision.
        memory_s: Time to move the layer's traffic at DRAM bandwidth.
        time_s: ``max(compute_s, memory_s)``, or the measured time.
        bound: ``compute``, ``memory`` or ``none`` (free views).
        source: ``roofline`` or ``measured``.
    """

    name: str
    compute_s: float
    memory_s: float
    time_s: float
    bound: str
    source: str


@dataclass(frozen=True)
class RooflineEstimate:
    """Per-layer estimates and the model total for one target."""

    target: str
    layers: list[LayerEstimate]
    total_s: float
    ridge_flops_per_byte: float
    peak_flops_s: float
    bandwidth_bytes_s: float

    def by_name(self) -> dict[str, LayerEstimate]:
        """Index the layers by name."""
        return {layer.name: layer for layer in self.layers}


def layer_estimate(cost: NodeCost, target: Target) -> LayerEstimate:
    """Roofline estimate of one layer."""
    if cost.op_type in VIEW_OPS:
        return LayerEstimate(cost.name, 0.0, 0.0, 0.0, "none", ROOFLINE)
    work = cost.macs if cost.macs else cost.flops / 2
    compute = work / target.peak_macs_per_s(cost.precision)
    memory = cost.memory_bytes / target.dram_bandwidth_bytes_s
    bound = "compute" if compute >= memory else "memory"
    return LayerEstimate(cost.name, compute, memory, max(compute, memory), bound, ROOFLINE)


def estimate(
    cost: GraphCost, target: Target, measured: Mapping[str, float] | None = None,
    predicted: Mapping[str, float] | None = None, fused: Collection[str] = (),
) -> RooflineEstimate:
    """Estimate every layer; those named in ``measured`` or ``predicted`` take that time.

    ``measured`` (seconds) wins over ``predicted`` (a fit on measured layers); layers in
    ``fused`` run inside such a layer's kernel (its time includes them): 0 s of their own.
    The layer's ``source`` says which.
    """
    measured = measured or {}
    predicted = predicted or {}
    gone = {name: 0.0 for name in fused}
    layers = []
    for node in cost.nodes:
        layer = layer_estimate(node, target)
        for times, source in ((measured, MEASURED), (predicted, PREDICTED), (gone, FUSED)):
            if node.name in times:
                layer = LayerEstimate(layer.name, layer.compute_s, layer.memory_s,
                                      float(times[node.name]), layer.bound, source)
                break
        layers.append(layer)
    peak_flops = 2 * target.peak_macs_per_s("fp32")
    return RooflineEstimate(
        target=target.name,
        layers=layers,
        total_s=sum(layer.time_s for layer in layers),
        ridge_flops_per_byte=peak_flops / target.dram_bandwidth_bytes_s,
        peak_flops_s=peak_flops,
        bandwidth_bytes_s=target.dram_bandwidth_bytes_s,
    )
