"""Errors a user can cause.

Every error a user can provoke (a bad file, an unknown target, an unsupported op, a
dynamic shape without a binding, a failed verification) is a :class:`HwcompError`
subclass whose message names the file, node or field and says what to do. The CLI
prints the message on one line and exits with :attr:`HwcompError.exit_code`, one code per
kind of failure so a script can tell "does not fit the board" from "typo in a flag":

====  =====================================================================================
code  meaning
====  =====================================================================================
0     done (a bundle whose verification passed, or was not run and says why)
1     internal error (a bug in hwcomp: please report it)
2     usage: a flag or its value is wrong (unknown target, bad ratio, --input-shape,
      an existing output without --force)
3     bad input data: the model file, calibration data or labels
4     unsupported model: an op or case hwcomp cannot lower or quantize for this target
5     budget not met: accuracy budget, or flash/RAM of the target
6     verification failed: compiled outputs differ from onnxruntime, or the program failed
7     a toolchain, emulator or runtime library is missing or failed
8     a remote device or tracker is unreachable or did not answer in time
130   interrupted (SIGINT); 143: terminated (SIGTERM); nothing was written
====  =====================================================================================
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_UNSUPPORTED = 4
EXIT_BUDGET = 5
EXIT_VERIFICATION = 6
EXIT_TOOLCHAIN = 7
EXIT_DEVICE = 8
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class HwcompError(Exception):
    """Base class of every error caused by the user's input or environment."""

    exit_code = EXIT_USAGE


class OptionError(HwcompError):
    """A flag's value is invalid (a usage error)."""


class ModelLoadError(HwcompError):
    """The model file is missing, not ONNX, truncated or fails the ONNX checker."""

    exit_code = EXIT_INPUT


class InputShapeError(HwcompError):
    """An input shape is dynamic without a binding, or a binding does not fit."""

    exit_code = EXIT_USAGE  # the --input-shape flag: missing, malformed or not fitting


class UnsupportedOpError(HwcompError):
    """A node cannot be lowered for the chosen target."""

    exit_code = EXIT_UNSUPPORTED


class TargetError(HwcompError):
    """The target profile is unknown or malformed."""


class ToolchainError(HwcompError):
    """A compiler, emulator or runtime library the target needs is missing or failed."""

    exit_code = EXIT_TOOLCHAIN


class LoweringError(HwcompError):
    """TVM failed to import or compile the model."""

    exit_code = EXIT_UNSUPPORTED


class ExecutionError(HwcompError):
    """The compiled model failed while running (on the host, a device or an emulator)."""

    exit_code = EXIT_VERIFICATION


class VerificationError(HwcompError):
    """The compiled model's outputs differ from onnxruntime beyond tolerance."""

    exit_code = EXIT_VERIFICATION


class BudgetError(HwcompError):
    """An accuracy budget cannot be met."""

    exit_code = EXIT_BUDGET


class OutputExistsError(HwcompError):
    """The output path exists and ``--force`` was not given."""


class CalibrationDataError(HwcompError):
    """Calibration or input data is missing, malformed or does not match the model."""

    exit_code = EXIT_INPUT


class MemoryBudgetError(HwcompError):
    """The compiled model does not fit the target's flash or RAM."""

    exit_code = EXIT_BUDGET


def reason_line(exc: BaseException, *, last: bool = False, limit: int = 300) -> str:
    """One line of ``exc``'s message to quote in an error: the first, or the ``last``.

    TVM puts the real reason after a C++ backtrace, so its failures are quoted by their last
    line; other libraries' by their first.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if last else lines[0])[:limit]
