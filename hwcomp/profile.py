"""Latency per kernel on the target: ``hwcomp profile`` and the per-target latency table.

A bundle's time is spent in its kernels: TVM's fused functions on CPUs, hwcomp's executor
steps on microcontrollers. ``profile`` measures each one where it can:

* **measured** (a target this machine runs natively: ``host``, the x86 profiles its CPU
  supports): the bundle's Relax executable is loaded in a worker process with the target's
  thread count, and the VM's instrument hook times every kernel call (``perf_counter`` just
  before and just after it, so the VM's own dispatch stays out); warm-up runs first, then
  the median over ``runs`` of each kernel's time per inference. The VM's builtins
  (allocation, shape checks) are summed as "VM overhead".
* **counted** (Cortex-M): the instructions each kernel call executed on the emulated board
  during the build's verification (manifest ``layer_counts``) at the profile's
  ``cycles_per_instruction`` (1 unless the profile says otherwise) and clock: a model of
  the time from an exact count, not a measurement; said so everywhere it is shown.

Each kernel goes into the target's latency table in hwcomp's cache
(``<cache>/latency/<target>.json``, schema ``hwcomp-latency/1``), keyed by its signature: the
kernel's name without its numbering (the ops TVM fused, or which hwcomp kernel) and the
shapes and dtypes of its arguments, so the same kernel in another model finds it. Kernels
that compute a conv / matmul layer (hwcomp's layer kernels know their MACs) are also
matched to the model's layers with MACs, one to one by MACs where the two sets agree, and
each such layer's time is kept under its layer signature (op, precision, output shape,
MACs), which is what ``hwcomp analyze`` looks up::

    {"schema": "hwcomp-latency/1", "target": str,
     "entries": {signature: {"seconds": float, "source": "measured" | "counted",
                             "kernel": str, "macs": int, "calls": int, "model": str,
                             "when": str (ISO 8601 UTC)}},
     "layers": {layer signature: {"seconds": float, "source": ..., "kernel": str,
                                  "op": str, "precision": str, "macs": int,
                                  "bytes": int (memory traffic), "outputs": int,
                                  "model": str, "when": str}}}

A later profile of the same signature replaces the entry. A kernel's time includes what
TVM fused into it (bias, activation, residual add), so a layer's measured time does too.

:func:`layer_times` reads the table for a model: each layer found in it is "measured" (or
counted); a conv / matmul layer of an op and precision with measured layers of at least
three other sizes is "predicted" by :class:`Fit` (seconds against MACs and memory traffic,
fitted per op, precision and kind to the measured layers); the rest keep the roofline.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import onnx_ir as ir

from hwcomp.analysis import roofline
from hwcomp.analysis.cost import GraphCost, NodeCost, node_name
from hwcomp.errors import ExecutionError, HwcompError
from hwcomp.lower import lowering_for
from hwcomp.lower.library.runtime_libs import cache_dir
from hwcomp.lower.types import TVM_EPILOGUE_OPS
from hwcomp.targets import Target
from hwcomp.threads import thread_env

SCHEMA = "hwcomp-latency/1"
MEASURED, COUNTED = "measured", "counted"
WORKER_TIMEOUT_S = 600
_VM_BUILTIN = "vm.builtin."
_DTYPES = {"int8", "uint8", "int16", "int32", "fp16", "fp32", "float16", "float32", "bf16"}


class ProfileError(HwcompError):
    """The bundle cannot be profiled here as asked (a usage error: exit 2)."""


@dataclass(frozen=True)
class KernelTime:
    """One kernel's time per inference (all its calls), and what identifies it."""

    kernel: str
    signature: str
    seconds: float
    calls: int
    macs: int = 0
    instructions: int = 0  # counted targets: the executed instructions behind ``seconds``


@dataclass
class Profile:
    """What ``hwcomp profile`` found for one bundle."""

    bundle: str
    target: str
    source: str  # MEASURED or COUNTED
    method: str  # how, in words, for the output
    kernels: list[KernelTime]
    overhead_s: float  # the VM's builtins (measured targets; 0 where counted)
    whole_s: float | None  # one inference end to end without the hook (measured), if known
    runs: int
    table: str = ""  # the latency table written
    notes: list[str] = field(default_factory=list)

    @property
    def kernels_s(self) -> float:
        """The kernels' time per inference, summed."""
        return sum(k.seconds for k in self.kernels)

    def to_json(self) -> str:
        """Return the profile as JSON (``--json``)."""
        return json.dumps({**asdict(self), "kernels_s": self.kernels_s}, indent=2)


