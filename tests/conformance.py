"""ONNX backend node tests driven through hwcomp's load + legalise + lower + run path.

``onnx.backend.test.loader.load_node_model_tests()`` generates the ~1,900 node tests in
seconds (the wheel ships no data/node folder). Each case is run by onnxruntime and by
hwcomp (legalisation, TVM Relax import, build for the host CPU, execution) and compared
with the expected outputs at the case's own rtol/atol.

Cases run in worker subprocesses so a crash or a hang in TVM is recorded as such, not
fatal: each worker reports ``START`` before a case and a JSON result after it.

Run standalone: ``python tests/conformance.py [--common] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

# The common inference ops of the build issue: every node test onnxruntime passes for
# these must pass through hwcomp, or fail with a clear HwcompError.
COMMON_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip",
    "Sigmoid", "Tanh", "HardSwish", "Gelu", "Softmax", "Add", "Mul", "Sub", "Div", "MaxPool",
    "AveragePool", "GlobalAveragePool", "Concat", "Split", "Slice", "Reshape", "Transpose",
    "Flatten", "Squeeze", "Unsqueeze", "Pad", "Resize", "ReduceMean", "LayerNormalization",
})

# Operands that deployed models carry as initializers (shapes, axes, pads, scales, bounds).
# The node tests feed them as graph inputs; the harness binds them to their test values,
# as a user would with an initializer. Positions are input indices.
PARAMETER_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,), "Tile": (1,), "Pad": (1, 2, 3),
    "Resize": (1, 2, 3), "Upsample": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
    "TopK": (1,), "ConstantOfShape": (0,), "OneHot": (1, 2), "Clip": (1, 2), "Range": (0, 1, 2),
    "Trilu": (1,), "CumSum": (1,), "CenterCropPad": (1,), "ReduceMean": (1,),
    "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,), "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2),
    "NonMaxSuppression": (2, 3, 4), "Compress": (1,),
    # Recurrent weights, biases, sequence lengths and peepholes (hwcomp unrolls these ops).
    "LSTM": (1, 2, 3, 4, 7), "GRU": (1, 2, 3, 4), "RNN": (1, 2, 3, 4),
}

CASE_TIMEOUT_S = 120


def op_of(name: str, ops: dict[str, str]) -> str:
    """The op a node test is about, from its name (longest matching op name wins)."""
    key = name.removeprefix("test_").replace("_", "").lower()
    best = ""
    for lower in ops:
        if key.startswith(lower) and len(lower) > len(best):
            best = lower
    return ops.get(best, "?")


def all_op_names() -> dict[str, str]:
    import onnx.defs

    return {s.name.lower(): s.name for s in onnx.defs.get_all_schemas_with_history()
            if s.domain in ("", "ai.onnx")}


def load_cases() -> dict:
    from onnx.backend.test.loader import load_node_model_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {case.name: case for case in load_node_model_tests()}


def _array(value):
    """Test data holds numpy arrays, TensorProtos (float8, ...) or lists (sequences)."""
    import onnx
    from onnx import numpy_helper

    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [_array(v) for v in value]
    return value


def _matches(expected: list, actual: list, rtol: float, atol: float) -> bool:
    if len(expected) != len(actual):
        return False
    for ref, got in zip(expected, actual, strict=True):
        if isinstance(ref, list) or isinstance(got, list):
            if not (isinstance(ref, list) and isinstance(got, list)
                    and _matches(ref, got, rtol, atol)):
                return False
            continue
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            return False
        if ref.dtype.kind in "fc":
            if not np.allclose(ref.astype(np.float64), got.astype(np.float64), rtol=rtol,
                               atol=atol, equal_nan=True):
                return False
        elif not np.array_equal(ref, got):
            return False
    return True


def _run_ort(case, inputs: list, outputs: list) -> str:
    import onnxruntime as ort

    model = case.model
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, dict(zip(names, inputs, strict=False)))
        return "pass" if _matches(outputs, got, case.rtol, case.atol) else "mismatch"
    except Exception:  # noqa: BLE001 - onnxruntime rejects the model or its data
        return "error"


def _run_hwcomp(case, inputs: list, outputs: list, frontend_only: bool = False) -> tuple[str, str]:
    import onnx_ir as ir
    import tvm
    from tvm import relax

    from hwcomp.errors import ExecutionError, HwcompError
    from hwcomp.lower.frontend.legalize import legalize_for_tvm
    from hwcomp.lower.frontend.relax_import import check_supported, import_relax
    from hwcomp.lower.library.base import compile_relax
    from hwcomp.model import check_tensor_interface, infer_shapes, to_proto
    from hwcomp.targets import load_target

    proto = case.model
    graph_inputs = [i.name for i in proto.graph.input
                    if i.name not in {t.name for t in proto.graph.initializer}]
    feeds = dict(zip(graph_inputs, inputs, strict=False))
    bind = {}
    for node in proto.graph.node:
        for index in PARAMETER_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] in feeds:
                bind[node.input[index]] = feeds[node.input[index]]
    try:
        check_tensor_interface(proto, case.name)
        model = infer_shapes(ir.serde.deserialize_model(proto), case.name)
        if frontend_only:
            # Baseline: TVM's frontend with the parameter inputs bound, nothing else.
            from hwcomp.passes import BindInputsPass

            legal = BindInputsPass(bind)(model).model
        else:
            legal, _ = legalize_for_tvm(model, bind)
        legal_proto = to_proto(legal)
        if not frontend_only:
            check_supported(legal_proto)
        mod = import_relax(legal_proto)
        executable = compile_relax(mod, load_target("host"))
        remaining = [n for n in graph_inputs if n not in bind]
        try:
            # The in-process stand-in for the bundle runner; its failures are what the
            # runner reports as ExecutionError.
            vm = relax.VirtualMachine(executable, tvm.cpu())
            args = [tvm.runtime.tensor(np.require(feeds[n], requirements="C")) for n in remaining]
            result = vm["main"](*args)
        except Exception as exc:  # noqa: BLE001
            raise ExecutionError(f"the compiled model failed when run: {exc}") from None
    except HwcompError as exc:
        return "hwcomp-error", f"{type(exc).__name__}: {exc}"[:300]
    except Exception as exc:  # noqa: BLE001 - anything else is a crash of hwcomp's path
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        return "crash", f"{type(exc).__name__}: {last}"[:300]
    actual = _flatten(result)
    with contextlib.suppress(ValueError, TypeError):
        if _matches(outputs, actual, case.rtol, case.atol):
            return "pass", ""
    return "mismatch", "outputs differ from the expected values"


def _flatten(result) -> list:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    if isinstance(result, (int, float, bool, np.generic)):
        return [np.asarray(result)]
    return [a for item in result for a in _flatten(item)]


def run_case(case, ops: dict[str, str], frontend_only: bool = False) -> dict:
    inputs, outputs = ([_array(v) for v in values] for values in case.data_sets[0])
    started = time.perf_counter()
    ort_status = _run_ort(case, inputs, outputs)
    status, detail = _run_hwcomp(case, inputs, outputs, frontend_only)
    return {"name": case.name, "op": op_of(case.name, ops), "ort": ort_status,
            "hwcomp": status, "detail": detail, "seconds": round(time.perf_counter() - started, 2)}


def _worker(names: list[str]) -> None:
    frontend_only = os.environ.get("HWCOMP_CONFORMANCE_FRONTEND_ONLY") == "1"
    """Run the named cases, one JSON line each, preceded by a START line."""
    import logging

    logging.disable(logging.CRITICAL)
    cases = load_cases()
    ops = all_op_names()
    for name in names:
        print(f"START {name}", flush=True)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            result = run_case(cases[name], ops, frontend_only)
        print("RESULT " + json.dumps(result), flush=True)


def run_suite(names: list[str], workers: int = 2, timeout: float = CASE_TIMEOUT_S,
              progress: bool = False) -> list[dict]:
    """Run ``names`` in ``workers`` subprocesses; crashes and hangs become results."""
    chunks = [names[i::workers] for i in range(workers)]
    results: list[dict] = []
    running = [_Worker(chunk) for chunk in chunks if chunk]
    ops = all_op_names()
    shown = -1
    while running:
        for worker in list(running):
            results.extend(worker.poll(timeout, ops))
            if worker.done:
                running.remove(worker)
        if progress and len(results) // 50 != shown:
            shown = len(results) // 50
            print(f"{len(results)}/{len(names)} cases", file=sys.stderr, flush=True)
        time.sleep(0.05)
    return results


class _Worker:
    def __init__(self, names: list[str]) -> None:
        self.pending = list(names)
        self.done = False
        self.current: str | None = None
        self.started = 0.0
        self._spawn()

    def _spawn(self) -> None:
        env = dict(os.environ, TVM_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", *self.pending], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=env, cwd=Path(__file__).parent.parent,
        )
        self.started = time.monotonic()
        self.current = None

    def poll(self, timeout: float, ops: dict[str, str]) -> list[dict]:
        results = []
        while select.select([self.proc.stdout], [], [], 0)[0]:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("START "):
                self.current = line[6:].strip()
                self.started = time.monotonic()
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
                results.append(result)
                self.pending.remove(result["name"])
                self.current = None
        hung = self.current is not None and time.monotonic() - self.started > timeout
        if hung:
            self.proc.kill()
        if self.proc.poll() is not None or hung:
            if self.current is not None:
                status = "hang" if hung else f"crash (exit {self.proc.returncode})"
                results.append({"name": self.current, "op": op_of(self.current, ops),
                                "ort": "?", "hwcomp": status.split()[0], "detail": status,
                                "seconds": round(time.monotonic() - self.started, 2)})
                self.pending.remove(self.current)
            if self.pending and self.proc.poll() is not None:
                self._spawn()
            elif not self.pending:
                self.done = True
        return results


def summarize(results: list[dict]) -> dict:
    ort_pass = [r for r in results if r["ort"] == "pass"]
    return {
        "cases": len(results),
        "onnxruntime_pass": len(ort_pass),
        "hwcomp_pass": sum(r["hwcomp"] == "pass" for r in results),
        "hwcomp_pass_where_ort_passes": sum(r["hwcomp"] == "pass" for r in ort_pass),
        "hwcomp_outcomes": dict(Counter(r["hwcomp"] for r in results)),
        "errors_naming_the_op": sum(r["hwcomp"] == "hwcomp-error" and r["op"] in r["detail"]
                                    for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", nargs="*")
    parser.add_argument("--common", action="store_true", help="only the common inference ops")
    parser.add_argument("--ops", default=None,
                        help="only the cases of these ops (comma-separated, e.g. LSTM,GRU)")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frontend-only", action="store_true",
                        help="baseline: TVM's frontend with parameter inputs bound, no legalisation")
    args = parser.parse_args()
    if args.worker is not None:
        _worker(args.worker)
        return
    if args.frontend_only:
        os.environ["HWCOMP_CONFORMANCE_FRONTEND_ONLY"] = "1"
    cases = load_cases()
    ops = all_op_names()
    names = sorted(cases)
    if args.common:
        names = [n for n in names if op_of(n, ops) in COMMON_OPS]
    if args.ops:
        wanted = set(args.ops.split(","))
        names = [n for n in names if op_of(n, ops) in wanted]
    results = run_suite(names, workers=args.workers, progress=True)
    summary = summarize(results)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "results": results}, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
