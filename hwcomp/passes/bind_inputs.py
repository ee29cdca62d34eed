"""Turn chosen graph inputs into constants.

Some inputs are parameters in disguise: a Reshape's target shape, a Resize's scales, a
Clip's bounds, or an input that an old exporter declared alongside its initializer. TVM
needs them constant; binding them to values lets :class:`FoldConstantsPass` and the
frontend treat them as such.

Cases handled:
    1. An input named in ``values``: it becomes an initializer holding that value.
    2. An input that also has an initializer (IR < 4 style): it becomes that initializer
       alone, because a deployed model never overrides it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from hwcomp.errors import InputShapeError

logger = logging.getLogger(__name__)


class BindInputsPass(ir.passes.InPlacePass):
    """Replace graph inputs by initializers with the given values.

    Args:
        values: Input name to the array it is fixed to.

    """

    def __init__(self, values: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.values = dict(values or {})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Bind the named inputs and inputs shadowed by initializers."""
        graph = model.graph
        names = {v.name or "" for v in graph.inputs}
        unknown = sorted(set(self.values) - names)
        if unknown:
            raise InputShapeError(
                f"cannot bind {', '.join(unknown)}: the model's inputs are {', '.join(sorted(names))}"
            )
        bound = []
        for value in list(graph.inputs):
            if value.name in self.values:
                # Case 1
                array = np.asarray(self.values[value.name])
                value.const_value = ir.tensor(array, name=value.name)
                value.shape = ir.Shape(array.shape)
                graph.register_initializer(value)
            elif value.name not in graph.initializers:
                continue
            # Case 2 (and the end of case 1): the input is now only an initializer.
            graph.inputs.remove(value)
            bound.append(value.name)
        if bound:
            logger.info("bound %d input(s) to constants: %s", len(bound), bound)
        return ir.passes.PassResult(model, modified=bool(bound))