def signature(kernel: str, args: list[str]) -> str:
    """Return a kernel's table key: its name without numbering, its arguments' types."""
    return f"{_unnumbered(kernel)}({', '.join(args)})"


def _unnumbered(kernel: str) -> str:
    # fused_conv2d1_add3_relu1, hwcomp_kernel_12 and hwcomp_int8_c_conv_3 name the same kinds
    # of kernel as their first copies: numbers alone, and a number ending an op's name, go
    # (a dtype such as int8 stays).
    parts = []
    for part in kernel.split("_"):
        if part.isdigit():
            continue
        parts.append(part if part in _DTYPES else re.sub(r"(?<=[a-z])\d+$", "", part))
    return "_".join(parts)


def profile_bundle(bundle: Path, target: Target, manifest: dict[str, Any], runs: int = 20,
                   warmup: int = 3, graph: GraphCost | None = None) -> Profile:
    """Profile ``bundle`` (built for ``target``) and record it in the latency table.

    ``graph``: the cost of the bundle's ``model.optimized.onnx``, if the caller has it.
    """
    check_profilable(target)
    counts = manifest.get("layer_counts")
    if counts:
        profile = _counted(bundle, target, counts)
    elif lowering_for(target).kernel_timing == MEASURED:
        profile = _measured(bundle, target, runs, warmup, manifest.get("kernel_macs", {}))
    else:
        raise ProfileError(f"{bundle} has no per-kernel counts (manifest layer_counts): its "
                           "build ran no emulated board; rebuild it with this hwcomp")
    if graph is None:
        from hwcomp import model as model_io
        from hwcomp.analysis import cost

        graph = cost.graph_cost(model_io.load_model(bundle / "model.optimized.onnx"))
    layers = _match_layers(profile, graph)
    profile.table = str(record(profile, manifest.get("model", {}).get("file", ""), layers))
    return profile


def check_profilable(target: Target) -> None:
    """Refuse, before any build, a target whose kernels cannot be timed or counted here."""
    lowering = lowering_for(target)
    if lowering.kernel_timing == MEASURED:
        reason = lowering.not_run_reason(target)
        if reason:
            raise ProfileError(f"cannot measure {target.name} kernels here: {reason}")
    elif lowering.kernel_timing != COUNTED:
        raise ProfileError(
            f"hwcomp profile times the kernels of bundles this machine runs natively (x86) "
            f"and takes the per-kernel counts of Cortex-M builds; {target.name} is neither "
            "here: time it whole with hwcomp bench (--device rpc://... on a board), or count "
            "it with hwcomp bench --count-instructions")


def _counted(bundle: Path, target: Target, counts: dict[str, Any]) -> Profile:
    cpi = target.cycles_per_instruction
    per_instruction = cpi / target.clock_hz
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for step in counts["steps"]:
        grouped[signature(step["kernel"], step.get("args", []))].append(step)
    kernels = [KernelTime(kernel=steps[0]["kernel"], signature=key,
                          seconds=sum(s["instructions"] for s in steps) * per_instruction,
                          calls=len(steps), macs=sum(s["macs"] for s in steps),
                          instructions=sum(s["instructions"] for s in steps))
               for key, steps in grouped.items()]
    method = (f"COUNTED, NOT MEASURED: instructions executed on the emulated board "
              f"({counts['counted_by']}) x {cpi:g} cycle(s) per instruction at "
              f"{target.clock_hz / 1e6:g} MHz (the profile's figures); qemu models no "
              "pipeline, wait states or memory stalls")
    return Profile(bundle=str(bundle), target=target.name, source=COUNTED, method=method,
                   kernels=kernels, overhead_s=0.0, whole_s=None, runs=1)


