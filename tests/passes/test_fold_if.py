"""FoldIfPass: an If whose condition folds to a constant becomes the branch it takes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.lower.frontend.legalize import legalize_for_tvm
from hwcomp.model import bind_input_shapes, infer_shapes
from tests.conftest import run_cli
from tests.helpers import op_types, run_ort, to_ir
from tests.test_cli import _assert_clean_error


def _branch(name: str, nodes, output: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [],
                             [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)])


def _shape_if_model(then_nodes, then_out, else_nodes, else_out, output="y") -> onnx.ModelProto:
    """``y = If(x.shape[0] > 1, then, else) * 2`` (or the If's output itself as ``y``)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Greater", ["n", "one"], ["c"]),
             helper.make_node("If", ["c"], ["y0" if output == "y" else output], name="branch",
                              then_branch=_branch("then", then_nodes, then_out),
                              else_branch=_branch("else", else_nodes, else_out))]
    if output == "y":
        nodes.append(helper.make_node("Mul", ["y0", "two"], ["y"]))
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    graph = helper.make_graph(
        nodes, "if_model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def _legal(proto: onnx.ModelProto, rows: int):
    model = to_ir(proto)
    bind_input_shapes(model, {"x": (rows, 4)}, "m.onnx")
    legal, steps = legalize_for_tvm(infer_shapes(model))
    return legal, {s.name for s in steps if s.modified}


@pytest.mark.parametrize("rows", [1, 3])
def test_the_branch_taken_replaces_the_if(rows):
    proto = _shape_if_model([helper.make_node("Relu", ["x"], ["t"])], "t",
                            [helper.make_node("Neg", ["x"], ["e"])], "e")
    legal, modified = _legal(proto, rows)
    assert "fold-if" in modified and "If" not in op_types(legal)
    assert ("Relu" in op_types(legal)) == (rows > 1) and ("Neg" in op_types(legal)) == (rows == 1)
    x = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(legal, {"x": x})[0], run_ort(proto, {"x": x})[0])


def test_a_nested_constant_if_folds_and_the_graph_output_keeps_its_name():
    inner = _branch("inner_then", [helper.make_node("Abs", ["x"], ["a"])], "a")
    nested = helper.make_node("If", ["always"], ["t"], then_branch=inner,
                              else_branch=_branch("inner_else", [
                                  helper.make_node("Identity", ["x"], ["i"])], "i"))
    proto = _shape_if_model([helper.make_node("Constant", [], ["always"],
                                              value=numpy_helper.from_array(np.array(True))),
                             nested], "t", [helper.make_node("Identity", ["x"], ["e"])], "e",
                            output="out")
    for rows in (1, 3):
        legal, _ = _legal(proto, rows)
        assert "If" not in op_types(legal)
        assert [o.name for o in legal.graph.outputs] == ["out"]
        x = np.random.default_rng(0).standard_normal((rows, 4)).astype(np.float32)
        np.testing.assert_array_equal(run_ort(legal, {"x": x})[0], run_ort(proto, {"x": x})[0])


def test_build_folds_a_shape_if_and_refuses_a_data_dependent_one(tmp_path):
    proto = _shape_if_model([helper.make_node("Relu", ["x"], ["t"])], "t",
                            [helper.make_node("Neg", ["x"], ["e"])], "e")
    onnx.save(proto, tmp_path / "shape_if.onnx")
    proc = run_cli("build", str(tmp_path / "shape_if.onnx"), "-t", "host", "-o",
                   str(tmp_path / "out"), "--input-shape", "x=3x4")
    assert proc.returncode == 0, proc.stderr
    assert "verification: passed" in proc.stdout
    data_if = onnx.ModelProto()
    data_if.CopyFrom(proto)
    graph = data_if.graph
    del graph.node[:3]
    graph.node.insert(0, helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0))
    graph.node.insert(1, helper.make_node("Greater", ["total", "zero_f"], ["c"]))
    graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"))
    onnx.save(data_if, tmp_path / "data_if.onnx")
    proc = run_cli("build", str(tmp_path / "data_if.onnx"), "-t", "host", "-o",
                   str(tmp_path / "out2"), "--input-shape", "x=3x4")
    _assert_clean_error(proc, "node 'branch' (op If)", "depends on the input data", code=4)
