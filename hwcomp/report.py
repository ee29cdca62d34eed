"""Analysis reports: the JSON document and the self-contained HTML page with plots.

JSON schema ``hwcomp-analysis/1`` (stable; new keys may be added, none removed)::

    {
      "schema": "hwcomp-analysis/1",
      "model": {"file": str, "sha256": str},
      "target": {"name": str, "family": str, "peak_flops_s": float,
                 "dram_bandwidth_bytes_s": float, "ridge_flops_per_byte": float},
      "totals": {"macs": int, "flops": int, "params": int, "weight_bytes": int,
                 "params_by_dtype": {dtype: int}, "memory_bytes": int,
                 "activation_bytes": int, "peak_activation_bytes": int,
                 "estimated_time_s": float},
      "layers": [{"name": str, "op": str, "output_shape": [int], "precision": str,
                  "macs": int, "flops": int, "params": int, "weight_bytes": int,
                  "input_bytes": int, "output_bytes": int, "memory_bytes": int,
                  "intensity": float,
                  "estimate": {"compute_s": float, "memory_s": float, "time_s": float,
                               "bound": "compute"|"memory"|"none",
                               "source": "roofline"|"measured"|"predicted"|"fused"},
                  "sensitivity": {action: {"sqnr_db": float|null, "cosine": float,
                                           "top1_agreement": float|null,
                                           "accuracy": float|null, "exact": bool}}
                                 | null,
                  "instructions": int|null,
                  "fused_into": str|null, "live_bytes": int}],
      "sensitivity": null | {"actions": [str], "samples": int, "random_calibration": bool,
                             "baseline_accuracy": float|null, "seconds": float,
                             "notes": [str]},
      "counted": null | {"bundle": str, "counted_by": str, "unit": str,
                         "kernel_instructions": int, "macs": int,
                         "macs_per_instruction": float|null,
                         "layers_matched": bool,
                         "steps": [{"step": int, "kernel": str, "instructions": int,
                                    "macs": int, "macs_per_instruction": float|null}],
                         "arena_bytes": int|null,
                         "arena_live_bytes_by_step": [int]|null},
      "cut": null | {"outputs": [str], "removed_nodes": int, "removed_ops": {op: int}},
      "layers_view": {"kind": "compiled"|"onnx", "folded_batchnorms": int, "fused_ops": int}
    }

``sqnr_db`` is null when the action leaves the output exactly unchanged. ``counted`` (with
``analyze --bundle``): the instructions each kernel call of the bundle executed on the
emulated board when it was verified (counts, not cycles); a layer's ``instructions`` is
its kernel call's where the bundle's layer kernels match the model's layers one to one.
``layers_view`` ``compiled`` (the default of ``analyze``): BatchNormalization folded into
the conv / matmul before it as the build does, and each elementwise op after a conv /
matmul runs in that layer's kernel (``fused_into`` names it; its own estimate is 0 s,
source ``fused``). ``live_bytes``: the activations live while the node runs (inputs,
outputs and everything still needed later), whose maximum is ``peak_activation_bytes``.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwcomp.analysis.cost import GraphCost
from hwcomp.analysis.roofline import RooflineEstimate
from hwcomp.analysis.sensitivity import SensitivityReport
from hwcomp.targets import Target
from hwcomp.templates import render

SCHEMA = "hwcomp-analysis/1"


@dataclass(frozen=True)
class Analysis:
    """Everything ``hwcomp analyze`` computed for one model and target."""

    model_file: str
    model_sha256: str
    target: Target
    cost: GraphCost
    roofline: RooflineEstimate
    sensitivity: SensitivityReport | None
    counted: Counted | None = None
    cut: dict[str, Any] | None = None
    layers_view: str = "onnx"  # "compiled": BatchNorm folded, epilogues fused (fused_into)
    fused_into: dict[str, str] = field(default_factory=dict)
    folded_batchnorms: int = 0


@dataclass(frozen=True)
class Counted:
    """A bundle's per-kernel instruction counts (its manifest's ``layer_counts``)."""

    bundle: str
    record: dict[str, Any]
    layer_instructions: dict[str, int]  # layer name -> its kernel call's instructions


def to_json(analysis: Analysis) -> dict[str, Any]:
    """Build the ``hwcomp-analysis/1`` document."""
    estimates = analysis.roofline.by_name()
    table = analysis.sensitivity.table() if analysis.sensitivity else {}
    layers = []
    live = analysis.cost.live_bytes or (0,) * len(analysis.cost.nodes)
    for node, live_bytes in zip(analysis.cost.nodes, live, strict=True):
        estimate = estimates[node.name]
        row = table.get(node.name)
        layers.append({
            "name": node.name, "op": node.op_type, "output_shape": list(node.output_shape),
            "precision": node.precision, "macs": node.macs, "flops": node.flops,
            "params": node.params, "weight_bytes": node.weight_bytes,
            "input_bytes": node.input_bytes, "output_bytes": node.output_bytes,
            "memory_bytes": node.memory_bytes, "intensity": node.intensity,
            "estimate": {"compute_s": estimate.compute_s, "memory_s": estimate.memory_s,
                         "time_s": estimate.time_s, "bound": estimate.bound,
                         "source": estimate.source},
            "sensitivity": None if row is None else {
                action: {"sqnr_db": r.sqnr_db, "cosine": r.cosine,
                         "top1_agreement": r.top1_agreement, "accuracy": r.accuracy,
                         "exact": r.exact}
                for action, r in row.items()
            },
            "instructions": (analysis.counted.layer_instructions.get(node.name)
                             if analysis.counted else None),
            "fused_into": analysis.fused_into.get(node.name),
            "live_bytes": live_bytes,
        })
    cost, roof, sens = analysis.cost, analysis.roofline, analysis.sensitivity
    return {
        "schema": SCHEMA,
        "model": {"file": analysis.model_file, "sha256": analysis.model_sha256},
        "target": {"name": analysis.target.name, "family": analysis.target.family,
                   "peak_flops_s": roof.peak_flops_s,
                   "dram_bandwidth_bytes_s": roof.bandwidth_bytes_s,
                   "ridge_flops_per_byte": roof.ridge_flops_per_byte},
        "totals": {"macs": cost.total_macs, "flops": cost.total_flops,
                   "params": cost.total_params, "weight_bytes": cost.total_weight_bytes,
                   "params_by_dtype": cost.params_by_dtype,
                   "memory_bytes": cost.total_memory_bytes,
                   "activation_bytes": cost.activation_bytes,
                   "peak_activation_bytes": cost.peak_activation_bytes,
                   "estimated_time_s": roof.total_s},
        "layers": layers,
        "sensitivity": None if sens is None else {
            "actions": sens.actions, "samples": sens.samples,
            "random_calibration": sens.random_calibration,
            "baseline_accuracy": sens.baseline_accuracy, "seconds": sens.seconds,
            "notes": sens.notes,
        },
        "counted": None if analysis.counted is None else {
            "bundle": analysis.counted.bundle, **analysis.counted.record,
            "layers_matched": bool(analysis.counted.layer_instructions),
        },
        "cut": analysis.cut,
        "layers_view": {"kind": analysis.layers_view,
                        "folded_batchnorms": analysis.folded_batchnorms,
                        "fused_ops": len(analysis.fused_into)},
    }


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(analysis: Analysis) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    cost, roof = analysis.cost, analysis.roofline
    images = {}
    # Roofline: attainable performance against arithmetic intensity, one point per layer.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [(n.intensity, n.flops / e.time_s, n.op_type)
              for n, e in zip(cost.nodes, roof.layers, strict=True) if e.time_s > 0 and n.flops]
    span = np.logspace(-2, 4, 200)
    memory = memory_kind(analysis.target)
    ax.plot(span, np.minimum(roof.peak_flops_s, span * roof.bandwidth_bytes_s), "k-",
            label=f"roof (fp32 peak, {memory} bandwidth)")
    int8_peak = 2 * analysis.target.peak_macs_per_s("int8")
    if int8_peak > roof.peak_flops_s:
        ax.plot(span, np.minimum(int8_peak, span * roof.bandwidth_bytes_s), "k--",
                label="int8 roof (int8 ops/s)")
    for op in sorted({p[2] for p in points}):
        xs = [p[0] for p in points if p[2] == op]
        ys = [p[1] for p in points if p[2] == op]
        ax.scatter(xs, ys, s=14, label=op)
    # Name the costliest layers on the plot (the table below has every one).
    named = sorted(((n, e) for n, e in zip(cost.nodes, roof.layers, strict=True)
                    if e.time_s > 0 and n.flops), key=lambda p: -p[1].time_s)[:6]
    for node, layer in named:
        ax.annotate(node.name, (node.intensity, node.flops / layer.time_s), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte)",
           ylabel="attainable FLOP/s", title=f"Roofline on {analysis.target.name}")
    ax.legend(fontsize=7, ncol=2)
    images["roofline"] = _png(fig)
    plt.close(fig)
    # Per-layer estimated time and MACs for the costliest layers.
    ranked = sorted(zip(cost.nodes, roof.layers, strict=True), key=lambda p: -p[1].time_s)[:30]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, max(3, 0.25 * len(ranked) + 1)),
                                      sharey=True)
    labels = [f"{n.name} ({n.op_type})" for n, _ in ranked]
    left.barh(labels, [e.time_s * 1e3 for _, e in ranked],
              color=["tab:red" if e.bound == "memory" else "tab:blue" for _, e in ranked])
    left.set(xlabel="estimated time (ms); red = memory bound", title="Costliest layers")
    left.invert_yaxis()
    right.barh(labels, [n.macs / 1e6 for n, _ in ranked], color="tab:gray")
    right.set(xlabel="MACs (millions)")
    images["layers"] = _png(fig)
    plt.close(fig)
    images["memory"] = _memory_figure(analysis, plt)
    sens = analysis.sensitivity
    if sens is not None and sens.layers:
        table = sens.table()
        grid = np.array([[_sqnr_for_plot(table[layer][action].sqnr_db) for action in sens.actions]
                         for layer in sens.layers])
        fig, ax = plt.subplots(figsize=(1.2 * len(sens.actions) + 3, 0.22 * len(sens.layers) + 1.5))
        # cividis: readable with every common colour-vision deficiency; dark is sensitive.
        image = ax.imshow(grid, aspect="auto", cmap="cividis", vmin=0, vmax=60)
        for row, values in enumerate(grid):
            for column, value in enumerate(values):
                ax.text(column, row, "60+" if value >= 60 else f"{value:.0f}", ha="center",
                        va="center", fontsize=6, color="black" if value > 30 else "white")
        ax.set_xticks(range(len(sens.actions)), sens.actions)
        ax.set_yticks(range(len(sens.layers)), list(sens.layers), fontsize=7)
        ax.set_title("Output SQNR (dB) per layer and action: dark is sensitive")
        fig.colorbar(image, ax=ax, label="SQNR dB (exact shown as 60+)")
        images["sensitivity"] = _png(fig)
        plt.close(fig)
    return images


def _memory_figure(analysis: Analysis, plt: Any) -> str:
    """Activations live at each step against SRAM (or RAM), weights by layer against flash."""
    cost, target = analysis.cost, analysis.target
    steps = range(len(cost.nodes))
    fig, (ram, flash) = plt.subplots(1, 2, figsize=(11, 3.6))
    record = analysis.counted.record if analysis.counted else {}
    if record.get("arena_live_bytes_by_step"):  # the bundle's own plan, per kernel call
        kib = [b / 1024 for b in record["arena_live_bytes_by_step"]]
        names = [step["kernel"] for step in record.get("steps", [])]
        ram.step(range(len(kib)), kib, where="mid", color="tab:blue",
                 label="buffers live (the bundle's arena plan)")
        ram.axhline(record["arena_bytes"] / 1024, color="tab:blue", linestyle=":",
                    label=f"arena {record['arena_bytes'] / 1024:.1f} KiB")
        xlabel, title = "kernel call", "Arena over the run (the bundle)"
    else:
        kib = [b / 1024 for b in cost.live_bytes]
        names = [node.name for node in cost.nodes]
        ram.step(steps, kib, where="mid", color="tab:blue", label="activations live")
        xlabel, title = "step (node in execution order)", "Activation memory over the run"
    if target.sram_bytes:
        ram.axhline(target.sram_bytes / 1024, color="k", linestyle="--",
                    label=f"{memory_kind(target)} {target.sram_bytes / 1024:.0f} KiB")
    peak = max(range(len(kib)), key=kib.__getitem__) if kib else None
    if peak is not None and peak < len(names):
        ram.annotate(f"peak {kib[peak]:.1f} KiB at {names[peak][:40]}", (peak, kib[peak]),
                     fontsize=7, xytext=(3, 3), textcoords="offset points")
    ram.set(xlabel=xlabel, ylabel="KiB", title=title)
    ram.legend(fontsize=7)
    weights = np.cumsum([n.weight_bytes / 1024 for n in cost.nodes] or [0.0])
    flash.step(steps, weights, where="post", color="tab:gray", label="weights so far")
    if target.flash_bytes:
        flash.axhline(target.flash_bytes / 1024, color="k", linestyle="--",
                      label=f"flash {target.flash_bytes / 1024:.0f} KiB")
    flash.set(xlabel="step (node in execution order)", ylabel="KiB",
              title="Weights, cumulative by layer")
    flash.legend(fontsize=7)
    image = _png(fig)
    plt.close(fig)
    return image


def _sqnr_for_plot(value: float | None) -> float:
    return 60.0 if value is None else min(value, 60.0)


def to_html(analysis: Analysis) -> str:
    """Render the self-contained HTML page (plots embedded as PNG data)."""
    doc = to_json(analysis)
    images = _figures(analysis)
    figures = "\n".join(
        f'<figure id="plot-{name}"><img alt="{name}" src="data:image/png;base64,{data}"></figure>'
        for name, data in images.items()
    )
    actions = doc["sensitivity"]["actions"] if doc["sensitivity"] else []
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>"
                         for cell in _layer_cells(layer) + _sensitivity_cells(layer, actions))
        + "</tr>" for layer in compiled_layers(doc["layers"])
    )
    totals = doc["totals"]
    summary = (
        f"{totals['macs'] / 1e9:.3f} GMACs, {totals['params'] / 1e6:.2f} M parameters, "
        f"peak activations {totals['peak_activation_bytes'] / 1e6:.2f} MB"
        + memory_fit(analysis.target, totals)
        + f", estimated {totals['estimated_time_s'] * 1e3:.3f} ms on {doc['target']['name']}"
    )
    warning = ""
    if doc["sensitivity"] and doc["sensitivity"]["random_calibration"]:
        warning = ('<p class="warning">Sensitivity was measured on seeded RANDOM samples '
                   "(--calib-random): it says how layers react to noise, not to your data. "
                   "Pass --calib with real samples before deciding anything.</p>")
    return render(
        "report/analysis.html.in", title=html.escape(f"hwcomp analysis: {doc['model']['file']}"),
        summary=html.escape(summary), figures=figures, rows=rows, warning=warning,
        sensitivity_headers="".join(f"<th>{html.escape(a)} dB</th>" for a in actions),
        counted=_counted_html(doc["counted"]),
    )


def memory_kind(target: Target) -> str:
    """Name the memory the profile's bandwidth is of: on-chip SRAM where the profile has it."""
    return "SRAM" if target.sram_bytes else "DRAM"


