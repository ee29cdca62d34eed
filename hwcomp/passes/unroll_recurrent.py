"""Unroll ``LSTM``, ``GRU`` and ``RNN`` over their (static) sequence into plain ops.

TVM's ONNX frontend has no converter for the recurrent ops and the standard gives them no
function body, so a keyword-spotting or speech model ended in "cannot lower". With the
sequence length and batch known (every graph input is bound by the loader), each layer is:

* one ``MatMul`` of the whole input sequence with the input weights, plus both biases (the
  input projection of every step at once: the bulk of the multiplies, on the matmul kernel);
* per step, in time order (reversed for ``direction="reverse"``, both for
  ``"bidirectional"``), the recurrent ``MatMul`` of the previous hidden state, the gates
  sliced out of the sum, and the standard's equations (peepholes, ``clip``, the activation
  list with its alphas and betas, GRU's ``linear_before_reset``);
* ``Y``, ``Y_h`` and ``Y_c`` as the standard lays them out (``layout`` 0 or 1).

The gate orders are the standard's (LSTM ``i o f c``, GRU ``z r h``). Refused, with the node
named: weights computed at run time (``W``, ``R``, ``B``, ``P`` must be constants),
``sequence_lens`` other than the full length for every batch row, ``input_forget``, an
unknown sequence length or batch, an activation the standard does not list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from hwcomp.errors import UnsupportedOpError
from hwcomp.irutil import constant_array, node_input, static_shape
from hwcomp.passes.infra import take_over

logger = logging.getLogger(__name__)

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                        "RNN": ["Tanh"]}
# Activations that are ONNX ops of one input, and the attributes their alpha / beta set.
_ACTIVATION_OPS = {"Sigmoid": (), "Tanh": (), "Relu": (), "Softsign": (), "Softplus": (),
                   "LeakyRelu": ("alpha",), "Elu": ("alpha",), "ThresholdedRelu": ("alpha",),
                   "HardSigmoid": ("alpha", "beta")}
_ACTIVATION_DEFAULTS = {"LeakyRelu": (0.01,), "Elu": (1.0,), "ThresholdedRelu": (1.0,),
                        "HardSigmoid": (0.2, 0.5), "Affine": (1.0, 0.0),
                        "ScaledTanh": (1.0, 1.0)}


class UnrollRecurrentPass(ir.passes.InPlacePass):
    """Replace every ``LSTM``, ``GRU`` and ``RNN`` of the main graph by its unrolled steps."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Unroll the main graph's recurrent nodes."""
        graph = model.graph
        nodes = [node for node in graph
                 if node.op_type in _GATES and node.domain in ("", "ai.onnx")]
        for node in nodes:
            _Unroller(graph, node).run()
        if nodes:
            logger.info("unrolled %d recurrent node(s)", len(nodes))
        return ir.passes.PassResult(model, modified=bool(nodes))


