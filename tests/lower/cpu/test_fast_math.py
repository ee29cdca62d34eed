"""exp/erf/tanh and the ops built on them run as vectorisable polynomials, within tolerance."""

import subprocess

import numpy as np
import onnx
from onnx import TensorProto, helper

from hwcomp import api
from tests.helpers import make_model, run_ort

OPS = [("Sigmoid", {}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Softmax", {}),
       ("Erf", {}), ("Tanh", {}), ("Exp", {})]


def _model() -> onnx.ModelProto:
    shape = [2, 8, 33]
    nodes = [helper.make_node(op, ["x"], [f"y{i}"], name=f"{op.lower()}_{i}", **attrs)
             for i, (op, attrs) in enumerate(OPS)]
    # x * sigmoid(x) (SiLU) as exported models write it.
    nodes += [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["silu"])]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, shape)
               for i in range(len(OPS))]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                      [*outputs, helper.make_tensor_value_info("silu", TensorProto.FLOAT, shape)],
                      opset=20)


def _fused(model: onnx.ModelProto):
    """``model`` prepared for ``host`` and through the fusion passes: (module, its TIR text)."""
    import onnx_ir as ir
    import tvm

    from hwcomp.lower import lowering_for
    from hwcomp.lower.cpu.pipeline import fusion_passes
    from hwcomp.lower.frontend.legalize import legalize_for_tvm
    from hwcomp.targets import load_target

    target = load_target("host")
    legal, _ = legalize_for_tvm(ir.from_proto(model))
    mod = lowering_for(target).prepare(ir.to_proto(legal), target).module
    with target.tvm():
        mod = tvm.transform.Sequential(fusion_passes(target.tvm()))(mod)
    tir = "\n".join(func.script() for _, func in mod.functions_items()
                    if isinstance(func, tvm.tirx.PrimFunc))
    return mod, tir


def test_no_libm_transcendentals_are_left_and_the_build_verifies(tmp_path):
    model = _model()
    _, tir = _fused(model)
    # Each would be one libm call per element; the polynomial forms are plain arithmetic.
    for call in ("T.exp(", "T.erf(", "T.tanh(", "T.sigmoid("):
        assert call not in tir
    path = tmp_path / "transcendental.onnx"
    onnx.save(model, path)
    # Verification compares every output with onnxruntime at the default tolerance (1e-4).
    result = api.build(path, "host", tmp_path / "out")
    assert result.verification.status == "passed"
    checks = result.verification.outputs
    assert len(checks) == len(OPS) + 1 and all(c.passed for c in checks)
    # The polynomials are close, not exact: errors are small but not zero (exp's is relative).
    assert max(c.max_abs_error / max(1.0, c.reference_max_abs) for c in checks) < 1e-5

    # Far from 0 too: sigmoid and exp saturate (exp's input is clamped to +-88.4), softmax spans
    # e^120.
    bundle = result.bundle
    x = np.random.default_rng(5).uniform(-60, 60, (2, 8, 33)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    subprocess.run([bundle / "bin" / "hwcomp_runner", bundle / "lib" / "model.so", "--inputs",
                    tmp_path / "x.npy", "--out", tmp_path, "--repeat", "1"], check=True,
                   capture_output=True)
    want = run_ort(model, {"x": x})
    for i, (op, _) in enumerate([*OPS, ("SiLU", {})]):
        got = np.load(tmp_path / f"output_{i}.npy")
        scale = np.maximum(1.0, np.abs(want[i]))
        assert np.max(np.abs(got - want[i]) / scale) < 1e-5, op


def test_division_by_a_constant_becomes_a_multiply():
    """Hard swish's ``/ 6`` (and any float division by a constant) runs as a multiply by the
    reciprocal; a division by a computed value stays one."""
    import tvm
    from tvm import relax

    from hwcomp.targets import load_target

    shape = [1, 8, 5, 5]
    model = make_model(
        [helper.make_node("HardSwish", ["x"], ["h"]),
         helper.make_node("Div", ["h", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], opset=20)
    mod, tir = _fused(model)
    assert tir.count(" / ") == 1, tir  # h / x only
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) + 4
    want = run_ort(model, {"x": x})[0]
    exe = tvm.compile(mod, target=load_target("host").tvm())
    got = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