def memory_fit(target: Target, totals: dict[str, Any]) -> str:
    """Say how the peak activations and the weights compare with the board's SRAM and flash."""
    if not target.sram_bytes:
        return ""
    text = (f" ({totals['peak_activation_bytes'] / target.sram_bytes:.0%} of the "
            f"{target.sram_bytes / 1024:.0f} KiB SRAM")
    if target.flash_bytes:
        text += (f"; weights {totals['weight_bytes'] / target.flash_bytes:.0%} of the "
                 f"{target.flash_bytes / 1024:.0f} KiB flash")
    return text + ")"


def _sensitivity_cells(layer: dict[str, Any], actions: list[str]) -> list[str]:
    measured = layer["sensitivity"] or {}
    cells = []
    for action in actions:
        result = measured.get(action)
        if result is None:
            cells.append("")
        else:
            cells.append("exact" if result["exact"] or result["sqnr_db"] is None
                         else f"{result['sqnr_db']:.1f}")
    return cells


def compiled_layers(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return a table's rows: one per kernel's layer, ``op`` naming the ops fused into it.

    A layer an op is ``fused_into`` reads ``Conv+Add+Relu``; the fused ops have no row of
    their own. Layers of the ``onnx`` view come back as they are.
    """
    fused: dict[str, list[str]] = {}
    for layer in layers:
        if layer.get("fused_into"):
            fused.setdefault(layer["fused_into"], []).append(layer["op"])
    return [{**layer, "op": "+".join(dict.fromkeys([layer["op"], *fused.get(layer["name"], [])]))}
            for layer in layers if not layer.get("fused_into")]


def _layer_cells(layer: dict[str, Any]) -> list[str]:
    estimate = layer["estimate"]
    instructions = layer["instructions"]
    return [layer["name"], layer["op"], "x".join(map(str, layer["output_shape"])),
            f"{layer['macs']:,}", f"{layer['params']:,}", f"{layer['memory_bytes']:,}",
            f"{layer['intensity']:.2f}", f"{estimate['time_s'] * 1e6:.1f}", estimate["source"],
            estimate["bound"], "" if instructions is None else f"{instructions:,}"]


def _counted_html(counted: dict[str, Any] | None) -> str:
    """Render the bundle's kernel calls and their instruction counts (``analyze --bundle``)."""
    if counted is None:
        return ""
    ratio = counted["macs_per_instruction"]
    head = (f"<h2>Kernel calls counted on the emulated board</h2>\n<p>"
            f"{html.escape(counted['bundle'])}: {counted['kernel_instructions']:,} "
            f"{html.escape(counted['unit'])}"
            + (f", {ratio:.3f} MACs per instruction" if ratio else "")
            + f". {html.escape(counted['counted_by'])}.</p>\n")
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
            step["step"], step["kernel"], f"{step['instructions']:,}",
            f"{step['macs']:,}" if step["macs"] else "",
            f"{step['macs_per_instruction']:.3f}" if step["macs_per_instruction"] else ""))
        + "</tr>" for step in counted["steps"])
    return (head + "<table>\n<thead><tr><th>step</th><th>kernel</th><th>instructions</th>"
            "<th>MACs</th><th>MACs/instr.</th></tr></thead>\n<tbody>\n" + rows
            + "\n</tbody>\n</table>")


