"""Verification: compiled outputs against onnxruntime on the original model.

Float outputs pass when ``max|compiled - reference| <= tolerance * max(1, max|reference|)``
(an error relative to the output's scale, robust to outputs near zero); integer and bool
outputs must match exactly. NaNs must sit at the same places in both.
"""

from __future__ import annotations

import functools
import logging
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from hwcomp.errors import ModelLoadError
from hwcomp.ort_session import open_session
from hwcomp.targets import cpu_flags

logger = logging.getLogger(__name__)

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"


@dataclass(frozen=True)
class OutputCheck:
    """Comparison of one output."""

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    reference_max_abs: float
    passed: bool


@dataclass(frozen=True)
class Verification:
    """The verdict of one build's verification."""

    status: str
    tolerance: float
    inputs: str
    reason: str = ""
    outputs: list[OutputCheck] = field(default_factory=list)
    # Other runs of the same inputs (e.g. "host build"), each compared the same way.
    runs: dict[str, list[OutputCheck]] = field(default_factory=dict)
    ran_on: str = ""  # where ``outputs`` came from (runner's line, board, device, host build)

    def with_run(self, label: str, other: Verification) -> Verification:
        """Return the verdict with ``other`` (another run of the same inputs) folded in."""
        failed = other.status == FAILED
        reasons = [r for r in (self.reason, f"{label}: {other.reason}" if failed else "") if r]
        return Verification(
            status=FAILED if failed else self.status, tolerance=self.tolerance,
            inputs=self.inputs, reason="; ".join(reasons), outputs=self.outputs,
            runs={**self.runs, label: other.outputs}, ran_on=self.ran_on,
        )

    def to_dict(self) -> dict:
        """JSON-ready form for the manifest."""
        return asdict(self)


@functools.cache
def integer_kernels_exact() -> bool:
    """Whether onnxruntime's int8 kernels compute exact int32 sums on this CPU.

    On x86 only with VNNI (``vpdpbusd``); on other architectures its kernels widen exactly.
    A fact of the machine, read once (every onnxruntime run of a QDQ model asks).
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def run_onnxruntime(
    proto: onnx.ModelProto | ir.Model, inputs: Mapping[str, np.ndarray], threads: int = 0
) -> list[np.ndarray]:
    """Run ``proto`` on CPU with onnxruntime and return its outputs in graph order.

    A quantized (QDQ) model runs on onnxruntime's integer kernels where they are exact, and
    as written (dequantize, float op, quantize) on an x86 CPU without VNNI: there its u8 x s8
    kernels multiply with ``vpmaddubsw``, whose int16 pair sums saturate, and a reference
    off by whole quantization steps would fail correct builds (or pass wrong ones).
    """
    return run_onnxruntime_batches(proto, [inputs], threads)[0]


def first_outputs(proto: onnx.ModelProto | ir.Model,
                  batches: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """Return the model's first output for each batch, from one onnxruntime session."""
    return [outputs[0] for outputs in run_onnxruntime_batches(proto, batches)]


def run_onnxruntime_batches(
    proto: onnx.ModelProto | ir.Model, batches: Sequence[Mapping[str, np.ndarray]],
    threads: int = 0,
) -> list[list[np.ndarray]]:
    """Run ``proto`` on every batch in one session; ``result[batch][output]``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 4  # errors come back as exceptions
    nodes = proto.graph.node if isinstance(proto, onnx.ModelProto) else proto.graph
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in nodes) \
            and not integer_kernels_exact():
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        session = open_session(proto, options)
        return [[np.asarray(a) for a in session.run(None, dict(inputs))] for inputs in batches]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelLoadError(
            f"onnxruntime cannot run the model, so it cannot be verified: "
            f"{str(exc).strip().splitlines()[-1][:300]}"
        ) from None


def compare_outputs(
    names: list[str],
    reference: list[np.ndarray],
    actual: list[np.ndarray],
    tolerance: float,
    inputs: str,
) -> Verification:
    """Compare outputs pairwise and return the verdict."""
    if len(reference) != len(actual):
        return Verification(
            status=FAILED, tolerance=tolerance, inputs=inputs,
            reason=f"the compiled model returned {len(actual)} outputs, onnxruntime {len(reference)}",
        )
    checks = [
        _check_one(name, ref, got, tolerance)
        for name, ref, got in zip(names, reference, actual, strict=True)
    ]
    failed = [c.name for c in checks if not c.passed]
    reason = f"outputs beyond tolerance: {', '.join(failed)}" if failed else ""
    return Verification(
        status=FAILED if failed else PASSED, tolerance=tolerance, inputs=inputs, reason=reason,
        outputs=checks,
    )


def _check_one(name: str, ref: np.ndarray, got: np.ndarray, tolerance: float) -> OutputCheck:
    ref = np.asarray(ref)
    got = np.asarray(got)
    if ref.shape != got.shape:
        return OutputCheck(name, tuple(got.shape), float("inf"), float("inf"), 0.0, False)
    if ref.size == 0:
        return OutputCheck(name, tuple(ref.shape), 0.0, 0.0, 0.0, True)
    if ref.dtype.kind not in "fc":
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        max_abs = float(diff.max())
        return OutputCheck(name, tuple(ref.shape), max_abs, max_abs, float(np.abs(ref).max()),
                           max_abs == 0.0)
    ref64 = ref.astype(np.float64)
    got64 = got.astype(np.float64)
    nan_ref, nan_got = np.isnan(ref64), np.isnan(got64)
    same_nans = bool(np.array_equal(nan_ref, nan_got))
    finite = ~nan_ref & ~nan_got & np.isfinite(ref64)
    inf_match = bool(np.array_equal(ref64[np.isinf(ref64)], got64[np.isinf(ref64)]))
    diff = np.abs(ref64[finite] - got64[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref64[finite]).max()) if diff.size else 0.0
    max_rel = max_abs / max(1.0, scale)
    passed = same_nans and inf_match and max_rel <= tolerance
    return OutputCheck(name, tuple(ref.shape), max_abs, max_rel, scale, passed)
