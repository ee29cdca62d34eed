"""Errors a user can cause.

Every error a user can provoke (a bad file, an unknown target, an unsupported op, a
dynamic shape without a binding, a failed verification) is a :class:`HwcompError`
subclass whose message names the file, node or field and says what to do. The CLI
prints the message on one line and exits with :attr:`HwcompError.exit_code`.
"""

from __future__ import annotations


class HwcompError(Exception):
    """Base class of every error caused by the user's input or environment."""

    exit_code = 2


class ModelLoadError(HwcompError):
    """The model file is missing, not ONNX, truncated or fails the ONNX checker."""


class InputShapeError(HwcompError):
    """An input shape is dynamic without a binding, or a binding does not fit."""


class UnsupportedOpError(HwcompError):
    """A node cannot be lowered for the chosen target."""


class TargetError(HwcompError):
    """The target profile is unknown or malformed."""


class ToolchainError(HwcompError):
    """A compiler, emulator or runtime library the target needs is missing or failed."""


class LoweringError(HwcompError):
    """TVM failed to import or compile the model."""


class ExecutionError(HwcompError):
    """The compiled model failed while running (on the host, a device or an emulator)."""


class VerificationError(HwcompError):
    """The compiled model's outputs differ from onnxruntime beyond tolerance."""


class OutputExistsError(HwcompError):
    """The output path exists and ``--force`` was not given."""


class CalibrationDataError(HwcompError):
    """Calibration or input data is missing, malformed or does not match the model."""


class MemoryBudgetError(HwcompError):
    """The compiled model does not fit the target's flash or RAM."""


def reason_line(exc: BaseException, *, last: bool = False, limit: int = 300) -> str:
    """One line of ``exc``'s message to quote in an error: the first, or the ``last``.

    TVM puts the real reason after a C++ backtrace, so its failures are quoted by their last
    line; other libraries' by their first.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if last else lines[0])[:limit]
