"""What ``hwcomp build`` hands a lowering when it packages a bundle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwcomp.model import TensorSpec


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
