import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwcomp.lower.frontend.legalize import legalize_for_tvm
from tests import model_zoo
from tests.helpers import make_model, op_types, run_ort, to_ir


def test_every_step_is_logged_in_order():
    _, log = legalize_for_tvm(to_ir(model_zoo.resnet_like()))
    names = [step.name for step in log]
    assert names[0] == "bind-inputs" and names[-1] == "toposort"
    assert {"expand-functions", "fold-constants", "resize-to-matmul", "remove-unused"} <= set(names)
    # resnet_like's batch norms fold into its convs; nothing else has work to do.
    modified = {step.name for step in log if step.modified}
    assert "fold-batchnorm" in modified and modified <= {"fold-batchnorm", "toposort"}


def test_exporter_style_graph_is_cleaned_up():
    # Identity, a Constant node, a Shape chain and a function op (Mish) in one graph.
    shape_const = helper.make_node("Constant", [], ["minus_one"],
                                   value=numpy_helper.from_array(np.array([-1], np.int64)))
    model = make_model(
        [shape_const,
         helper.make_node("Identity", ["x"], ["x_id"]),
         helper.make_node("Shape", ["x_id"], ["s"], start=0, end=1),
         helper.make_node("Concat", ["s", "minus_one"], ["target"], axis=0),
         helper.make_node("Reshape", ["x_id", "target"], ["flat"]),
         helper.make_node("Mish", ["flat"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 12])])
    legal, log = legalize_for_tvm(to_ir(model))
    ops = op_types(legal)
    assert "Identity" not in ops and "Shape" not in ops and "Constant" not in ops
    assert "Reshape" in ops
    modified = {step.name for step in log if step.modified}
    assert {"fold-constants", "drop-identities"} <= modified
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(legal, {"x": x})[0], run_ort(model, {"x": x})[0],
                               rtol=1e-6, atol=1e-6)
    assert isinstance(model, onnx.ModelProto)
