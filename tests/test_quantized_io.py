"""--io quantized: an int8 build's inputs and outputs are its 8-bit tensors, with their scales."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp import api
from hwcomp.compress.precision import PrecisionOptions
from hwcomp.errors import UnsupportedOpError
from hwcomp.model import quantize_like_onnx
from hwcomp.passes.quantized_io import quantize_io
from tests.conftest import REPO, require_tools, run_cli

EXAMPLE = REPO / "tests" / "data" / "example_cnn.onnx"


def _session(model) -> ort.InferenceSession:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def test_the_quantized_model_is_the_int8_model_without_its_first_and_last_step(tmp_path):
    """Numbers: the stripped model on q gives the int8 model's output on dequantize(q),
    quantized; the recorded scale and zero point are the removed steps' own."""
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((16, 3, 32, 32), np.float32))
    int8 = PrecisionOptions(precision="int8")
    plain = api.build(EXAMPLE, "host", tmp_path / "float", calib=tmp_path / "calib.npz",
                      precision_options=int8)
    quantized = api.build(EXAMPLE, "host", tmp_path / "q", calib=tmp_path / "calib.npz",
                          precision_options=int8, io="quantized")
    assert quantized.verification.status == "passed"
    qdq = onnx.load(plain.bundle / "model.optimized.onnx")
    stripped = onnx.load(quantized.bundle / "model.optimized.onnx")
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "input" for n in stripped.graph.node)
    constants = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    first = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    last = next(n for n in qdq.graph.node if "logits" in n.output)
    (inp,), (out,) = quantized.manifest["inputs"], quantized.manifest["outputs"]
    assert inp["dtype"] == "uint8" and out["dtype"] == str(constants[last.input[2]].dtype)
    assert inp["scale"] == pytest.approx(float(constants[first.input[1]]), rel=1e-7)
    assert inp["zero_point"] == int(constants[first.input[2]])
    assert out["scale"] == pytest.approx(float(constants[last.input[1]]), rel=1e-7)
    assert out["zero_point"] == int(constants[last.input[2]])

    q_in = quantize_like_onnx(rng.standard_normal((4, 1, 3, 32, 32)), inp["scale"],
                              inp["zero_point"], "uint8")
    for sample in q_in:
        real_in = (inp["scale"] * (sample.astype(np.float32) - inp["zero_point"])).astype(np.float32)
        expected = _session(qdq).run(None, {"input": real_in})[0]
        got = _session(stripped).run(None, {"input": sample})[0]
        assert got.dtype == np.uint8
        dequantized = out["scale"] * (got.astype(np.float32) - out["zero_point"])
        np.testing.assert_allclose(dequantized, expected, rtol=0, atol=1e-6)
    # the verification data: the calibration's first float sample, quantized
    verify_in = np.load(next((quantized.bundle / "verify").glob("input_00_*.npy")))
    first_sample = np.load(tmp_path / "calib.npz")["input"][:1]
    np.testing.assert_array_equal(
        verify_in, quantize_like_onnx(first_sample, inp["scale"], inp["zero_point"], "uint8"))


@pytest.mark.cross
def test_a_cortex_m_bundle_takes_and_gives_bytes_and_states_their_scales(tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    result = api.build(EXAMPLE, "cortex-m7", tmp_path,
                       precision_options=PrecisionOptions(precision="int8", calib_random=16),
                       io="quantized")
    assert result.verification.status == "passed"
    assert result.verification.ran_on.startswith("qemu-system-arm")
    header = (result.bundle / "lib" / "hwcomp_example_cnn.h").read_text()
    (inp,), (out,) = result.manifest["inputs"], result.manifest["outputs"]
    assert "int hwcomp_example_cnn_run(const uint8_t* in0, uint8_t* out0);" in header
    assert f"#define HWCOMP_EXAMPLE_CNN_IN0_ZERO_POINT {inp['zero_point']}" in header
    assert f"#define HWCOMP_EXAMPLE_CNN_OUT0_SCALE {out['scale']:.9g}f" in header
    model_c = (result.bundle / "lib" / "model.c").read_text()
    assert f'"uint8", 4, hwcomp_example_cnn_in0_shape, 3072u, 3072u, {inp["scale"]:.9g}f, ' \
           f'{inp["zero_point"]} }}' in model_c


def test_an_input_a_float_layer_reads_is_refused_by_name(tmp_path):
    proc = run_cli("build", str(EXAMPLE), "-t", "host", "-o", str(tmp_path / "out"),
                   "--io", "quantized")
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith("hwcomp: error: --io quantized: input 'input' is read by Conv")
    assert "--precision int8" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def _qdq_model(per_channel: bool = False, output_read_inside: bool = False) -> onnx.ModelProto:
    scale = np.full((4,) if per_channel else (), 0.05, np.float32)
    zero_point = np.zeros((4,) if per_channel else (), np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_in", axis=1),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in", axis=1),
        helper.make_node("Relu", ["xd"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q_out", axis=1),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"], name="dq_out", axis=1),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    if output_read_inside:
        nodes.append(helper.make_node("Neg", ["y"], ["n"], name="neg"))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, [1, 4]))
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], outputs,
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero_point, "z")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_the_pass_converts_int8_io_and_refuses_what_it_cannot_convert():
    model = _qdq_model()
    params = quantize_io(model)
    assert params == {"x": (pytest.approx(0.05), 0), "y": (pytest.approx(0.05), 0)}
    onnx.checker.check_model(model)
    assert [n.name for n in model.graph.node] == ["dq_in", "relu", "q_out"]
    assert json.loads(model.metadata_props[-1].value) == {"x": [pytest.approx(0.05), 0],
                                                          "y": [pytest.approx(0.05), 0]}
    got = _session(model).run(None, {"x": np.array([[-3, -1, 0, 7]], np.int8)})[0]
    np.testing.assert_array_equal(got, np.array([[0, 0, 0, 7]], np.int8))

    with pytest.raises(UnsupportedOpError, match="'q_in' is per-channel \\(4 scales\\)"):
        quantize_io(_qdq_model(per_channel=True))
    with pytest.raises(UnsupportedOpError, match="output 'y' is also read inside the model "
                                                 "\\(Neg 'neg'\\)"):
        quantize_io(_qdq_model(output_read_inside=True))