class _Unroller:
    """Builds the unrolled steps of one recurrent node in front of it, then removes it."""

    def __init__(self, graph: ir.Graph, node: ir.Node) -> None:
        self.graph, self.node, self.op = graph, node, node.op_type
        self.name = node.name or node.outputs[0].name or self.op.lower()
        self.new: list[ir.Node] = []
        self.count = 0

    # -- graph building -------------------------------------------------------------------
    def refuse(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"node '{self.node.name}' ({self.op}): {why}; hwcomp unrolls {self.op} over a static "
            "sequence only. Export it without this, or open an issue")

    def emit(self, op: str, inputs: Sequence[ir.Value | None], **attrs: Any) -> ir.Value:
        self.count += 1
        node = ir.node(op, inputs, attributes=attrs, name=f"{self.name}_{op.lower()}{self.count}")
        self.new.append(node)
        return node.outputs[0]

    def const(self, array: np.ndarray | np.generic) -> ir.Value:
        # Not irutil.add_constant: its np.ascontiguousarray makes a 0-d index (Gather's step
        # t, a scalar alpha) 1-d, which changes the gathered shapes.
        array = np.asarray(array)
        self.count += 1
        value = ir.Value(name=f"{self.name}_const{self.count}", shape=ir.Shape(array.shape),
                         type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                         const_value=ir.tensor(array))
        self.graph.register_initializer(value)
        return value

    def slice(self, value: ir.Value, start: int, end: int, axis: int) -> ir.Value:
        return self.emit("Slice", [value, self.const(np.array([start], np.int64)),
                                   self.const(np.array([end], np.int64)),
                                   self.const(np.array([axis], np.int64))])

    # -- the node -------------------------------------------------------------------------
    def weights(self, index: int, required: bool = True) -> np.ndarray | None:
        value = node_input(self.node, index)
        if value is None:
            if required:
                raise self.refuse(f"input {index} is missing")
            return None
        array = constant_array(value)
        if array is None:
            raise self.refuse(f"input '{value.name}' is computed at run time (hwcomp needs the "
                              "weights, biases and peepholes as constants)")
        return np.asarray(array, np.float32)

    def run(self) -> None:
        attrs = self.node.attributes
        hidden = attrs.get_int("hidden_size", 0)
        direction = attrs.get_string("direction", "forward")
        layout = attrs.get_int("layout", 0)
        if attrs.get_int("input_forget", 0):
            raise self.refuse("input_forget=1 is not supported")
        x = node_input(self.node, 0)
        dims = static_shape(x)
        if x is None or dims is None or len(dims) != 3:
            raise self.refuse("the input's shape is not known (bind the inputs with --input-shape)")
        if x.dtype != ir.DataType.FLOAT:
            raise self.refuse(f"its input is {x.dtype}, not float32")
        steps, batch = (dims[1], dims[0]) if layout else (dims[0], dims[1])
        w, r = self.weights(1), self.weights(2)
        assert w is not None and r is not None
        gates = _GATES[self.op]
        hidden = hidden or r.shape[-1]
        directions = 2 if direction == "bidirectional" else 1
        if w.shape[0] != directions or w.shape[1] != gates * hidden:
            raise self.refuse(f"W has shape {list(w.shape)}, not [{directions}, {gates * hidden}, ...]")
        b = self.weights(3, required=False)
        if b is None:
            b = np.zeros((directions, 2 * gates * hidden), np.float32)
        self.check_lengths(steps, batch)
        peephole = self.weights(7, required=False) if self.op == "LSTM" else None
        activations = self.activations(directions)
        clip = attrs.get_float("clip", 0.0) if "clip" in attrs else None
        if layout:
            x = self.emit("Transpose", [x], perm=[1, 0, 2])
        outputs, finals, cells = [], [], []
        for d in range(directions):
            reverse = direction == "reverse" or d == 1
            state = self.initial(5, d, batch, hidden)
            cell = self.initial(6, d, batch, hidden) if self.op == "LSTM" else None
            ys, state, cell = self.direction(
                x, w[d], r[d], b[d], None if peephole is None else peephole[d], state, cell,
                steps, hidden, reverse, activations[d], clip)
            outputs.append(self.emit("Concat", ys, axis=0))       # [T, 1, batch, H]
            finals.append(self.emit("Unsqueeze", [state, self.const(np.array([0], np.int64))]))
            if cell is not None:
                cells.append(self.emit("Unsqueeze", [cell, self.const(np.array([0], np.int64))]))
        y = outputs[0] if directions == 1 else self.emit("Concat", outputs, axis=1)
        y_h = finals[0] if directions == 1 else self.emit("Concat", finals, axis=0)
        y_c = None
        if cells:
            y_c = cells[0] if directions == 1 else self.emit("Concat", cells, axis=0)
        if layout:
            y = self.emit("Transpose", [y], perm=[2, 0, 1, 3])
            y_h = self.emit("Transpose", [y_h], perm=[1, 0, 2])
            if y_c is not None:
                y_c = self.emit("Transpose", [y_c], perm=[1, 0, 2])
        self.graph.insert_before(self.node, self.new)
        for old, new in zip(self.node.outputs, (y, y_h, y_c), strict=False):
            if new is not None and (old.uses() or old.is_graph_output()):
                take_over(old, new)
        self.graph.remove(self.node, safe=True)

    def check_lengths(self, steps: int, batch: int) -> None:
        value = node_input(self.node, 4)
        if value is None:
            return
        lengths = constant_array(value)
        if lengths is None or not np.all(np.asarray(lengths) == steps):
            raise self.refuse("sequence_lens shorter than the sequence (or computed at run time)")

    def initial(self, index: int, direction: int, batch: int, hidden: int) -> ir.Value:
        value = node_input(self.node, index)
        if value is None:
            return self.const(np.zeros((batch, hidden), np.float32))
        # [directions, batch, H], or [batch, directions, H] with layout 1.
        axis = 1 if self.node.attributes.get_int("layout", 0) else 0
        return self.emit("Gather", [value, self.const(np.array(direction, np.int64))], axis=axis)

    def activations(self, directions: int) -> list[list[Callable[[ir.Value], ir.Value]]]:
        attrs = self.node.attributes
        names = list(attrs.get_strings("activations", [])) or (
            _DEFAULT_ACTIVATIONS[self.op] * directions)
        alphas = list(attrs.get_floats("activation_alpha", []))
        betas = list(attrs.get_floats("activation_beta", []))
        per = len(_DEFAULT_ACTIVATIONS[self.op])
        if len(names) != per * directions:
            raise self.refuse(f"{len(names)} activations for {directions} direction(s)")
        funcs = [self.activation(name, alphas[i] if i < len(alphas) else None,
                                 betas[i] if i < len(betas) else None)
                 for i, name in enumerate(names)]
        return [funcs[d * per:(d + 1) * per] for d in range(directions)]

    def activation(self, name: str, alpha: float | None,
                   beta: float | None) -> Callable[[ir.Value], ir.Value]:
        canonical = {n.lower(): n for n in [*_ACTIVATION_OPS, "Affine", "ScaledTanh"]}.get(
            name.lower())
        if canonical is None:
            raise self.refuse(f"activation '{name}' is not one the standard lists")
        defaults = _ACTIVATION_DEFAULTS.get(canonical, ())
        a = alpha if alpha is not None else (defaults[0] if defaults else None)
        b = beta if beta is not None else (defaults[1] if len(defaults) > 1 else None)
        if canonical == "Affine":
            return lambda v: self.emit("Add", [self.emit("Mul", [v, self.const(np.float32(a))]),
                                               self.const(np.float32(b))])
        if canonical == "ScaledTanh":
            return lambda v: self.emit("Mul", [self.emit("Tanh", [self.emit(
                "Mul", [v, self.const(np.float32(b))])]), self.const(np.float32(a))])
        keys = _ACTIVATION_OPS[canonical]
        kwargs = {key: float(value) for key, value in zip(keys, (a, b), strict=False)
                  if value is not None}
        return lambda v: self.emit(canonical, [v], **kwargs)

    # -- one direction ----------------------------------------------------------------------
    def direction(self, x: ir.Value, w: np.ndarray, r: np.ndarray, b: np.ndarray,
                  peephole: np.ndarray | None, state: ir.Value, cell: ir.Value | None,
                  steps: int, hidden: int, reverse: bool,
                  funcs: list[Callable[[ir.Value], ir.Value]], clip: float | None,
                  ) -> tuple[list[ir.Value], ir.Value, ir.Value | None]:
        gates = _GATES[self.op]
        w_bias, r_bias = b[:gates * hidden], b[gates * hidden:]
        bias = w_bias + r_bias
        split_reset = self.op == "GRU" and bool(
            self.node.attributes.get_int("linear_before_reset", 0))
        if self.op == "GRU":
            # The candidate's recurrent bias sits inside the reset product (linear before
            # reset) or after its own MatMul: never in the input projection.
            bias = bias.copy()
            bias[2 * hidden:] = w_bias[2 * hidden:]
        projected = self.emit("Add", [self.emit("MatMul", [x, self.const(w.T.copy())]),
                                      self.const(bias)])            # [T, batch, gates * H]
        r_t = r.T.copy()                                             # [H, gates * H]
        ys: list[ir.Value | None] = [None] * steps
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        unsqueeze = self.const(np.array([0, 1], np.int64))
        for t in order:
            x_t = self.emit("Gather", [projected, self.const(np.array(t, np.int64))], axis=0)
            if self.op == "GRU":
                state = self.gru_step(x_t, state, r_t, r_bias, hidden, funcs, clip, split_reset)
            else:
                summed = self.emit("Add", [x_t, self.emit("MatMul", [state, self.const(r_t)])])
                if self.op == "RNN":
                    state = funcs[0](self.clip(summed, clip))
                else:
                    state, cell = self.lstm_step(summed, cell, peephole, hidden, funcs, clip)
            ys[t] = self.emit("Unsqueeze", [state, unsqueeze])       # [1, 1, batch, H]
        return [y for y in ys if y is not None], state, cell

    def clip(self, value: ir.Value, clip: float | None) -> ir.Value:
        if clip is None:
            return value
        return self.emit("Clip", [value, self.const(np.float32(-clip)),
                                  self.const(np.float32(clip))])

    def lstm_step(self, summed: ir.Value, cell: ir.Value | None, peephole: np.ndarray | None,
                  hidden: int, funcs: list[Callable[[ir.Value], ir.Value]], clip: float | None,
                  ) -> tuple[ir.Value, ir.Value]:
        assert cell is not None
        f, g, h = funcs
        i_pre, o_pre, f_pre, c_pre = (self.slice(summed, k * hidden, (k + 1) * hidden, 1)
                                      for k in range(4))
        if peephole is not None:
            p_i, p_o, p_f = (self.const(peephole[k * hidden:(k + 1) * hidden].copy())
                             for k in range(3))
            i_pre = self.emit("Add", [i_pre, self.emit("Mul", [cell, p_i])])
            f_pre = self.emit("Add", [f_pre, self.emit("Mul", [cell, p_f])])
        i_gate = f(self.clip(i_pre, clip))
        f_gate = f(self.clip(f_pre, clip))
        candidate = g(self.clip(c_pre, clip))
        cell = self.emit("Add", [self.emit("Mul", [f_gate, cell]),
                                 self.emit("Mul", [i_gate, candidate])])
        if peephole is not None:
            o_pre = self.emit("Add", [o_pre, self.emit("Mul", [cell, p_o])])
        o_gate = f(self.clip(o_pre, clip))
        return self.emit("Mul", [o_gate, h(cell)]), cell

    def gru_step(self, x_t: ir.Value, state: ir.Value, r_t: np.ndarray, r_bias: np.ndarray,
                 hidden: int, funcs: list[Callable[[ir.Value], ir.Value]], clip: float | None,
                 linear_before_reset: bool) -> ir.Value:
        f, g = funcs
        x_zr = self.slice(x_t, 0, 2 * hidden, 1)
        x_h = self.slice(x_t, 2 * hidden, 3 * hidden, 1)
        zr = self.emit("Add", [x_zr, self.emit("MatMul", [state, self.const(
            r_t[:, :2 * hidden].copy())])])
        z_gate = f(self.clip(self.slice(zr, 0, hidden, 1), clip))
        r_gate = f(self.clip(self.slice(zr, hidden, 2 * hidden, 1), clip))
        r_h, b_h = self.const(r_t[:, 2 * hidden:].copy()), self.const(r_bias[2 * hidden:].copy())
        if linear_before_reset:
            recurrent = self.emit("Mul", [r_gate, self.emit("Add", [
                self.emit("MatMul", [state, r_h]), b_h])])
        else:
            recurrent = self.emit("Add", [self.emit("MatMul", [
                self.emit("Mul", [r_gate, state]), r_h]), b_h])
        candidate = g(self.clip(self.emit("Add", [x_h, recurrent]), clip))
        # H = (1 - z) * h + z * H_prev = h + z * (H_prev - h)
        return self.emit("Add", [candidate, self.emit("Mul", [
            z_gate, self.emit("Sub", [state, candidate])])])
