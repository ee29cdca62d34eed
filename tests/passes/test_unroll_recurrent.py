"""LSTM, GRU and RNN unrolled into plain ops, against onnxruntime on seeded inputs.

Every attribute case the standard gives a meaning for and hwcomp supports: directions
(forward, reverse, bidirectional), layout 0 and 1 (layout 1 against onnx's reference
evaluator: onnxruntime refuses it), biases absent or present, initial states,
peepholes, clip, activation lists with alphas, GRU's linear_before_reset, all three outputs;
and the cases it refuses, each naming the node.
"""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from hwcomp.errors import UnsupportedOpError
from hwcomp.passes import UnrollRecurrentPass
from tests.helpers import make_model, op_types, run_ort, to_ir

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(op, steps=5, batch=2, size=3, hidden=4, direction="forward", layout=0,
           bias=True, initial=False, peephole=False, lengths=None, **attrs):
    rng = np.random.default_rng(steps * 7 + hidden)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    inits = [numpy_helper.from_array(rng.standard_normal((dirs, gates * hidden, size))
                                     .astype(np.float32) * 0.5, "W"),
             numpy_helper.from_array(rng.standard_normal((dirs, gates * hidden, hidden))
                                     .astype(np.float32) * 0.5, "R")]
    inputs = ["x", "W", "R", "", "", "", "", ""]
    if bias:
        inits.append(numpy_helper.from_array(
            rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32) * 0.3, "B"))
        inputs[3] = "B"
    if lengths is not None:
        inits.append(numpy_helper.from_array(np.array(lengths, np.int32), "L"))
        inputs[4] = "L"
    graph_inputs = [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [batch, steps, size] if layout else [steps, batch, size])]
    state_shape = [batch, dirs, hidden] if layout else [dirs, batch, hidden]
    if initial:
        graph_inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, state_shape))
        inputs[5] = "h0"
        if op == "LSTM":
            graph_inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT,
                                                              state_shape))
            inputs[6] = "c0"
    if peephole:
        inits.append(numpy_helper.from_array(
            rng.standard_normal((dirs, 3 * hidden)).astype(np.float32) * 0.3, "P"))
        inputs[7] = "P"
    while inputs and not inputs[-1]:
        inputs.pop()
    outputs = ["y", "y_h"] + (["y_c"] if op == "LSTM" else [])
    if layout:
        attrs["layout"] = layout
    node = helper.make_node(op, inputs, outputs, name="rec", hidden_size=hidden,
                            direction=direction, **attrs)
    seq_out = [batch, steps, dirs, hidden] if layout else [steps, dirs, batch, hidden]
    graph_outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, seq_out)] + [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape)
        for name in outputs[1:]]
    return make_model([node], graph_inputs, graph_outputs, inits, opset=14 if layout else 13)


def _check(model):
    rng = np.random.default_rng(1)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    batchwise = any(a.name == "layout" and a.i for a in model.graph.node[0].attribute)
    # onnxruntime runs no layout=1 recurrent op: the standard's reference implementation does.
    want = ReferenceEvaluator(model).run(None, feeds) if batchwise else run_ort(model, feeds)
    result = UnrollRecurrentPass()(to_ir(model))
    assert result.modified
    types = op_types(result.model)
    assert not {"LSTM", "GRU", "RNN"} & set(types), types
    got = run_ort(result.model, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_directions_match_onnxruntime(op, direction):
    _check(_model(op, direction=direction))


@pytest.mark.parametrize("case", [
    dict(op="LSTM", layout=1, initial=True),
    dict(op="LSTM", peephole=True, initial=True, direction="bidirectional"),
    dict(op="LSTM", bias=False, clip=0.7),
    dict(op="LSTM", lengths=[5, 5]),                       # full lengths: nothing to mask
    dict(op="LSTM", activations=["HardSigmoid", "LeakyRelu", "Tanh"],
         activation_alpha=[0.3, 0.2, 1.0], activation_beta=[0.4, 0.0, 0.0]),
    dict(op="GRU", linear_before_reset=1, initial=True),
    dict(op="GRU", layout=1, direction="bidirectional", initial=True),
    dict(op="RNN", activations=["Relu"], initial=True, steps=1),
])
def test_attribute_cases_match_onnxruntime(case):
    _check(_model(**case))


@pytest.mark.parametrize("case,why", [
    (dict(op="LSTM", lengths=[5, 3]), "sequence_lens"),
    (dict(op="LSTM", input_forget=1), "input_forget"),
])
def test_refusals_name_the_node(case, why):
    with pytest.raises(UnsupportedOpError, match=f"node 'rec' \\(LSTM\\).*{why}"):
        UnrollRecurrentPass()(to_ir(_model(**case)))
