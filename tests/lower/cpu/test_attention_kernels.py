"""Attention's activation matmuls on the batched kernel, and row reductions (softmax, layer and
RMS norm) scheduled row by row, against onnxruntime and TVM's unscheduled functions.

The attention block is built in code as exporters write it (Transpose of K, MatMul, scale,
Softmax, MatMul with V, LayerNormalization), at shapes that are and are not whole vectors
(64 and 50 tokens: the kernel pads the columns and rows it cannot tile).
"""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.lower.cpu.kernels.compute import batch_matmul_kernel
from hwcomp.lower.cpu.kernels.spec import fma_spec
from hwcomp.lower.cpu.rules import default_rules
from hwcomp.lower.cpu.rules.row_reduction import RowReduction


def _attention(tokens: int, dim: int = 64, heads: int = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(tokens)
    head = dim // heads
    inits = [numpy_helper.from_array((rng.standard_normal((dim, dim)) / np.sqrt(dim))
                                     .astype(np.float32), name) for name in ("wq", "wk", "wv")]
    inits += [numpy_helper.from_array(np.array([1, tokens, heads, head], np.int64), "split"),
              numpy_helper.from_array(np.array([1, tokens, dim], np.int64), "merge"),
              numpy_helper.from_array(np.float32(1 / np.sqrt(head)), "scale"),
              numpy_helper.from_array(rng.standard_normal(dim).astype(np.float32), "gamma"),
              numpy_helper.from_array(rng.standard_normal(dim).astype(np.float32), "beta")]
    nodes = []
    for name in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["x", "w" + name], [name + "0"]),
                  helper.make_node("Reshape", [name + "0", "split"], [name + "1"]),
                  helper.make_node("Transpose", [name + "1"], [name],
                                   perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3])]
    nodes += [helper.make_node("MatMul", ["q", "k"], ["scores"]),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "v"], ["context"]),
              helper.make_node("Transpose", ["context"], ["ct"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ct", "merge"], ["merged"]),
              helper.make_node("Add", ["merged", "x"], ["res"]),
              helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], axis=-1)]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, dim])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("tokens,target", [(64, "host"), (50, "host"), (37, "host"), (37, "arm-a72")])
def test_attention_matmuls_run_on_the_batched_kernel(tmp_path, tokens, target):
    """Built and verified against onnxruntime by the build (1e-4; arm-a72 under qemu: NEON's
    FMA by element)."""
    from hwcomp import api

    path = tmp_path / "attention.onnx"
    onnx.save(_attention(tokens), path)
    result = api.build(path, target, tmp_path / "out", use_tuning_db=False)
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed", manifest["verification"]
    batched = [k for k in manifest["float_kernels"] if "batched activation kernel" in k]
    assert len(batched) == 2, manifest["float_kernels"]  # scores and context


@pytest.mark.parametrize("batch,rows,depth,cols", [
    (6, 128, 64, 128),   # whole vectors and tiles
    (4, 50, 16, 50),     # 50 columns: padded to 64 through the packed copy; 50 rows
    (3, 7, 33, 24),      # odd depth, 24 columns on 16 lanes
    (12, 1, 64, 197),    # a decoder step: one row (not padded), 197 cached keys
])
def test_batch_matmul_kernel_matches_numpy(batch, rows, depth, cols):
    import tvm

    func = batch_matmul_kernel(batch, rows, depth, cols, fma_spec(8))
    lib = tvm.compile(tvm.IRModule({"main": func}), target={"kind": "llvm", "mcpu": "haswell"})
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((batch, rows, depth)).astype(np.float32)
    b = rng.standard_normal((batch, depth, cols)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((batch, rows, cols), np.float32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b[..., None]), out)
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-5, atol=1e-4)


def _legalized(shape, op):
    import tvm
    from tvm import relax

    from hwcomp.lower.cpu.fast_math import fast_math_pass

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    g = relax.Var("g", relax.TensorType((shape[-1],), "float32"))
    with builder.function("main", [x, g]):
        builder.emit_func_output(builder.emit(op(relax, x, g)))
    mod = relax.transform.LegalizeOps()(fast_math_pass()(builder.get()))
    return next(f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


CASES = {
    "softmax": ((1, 4, 32, 64), lambda r, x, g: r.op.nn.softmax(x), True),
    "softmax 50 wide": ((1, 2, 50, 50), lambda r, x, g: r.op.nn.softmax(x), True),
    "layer norm": ((1, 40, 96), lambda r, x, g: r.op.nn.layer_norm(x, g, g, [-1]), True),
    "rms norm": ((2, 16, 48), lambda r, x, g: r.op.nn.rms_norm(x, g, [-1]), True),
    "log softmax": ((8, 1000), lambda r, x, g: r.op.nn.log_softmax(x), True),
    # Not rows: a pool over NHWC's H and W, a softmax over channels, one row.
    "pool NHWC": ((1, 7, 7, 64), lambda r, x, g: r.op.mean(x, [1, 2], keepdims=True), False),
    "softmax axis 1": ((1, 16, 8, 8), lambda r, x, g: r.op.nn.softmax(x, axis=1), False),
    "one row": ((1, 1000), lambda r, x, g: r.op.nn.softmax(x), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_row_reductions_are_scheduled_row_by_row_and_stay_exact(case):
    import tvm

    shape, op, taken = CASES[case]
    func = _legalized(shape, op)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    schedule = RowReduction(8, 2).apply(func, target, False)
    assert (schedule is not None) == taken, RowReduction.last_error
    if schedule is None:
        return
    assert any(rule.__class__ is RowReduction for rule in default_rules(8, 2))
    lib, reference = (tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                                  target=target) for f in (schedule.mod["main"], func))
    rng = np.random.default_rng(len(case))
    inputs = [rng.standard_normal(shape).astype(np.float32)]
    inputs += [rng.standard_normal(shape[-1]).astype(np.float32)] * (len(func.params) - 2)
    outputs = []
    for module in (lib, reference):
        out = tvm.runtime.tensor(np.zeros(shape, np.float32))
        module["main"](*[tvm.runtime.tensor(a) for a in inputs], out)
        outputs.append(out.numpy())
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows,padded", [(197, True), (13, True), (128, False), (49, False),
                                         (1, False), (2, False)])
def test_matmul_rows_no_tile_divides_are_padded_and_exact(rows, padded):
    """ViT's 197 tokens (a prime) made one-row register tiles (ViT-B/16 2.1x onnxruntime's
    time): such rows run padded to whole tiles; 128 (4-row tiles) and 49 (7-row tiles) not,
    nor a GEMV's one or two rows (a classifier, a recurrent step: padding multiplied them)."""
    import tvm

    from hwcomp.lower.cpu.kernels.compute import matmul_kernel, pack_weight
    from hwcomp.lower.cpu.kernels.tiling import matmul_rows

    spec = fma_spec(16)
    depth, cols = 40, 64
    assert (matmul_rows(rows, cols, spec) != rows) == padded
    func = matmul_kernel(rows, depth, cols, spec)
    lib = tvm.compile(tvm.IRModule({"main": func}), target={"kind": "llvm", "mcpu": "haswell"})
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, depth)).astype(np.float32)
    w = rng.standard_normal((cols, depth)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((rows, cols), np.float32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(pack_weight(w, spec)), out)
    np.testing.assert_allclose(out.numpy()[:, :cols], a @ w.T, rtol=1e-5, atol=1e-4)
