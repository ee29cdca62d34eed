"""The public benchmark suite's models are built in code (no torch) with real statistics."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench import public_suite


def test_the_suite_covers_the_issue_classes_with_sixteen_models():
    assert len(public_suite.SUITE) >= 15
    ops = {}
    for name in ("shufflenet_v2", "regnet_x_400mf", "wav2vec2_frontend", "deeplab_aspp",
                 "unet_decoder", "mobilenet_v3_small", "gpt_small_decoder"):
        ops[name] = {(n.op_type, tuple(a.name for a in n.attribute))
                     for n in public_suite.SUITE[name][1]().graph.node}
    assert any(op == "Transpose" for op, _ in ops["shufflenet_v2"])  # channel shuffle
    assert any(op == "ConvTranspose" for op, _ in ops["unet_decoder"])
    assert any(op == "HardSwish" for op, _ in ops["mobilenet_v3_small"])


@pytest.mark.parametrize("name", ["mobilenet_v1_025_96", "whisper_tiny_frontend",
                                  "gpt_small_decoder"])
def test_a_suite_model_runs_with_outputs_that_are_not_near_zero(name):
    model = public_suite.build(name)
    onnx.checker.check_model(model)
    spec = model.graph.input[0]
    shape = [d.dim_value for d in spec.type.tensor_type.shape.dim]
    rng = np.random.default_rng(3)
    if spec.type.tensor_type.elem_type == onnx.TensorProto.INT64:
        feed = rng.integers(0, 100, shape, dtype=np.int64)
    else:
        feed = rng.standard_normal(shape).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {spec.name: feed})[0]
    assert np.isfinite(out).all() and out.std() > 0.05, out.std()


def test_batchnorm_statistics_come_from_the_data():
    model = public_suite.build("mobilenet_v1_025_96")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    first = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    variance = inits[first.input[4]]
    assert variance.std() > 0 and not np.allclose(variance, 1.0, atol=0.2)