def _measured(bundle: Path, target: Target, runs: int, warmup: int,
              kernel_macs: dict[str, int]) -> Profile:
    env = thread_env(target.cores)
    command = [sys.executable, "-m", "hwcomp.profile", str(bundle), "--runs", str(runs),
               "--warmup", str(warmup)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=WORKER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ExecutionError(
            f"profiling {bundle} did not finish within {WORKER_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ExecutionError(f"profiling {bundle} failed: {(lines or ['no output'])[-1][:300]}")
    found = json.loads(done.stdout)
    kernels = [KernelTime(**k, macs=k["calls"] * (_fused_macs(k["kernel"], kernel_macs)
                                                   or _tvm_layer_macs(k["kernel"], k["signature"])))
               for k in found["kernels"]]
    threads = env.get("TVM_NUM_THREADS", "default")
    method = (f"measured on this machine: TVM VM instrument hook around each kernel call, "
              f"median of {runs} inferences after {warmup} warm-up, {threads} thread(s)")
    return Profile(bundle=str(bundle), target=target.name, source=MEASURED, method=method,
                   kernels=kernels, overhead_s=found["overhead_s"], whole_s=found["whole_s"],
                   runs=runs)


def _fused_macs(kernel: str, kernel_macs: dict[str, int]) -> int:
    """MACs of a fused function, from the hwcomp layer kernels its name carries."""
    return sum(kernel_macs.get(name, 0) for name in re.findall(r"hwcomp_kernel_\d+", kernel))


def layer_signature(node: NodeCost) -> str:
    """Return a layer's key in the latency table: op, precision, output shape, MACs."""
    shape = "x".join(str(d) for d in node.output_shape)
    return f"{node.op_type}/{node.precision}/{shape}/{node.macs}"


def _match_layers(profile: Profile, graph: GraphCost) -> dict[str, dict[str, Any]]:
    """Each conv / matmul layer's kernel time (:func:`match_calls`), by layer signature.

    Layers left unmatched (a kernel whose MACs are unknown) stay out of the table.
    """
    nodes = [n for n in graph.nodes if n.macs]
    matched = match_calls(nodes, [(k.macs // k.calls, output_elements(k.signature), k)
                                  for k in profile.kernels if k.macs for _ in range(k.calls)])
    layers = {}
    for node in nodes:
        kernel = matched.get(node.name)
        if kernel is not None:
            layers[layer_signature(node)] = {
                "seconds": kernel.seconds / kernel.calls,
                "source": profile.source, "kernel": kernel.kernel, "op": node.op_type,
                "precision": node.precision, "macs": node.macs, "bytes": node.memory_bytes,
                "outputs": node.output_elements}
    if len(matched) < len(nodes):
        profile.notes.append(f"{len(nodes) - len(matched)} of {len(nodes)} conv / matmul "
                             "layer(s) matched no kernel (MACs unknown): not recorded")
    return layers


_Item = TypeVar("_Item")


def match_calls(nodes: list[NodeCost], calls: list[tuple[int, int, _Item]]) -> dict[str, _Item]:
    """Pair layers with MACs and layer-kernel calls, each call (MACs, output elements, item).

    A layer takes the next call of its MACs whose output has as many elements as its own (a
    matmul kernel may write it flattened); failing that, the only call of its MACs when it
    is the only layer of them. Returns the items matched by layer name.
    """
    by_key: dict[tuple[int, int], list[_Item]] = defaultdict(list)
    by_macs: dict[int, list[_Item]] = defaultdict(list)
    for macs, outputs, item in calls:
        by_key[(macs, outputs)].append(item)
        by_macs[macs].append(item)
    layers_of = Counter(node.macs for node in nodes)
    matched = {}
    for node in nodes:
        candidates = by_key.get((node.macs, node.output_elements)) or (
            by_macs[node.macs] if len(by_macs[node.macs]) == 1 == layers_of[node.macs] else [])
        if candidates:
            matched[node.name] = candidates.pop(0)
    return matched


def _arg_shapes(text: str) -> list[list[int]]:
    """Return the shapes of the argument types in ``text`` (``float32[1x8], int8[]``)."""
    return [[int(d) for d in dims.split("x")] if dims else []
            for dims in re.findall(r"\[([0-9x]*)\]", text)]


def output_elements(text: str) -> int:
    """Return the elements of the last argument type in ``text`` (a kernel's output)."""
    shapes = _arg_shapes(text)
    return math.prod(shapes[-1]) if shapes and shapes[-1] else 0


def layer_times(graph: GraphCost, target: str) -> tuple[dict[str, float], dict[str, float]]:
    """Return (measured, predicted) seconds by layer name for ``graph`` from the table."""
    table = load_table(target).get("layers", {})
    known = [e for e in table.values() if "bytes" in e]
    measured = {n.name: table[layer_signature(n)]["seconds"] for n in graph.nodes
                if layer_signature(n) in table}
    fits: dict[tuple[str, ...], Fit | None] = {}
    predicted = {}
    for node in graph.nodes:
        if not node.macs or node.name in measured:
            continue
        fit = None
        # The layer's own kind first (depthwise-thin or dense), else its op and precision.
        for key in ((node.op_type, node.precision, _kind(node.macs, node.output_elements)),
                    (node.op_type, node.precision)):
            if key not in fits:
                fits[key] = _fit([e for e in known if _entry_key(e)[:len(key)] == key])
            fit = fits[key]
            if fit is not None:
                break
        if fit is not None:
            predicted[node.name] = fit.seconds(node.macs, node.memory_bytes)
    return measured, predicted


def estimate_model(model: ir.Model, target: Target, graph: GraphCost,
                   also_fused: Collection[str] = ()) -> roofline.RooflineEstimate:
    """Estimate ``model``'s layers (costed as ``graph``) on ``target``, best source first.

    Layers ``hwcomp profile`` measured on this target (or predicts from them) take those
    times, the elementwise ops TVM fuses after them none of their own, the rest the
    roofline. ``graph`` may restate layers' precisions (the planner's candidates).
    ``also_fused``: more nodes that run in another layer's kernel and take no time of their
    own (``analyze``'s layers as compiled: :func:`fused_into` with the lowering's ops).
    """
    measured, predicted = layer_times(graph, target.name)
    fused = fused_after(model, {*measured, *predicted}) | set(also_fused)
    return roofline.estimate(graph, target, measured, predicted, fused)


def fused_after(model: ir.Model, timed: set[str]) -> set[str]:
    """Names of the elementwise nodes downstream of a timed layer, through elementwise ones."""
    return set(fused_into(model, timed))


def fused_into(model: ir.Model, timed: set[str],
               ops: frozenset[str] = TVM_EPILOGUE_OPS) -> dict[str, str]:
    """``{elementwise node: the timed layer whose kernel runs it}``, as :func:`fused_after`.

    ``ops``: the ops a kernel runs after its layer (the lowering's ``epilogue_ops``).
    """
    producer = {value.name: node_name(node) for node in model.graph for value in node.outputs}
    fused: dict[str, str] = {}
    for node in model.graph:
        if node.op_type not in ops:
            continue
        for value in node.inputs:
            source = producer.get(value.name) if value is not None else None
            if source in timed:
                fused[node_name(node)] = source
                break
            if source in fused:
                fused[node_name(node)] = fused[source]
                break
    return fused


def _kind(macs: int, outputs: int) -> str:
    """Return "thin" where an output takes at most 49 MACs (depthwise to 7x7), else "dense"."""
    return "thin" if macs <= 49 * max(outputs, 1) else "dense"


def _entry_key(entry: dict[str, Any]) -> tuple[str, str, str]:
    return entry["op"], entry["precision"], _kind(entry["macs"], entry["outputs"])


@dataclass(frozen=True)
class Fit:
    """seconds = a * MACs + b * bytes + c, all three >= 0 (a latency model of one kind)."""

    a: float
    b: float
    c: float

    def seconds(self, macs: int, memory_bytes: int) -> float:
        """Return the predicted time of a layer."""
        return self.a * macs + self.b * memory_bytes + self.c


def _fit(entries: list[dict[str, Any]]) -> Fit | None:
    """Fit :class:`Fit` to measured layers, minimising relative error; None below 3 sizes.

    Weighted least squares (each row divided by its time, so a 10 us layer counts as much
    as a 10 ms one) over every subset of the three terms, keeping the best fit whose
    coefficients are all non-negative.
    """
    import itertools

    import numpy as np

    if len({(e["macs"], e["bytes"]) for e in entries}) < 3:
        return None
    x = np.array([[e["macs"], e["bytes"], 1.0] for e in entries], dtype=np.float64)
    y = np.array([e["seconds"] for e in entries])
    weighted_x, weighted_y = x / y[:, None], np.ones_like(y)
    best: tuple[float, np.ndarray] | None = None
    for size in (3, 2, 1):
        for columns in itertools.combinations(range(3), size):
            coef, *_ = np.linalg.lstsq(weighted_x[:, columns], weighted_y, rcond=None)
            if np.any(coef < 0):
                continue
            full = np.zeros(3)
            full[list(columns)] = coef
            error = float(np.sum((weighted_x @ full - 1.0) ** 2))
            if best is None or error < best[0]:
                best = (error, full)
    if best is None:
        return None
    a, b, c = (float(v) for v in best[1])
    return Fit(a, b, c)


def _tvm_layer_macs(kernel: str, signature: str) -> int:
    """MACs of a conv2d / matmul kernel TVM scheduled itself, from its argument shapes.

    conv2d: (data, weight OIHW, ..., output): output elements x I*H*W of the weight.
    matmul: (a [..., K], b, ..., output): output elements x K. 0 for anything else.
    """
    shapes = _arg_shapes(signature)
    if len(shapes) < 3:
        return 0
    outputs = math.prod(shapes[-1])
    if "conv2d" in kernel and len(shapes[0]) == 4 and len(shapes[1]) == 4:
        return outputs * math.prod(shapes[1][1:])
    if "matmul" in kernel and shapes[0]:
        return outputs * shapes[0][-1]
    return 0


def record(profile: Profile, model: str, layers: dict[str, dict[str, Any]]) -> Path:
    """Merge ``profile``'s kernels and ``layers`` into the target's latency table."""
    path = table_path(profile.target)
    table = load_table(profile.target)
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    for k in profile.kernels:
        table["entries"][k.signature] = {
            "seconds": k.seconds / k.calls, "source": profile.source, "kernel": k.kernel,
            "macs": k.macs // max(k.calls, 1), "calls": 1, "model": model, "when": when}
    table.setdefault("layers", {}).update(
        {key: {**entry, "model": model, "when": when} for key, entry in layers.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
        json.dump(table, out, indent=1, sort_keys=True)
    os.replace(out.name, path)
    return path


def table_path(target: str) -> Path:
    """Return the path of ``target``'s latency table in hwcomp's cache."""
    return cache_dir() / "latency" / f"{re.sub(r'[^0-9A-Za-z_.-]', '_', target)}.json"


def load_table(target: str) -> dict[str, Any]:
    """Return ``target``'s latency table (empty if there is none yet, or it is unreadable)."""
    path = table_path(target)
    try:
        table = json.loads(path.read_text())
        if table.get("schema") == SCHEMA and isinstance(table.get("entries"), dict):
            return table
    except (OSError, ValueError):
        pass
    return {"schema": SCHEMA, "target": target, "entries": {}}


# --- the measuring worker (a process of its own: the target's threads, no other pool) ---


def _arg_types(args: tuple[Any, ...]) -> list[str]:
    types = []
    for arg in args:
        shape = getattr(arg, "shape", None)
        if shape is not None:
            types.append(f"{arg.dtype}[{'x'.join(str(int(d)) for d in shape)}]")
    return types


def _measure(bundle: Path, runs: int, warmup: int) -> dict[str, Any]:
    import numpy as np
    import tvm
    from tvm import relax

    device = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(bundle / "lib" / "model.so")), device)
    inputs = [tvm.runtime.tensor(np.load(p), device)
              for p in sorted((bundle / "verify").glob("input_*.npy"))]
    for _ in range(warmup):
        vm["main"](*inputs)
    whole = []
    for _ in range(runs):
        started = time.perf_counter()
        vm["main"](*inputs)
        whole.append(time.perf_counter() - started)
    per_run: list[dict[str, float]] = []
    calls: dict[str, int] = defaultdict(int)
    names: dict[str, str] = {}
    state: dict[str, Any] = {}

    def instrument(func: Any, name: str, before_run: bool, ret: Any, *args: Any) -> int:
        if before_run:
            state["start"] = time.perf_counter()
            return 0
        elapsed = time.perf_counter() - state["start"]
        key = "vm" if name.startswith(_VM_BUILTIN) else signature(name, _arg_types(args))
        names.setdefault(key, name)
        state["run"][key] = state["run"].get(key, 0.0) + elapsed
        if len(per_run) == 0:
            calls[key] += 1
        return 0

    vm.set_instrument(instrument)
    for _ in range(runs):
        state["run"] = {}
        vm["main"](*inputs)
        per_run.append(state["run"])
    kernels = [{"kernel": names[key], "signature": key, "calls": count,
                "seconds": statistics.median(run.get(key, 0.0) for run in per_run)}
               for key, count in calls.items() if key != "vm"]
    return {"kernels": sorted(kernels, key=lambda k: -k["seconds"]),
            "overhead_s": statistics.median(run.get("vm", 0.0) for run in per_run),
            "whole_s": statistics.median(whole)}


def main() -> None:
    """``python -m hwcomp.profile BUNDLE``: the worker ``profile_bundle`` starts."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(_measure(args.bundle, args.runs, args.warmup)))


if __name__ == "__main__":
    main()