def render_plan_report(path: Path, plan: dict[str, Any], model: str, target: str) -> None:
    """Write the joint plan's Pareto report: every candidate, the chosen one marked.

    ``plan`` is :meth:`hwcomp.compress.planner.JointPlan.to_dict`'s form (the manifest's).
    """
    path.write_text(plan_html(plan, model, target))


def pareto_front(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the candidates no other beats on both predicted latency and loss."""
    return [c for c in candidates if not any(
        o["predicted_latency_s"] <= c["predicted_latency_s"] and o["loss"] <= c["loss"]
        and (o["predicted_latency_s"], o["loss"]) != (c["predicted_latency_s"], c["loss"])
        for o in candidates)]


def plan_html(plan: dict[str, Any], model: str, target: str) -> str:
    """Render the Pareto report's page (the plot embedded as PNG data)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    candidates = plan["candidates"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for within, colour, label in ((True, "tab:green", "within the budget"),
                                  (False, "tab:red", "over the budget")):
        points = [c for c in candidates if c["within_budget"] == within]
        ax.scatter([c["predicted_latency_s"] * 1e3 for c in points],
                   [c["loss"] for c in points], s=22, color=colour, label=label)
    front = sorted(pareto_front(candidates), key=lambda c: c["predicted_latency_s"])
    ax.step([c["predicted_latency_s"] * 1e3 for c in front], [c["loss"] for c in front],
            where="post", color="tab:blue", linewidth=1, label="Pareto front")
    chosen = next(c for c in candidates if c["chosen"])
    ax.scatter([chosen["predicted_latency_s"] * 1e3], [chosen["loss"]], s=160,
               facecolors="none", edgecolors="black", linewidths=2, label="chosen")
    ax.axhline(plan["budget"], color="gray", linestyle="--", label="accuracy budget")
    if plan["latency_budget_s"]:
        ax.axvline(plan["latency_budget_s"] * 1e3, color="gray", linestyle=":",
                   label="latency budget")
    times = [c["predicted_latency_s"] for c in candidates if c["predicted_latency_s"] > 0]
    if times and max(times) > 10 * min(times):
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=f"predicted latency on {target} (ms)", ylabel=plan["metric"][:60],
           title="Candidate plans (lower left is better)")
    ax.legend(fontsize=8)
    image = _png(fig)
    plt.close(fig)

    def cells(values: list[object], chosen_row: bool = False) -> str:
        row = "".join(f"<td>{html.escape(str(v))}</td>" for v in values)
        return f'<tr class="chosen">{row}</tr>' if chosen_row else f"<tr>{row}</tr>"

    rows = "\n".join(cells([c["label"], f"{c['loss']:.4g}", "yes" if c["within_budget"] else "no",
                            f"{c['predicted_latency_s'] * 1e3:.4f}", f"{c['weight_bytes']:,}",
                            f"{c['arena_bytes']:,}", len(c["ratios"]),
                            len(c.get("ranks", {})), len(c["precisions"]),
                            "yes" if c in front else "",
                            "" if c.get("measured_s") is None else f"{c['measured_s'] * 1e3:.4f}"],
                           c["chosen"]) for c in candidates)
    in_plan = {**{k: f"prune {v:.0%}" for k, v in plan["ratios"].items()},
               **{k: f"low-rank {v:.0%}" for k, v in plan.get("ranks", {}).items()},
               **plan["precisions"]}
    action = {"prune": "prune {:.0%}", "rank": "low-rank {:.0%} energy", "precision": "{}"}
    settings = "\n".join(cells([s["unit"], action[s["kind"]].format(s["value"]),
                                f"{s['loss_alone']:.4g}", f"{s['saving_alone']:.4g}",
                                in_plan.get(s["unit"], "-")])
                         for s in plan["settings"])
    measured = plan.get("measured") or {}
    predicted = plan["predicted"]["latency_s"]
    summary = (f"objective: {plan['objective']}; {plan['metric']} {plan['loss']:.4g} within "
               f"{plan['budget']:.4g} on {plan['held_out_samples']} held-out samples; "
               f"predicted latency {plan['fp32']['latency_s'] * 1e3:.4f} ms (fp32) -> "
               f"{predicted * 1e3:.4f} ms")
    if measured.get("seconds"):
        summary += f"; bundle {measured['source']}: {measured['seconds'] * 1e3:.4f} ms"
    return render(
        "report/plan.html.in", title=html.escape(f"hwcomp plan: {model} on {target}"),
        summary=html.escape(summary), plot=image, candidates=rows, settings=settings,
        decisions="\n".join(f"<li>{html.escape(d)}</li>" for d in plan["decisions"]))
