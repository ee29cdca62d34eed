"""What ``hwcomp build`` and a family's lowering hand each other."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwcomp.lower.kernel_spec import KernelRewrite
from hwcomp.model import TensorSpec


def model_id(model_name: str) -> str:
    """``model_name`` as a C / CMake identifier: a bundle's targets and symbols carry it."""
    safe = re.sub(r"[^0-9a-zA-Z_]", "_", model_name).strip("_").lower() or "model"
    return f"m{safe}" if safe[0].isdigit() else safe


# Elementwise ops TVM's FuseOps runs in the kernel of the conv / matmul before them.
TVM_EPILOGUE_OPS = frozenset({
    "BatchNormalization", "Relu", "Clip", "Add", "Sub", "Mul", "Div", "Sigmoid", "HardSigmoid",
    "HardSwish", "LeakyRelu", "PRelu", "Tanh", "Elu", "Selu", "Softplus", "Gelu", "Erf",
    "QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class BundleInfo:
    """The model's name and interface, and the verification example (inputs + expected)."""

    model_file: str
    model_name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    example_inputs: list[np.ndarray]
    example_outputs: list[np.ndarray]
    tolerance: float
    model_sha256: str = ""  # of the input model file, for the bundle's API header
    macs: int = 0  # the compiled model's multiply-adds per inference (the report struct's)
    # Multiply-adds of the kernels that compute a conv / matmul layer, by kernel name.
    kernel_macs: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """The Relax module a family compiles (and tunes), and what its kernel rewrite did.

    Attributes:
        module: The Relax ``IRModule`` with hwcomp's kernels in place.
        kernels: The rewrite's summary; None where the family has no kernel rewrite.

    """

    module: Any
    kernels: KernelRewrite | None


@dataclass(frozen=True)
class Compiled:
    """A family's compiled artifact and how many functions a tuning database scheduled.

    Attributes:
        executable: What the family's ``package`` writes (a TVM executable, an AOT program).
        tuned_functions: Functions scheduled from tuning records; None when no database
            was applied.
        unscheduled_kernels: hwcomp kernels its schedule rule could not tile (they ran on
            the generic schedule), each with why.

    """

    executable: Any
    tuned_functions: int | None = None
    unscheduled_kernels: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunnerResult:
    """Outputs of a bundle run for verification, and the timing line its runner printed."""

    outputs: list[np.ndarray]
    timing: str
    # Further runs of the same inputs to check too (e.g. the host build next to the board's).
    also: dict[str, list[np.ndarray]] = field(default_factory=dict)
    # Where the runner counts them: the run's kernel calls in order, each (kernel name,
    # instructions), and how they were counted.
    step_counts: list[tuple[str, int]] = field(default_factory=list)
    counted_by: str = ""


def layer_count_record(result: RunnerResult, kernel_macs: dict[str, int],
                       kernel_args: dict[str, list[str]]) -> dict[str, Any]:
    """Return the manifest's ``layer_counts``: each kernel call's instructions and MACs.

    ``kernel_macs`` (the family's kernel rewrite) holds the multiply-adds of kernels that
    compute a conv / matmul layer, ``kernel_args`` each kernel's argument types
    (``uint8[1x64x25x5]``, the latency table's signatures).
    """
    steps = []
    for index, (kernel, instructions) in enumerate(result.step_counts):
        macs = kernel_macs.get(kernel, 0)
        steps.append({"step": index, "kernel": kernel, "args": kernel_args.get(kernel, []),
                      "instructions": instructions, "macs": macs,
                      "macs_per_instruction": round(macs / instructions, 4)
                      if macs and instructions else None})
    total = sum(instructions for _, instructions in result.step_counts)
    macs = sum(kernel_macs.get(kernel, 0) for kernel, _ in result.step_counts)
    return {"counted_by": result.counted_by, "unit": "instructions executed (not cycles)",
            "kernel_instructions": total, "macs": macs,
            "macs_per_instruction": round(macs / total, 4) if total else None, "steps": steps}


def flatten_outputs(result: Any) -> list[np.ndarray]:
    """Return a Relax VM's result (a tensor, or nested tuples of them) as numpy arrays."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [array for item in result for array in flatten_outputs(item)]
