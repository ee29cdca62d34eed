"""hwcomp: a hardware-aware deployment compiler for ONNX models.

The public Python API lives in :mod:`hwcomp.api`; the command line in :mod:`hwcomp.cli`.
"""

__version__ = "0.1.0"
