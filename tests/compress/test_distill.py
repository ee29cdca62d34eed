"""Distillation: the ONNX-in-PyTorch converter, the fine-tuning, QAT and bad input.

Needs PyTorch (``pip install 'hwcomp[train]'``; CI installs it): skipped with that reason
where it is absent, except the test of the error a user without it gets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp import model as model_io
from hwcomp.compress.distill import DistillOptions, distill, load_data
from hwcomp.compress.driver import CompressionOptions, compress_with_data
from hwcomp.compress.torch_graph import (
    TorchConversionError,
    TrainingUnavailableError,
    graph_module,
    import_torch,
    trainable_names,
)
from hwcomp.targets import load_target
from tests import model_zoo
from tests.conftest import REPO, run_cli
from tests.helpers import make_model, run_ort
from tests.test_cli import _assert_clean_error

torch = pytest.importorskip("torch", reason="PyTorch (the hwcomp[train] extra) is not installed")

DIGITS = REPO / "tests" / "data" / "digits_cnn.onnx"


def _module_outputs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    module = graph_module(proto)
    with torch.no_grad():
        return [o.numpy() for o in module(*[torch.from_numpy(v) for v in feeds.values()])]


def _assert_matches_onnxruntime(proto: onnx.ModelProto, feeds: dict[str, np.ndarray],
                                tolerance: float = 1e-5) -> None:
    want = run_ort(proto, feeds)
    got = _module_outputs(proto, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        scale = max(1.0, float(np.abs(w).max()))
        assert float(np.abs(g - w).max()) / scale < tolerance


@pytest.mark.parametrize("build", [model_zoo.resnet_like, model_zoo.mobilenet_like,
                                   model_zoo.ds_cnn, model_zoo.transformer_block])
def test_converter_matches_onnxruntime_on_zoo_models(build):
    proto = build()
    rng = np.random.default_rng(0)
    feeds = {}
    for value in proto.graph.input:
        shape = [d.dim_value or 2 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    _assert_matches_onnxruntime(proto, feeds)
    assert trainable_names(proto.graph), "the weights are trained"


def _awkward_model() -> onnx.ModelProto:
    """Asymmetric pads, stride 2, dilation, groups, transposed conv with output padding,
    pools with ceil mode and uneven pads, resize, slices with negative steps, split,
    gather with a negative index, reflect pad, layer norm, batch 2."""
    rng = np.random.default_rng(1)

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[0, 1, 2, 1], strides=[2, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], group=2, dilations=[2, 2], pads=[2, 2, 2, 2]),
        helper.make_node("HardSwish", ["c2"], ["h"]),
        helper.make_node("AveragePool", ["h"], ["p1"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 0, 0, 1], ceil_mode=1),
        helper.make_node("MaxPool", ["h"], ["p2"], kernel_shape=[2, 3], strides=[2, 2],
                         pads=[0, 1, 0, 1]),
        helper.make_node("ConvTranspose", ["p2", "w3", "b3"], ["t"], strides=[2, 2],
                         pads=[1, 1, 0, 0], output_padding=[1, 1]),
        helper.make_node("Resize", ["p1", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("Slice", ["t", "starts", "ends", "axes", "steps"], ["s"]),
        helper.make_node("Pad", ["s", "pads"], ["padded"], mode="reflect"),
        helper.make_node("Split", ["padded", "split"], ["a", "b"], axis=1),
        helper.make_node("Gather", ["b", "index"], ["g"], axis=1),
        helper.make_node("ReduceMean", ["a", "rm_axes"], ["m"], keepdims=0),
        helper.make_node("LayerNormalization", ["m", "ln_scale", "ln_bias"], ["ln"], axis=-1),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y1"], transB=1, alpha=0.5),
        helper.make_node("Softmax", ["y1"], ["y"]),
    ]
    inits = [
        init("w1", [4, 3, 3, 2]), init("b1", [4]), init("w2", [4, 2, 3, 3]),
        init("w3", [4, 3, 2, 2]), init("b3", [3]),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.array([-1, 0], np.int64), "starts"),
        numpy_helper.from_array(np.array([-1000, 7], np.int64), "ends"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 2], np.int64), "steps"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 0], np.int64), "pads"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "split"),
        numpy_helper.from_array(np.array(-1, np.int64), "index"),
        numpy_helper.from_array(np.array([1], np.int64), "rm_axes"),
        init("ln_scale", [5]), init("ln_bias", [5]),
    ]
    # shapes: x 2x3x11x9 -> c1 2x4x6x10 -> c2 2x4x6x10 -> p1 2x4x3x5, p2 2x4x3x5
    # -> t 2x3x6x9 (pads 1,1 begin, output padding 1); r 2x4x6x10 -> f 2x240
    inits.append(init("wg", [7, 240]))
    inits.append(init("bg", [7]))
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 11, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 7]),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, [2, 8, 5]),
         helper.make_tensor_value_info("ln", TensorProto.FLOAT, [2, 8, 5])],
        inits)


def test_converter_matches_onnxruntime_on_awkward_attributes():
    proto = _awkward_model()
    x = np.random.default_rng(2).standard_normal((2, 3, 11, 9)).astype(np.float32)
    _assert_matches_onnxruntime(proto, {"x": x})
    names = trainable_names(proto.graph)
    assert {"w1", "b1", "w2", "w3", "b3", "wg", "bg", "ln_scale", "ln_bias"} == set(names)


def test_an_op_the_converter_lacks_is_named():
    proto = make_model(
        [helper.make_node("Hardmax", ["x"], ["y"], name="the_hardmax")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(TorchConversionError, match="the_hardmax.*Hardmax"):
        graph_module(proto)


def test_without_pytorch_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(TrainingUnavailableError, match=r"hwcomp\[train\]"):
        import_torch()


def _digits_data(tmp_path: Path, count: int) -> tuple[Path, Path]:
    from tests.digits import digits_split

    (x, y), _ = digits_split()
    np.savez(tmp_path / "data.npz", image=x[:count])
    np.save(tmp_path / "labels.npy", y[:count])
    return tmp_path / "data.npz", tmp_path / "labels.npy"


def _pruned_digits(data: Path) -> tuple[object, object]:
    model = model_io.load_model(DIGITS, {"image": (1, 1, 8, 8)})
    outcome = compress_with_data(model, load_target("arm-a72"),
                                 CompressionOptions(prune=0.6, calib=data))
    return model, outcome.result.model


@pytest.mark.slow
def test_distillation_lowers_the_held_out_loss_and_exports_the_same_graph(tmp_path):
    data, _ = _digits_data(tmp_path, 200)
    teacher, student = _pruned_digits(data)
    options = DistillOptions(data=data, epochs=4, seed=3)
    batches, labels = load_data(teacher, options)
    student_proto, teacher_proto = model_io.to_proto(student), model_io.to_proto(teacher)
    trained, report = distill(student_proto, teacher_proto, options, batches, labels)
    assert report.best_epoch >= 1 and report.after.loss < report.before.loss
    assert report.after.kl < report.before.kl
    assert report.held_out == 40 and report.samples == 200
    assert report.export_error < 1e-4
    # Same graph, new weights: only initializer values changed.
    assert [n.op_type for n in trained.graph.node] == [n.op_type for n in student_proto.graph.node]
    changed = [t.name for t, u in zip(trained.graph.initializer, student_proto.graph.initializer,
                                      strict=True)
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))]
    assert set(changed) == set(trainable_names(student_proto.graph))
    # The exported student in onnxruntime matches the PyTorch module (trained weights).
    x = batches[0]["image"]
    _assert_matches_onnxruntime(trained, {"image": x}, 1e-5)
    # Deterministic for a seed.
    again, _ = distill(student_proto, teacher_proto, options, batches, labels)
    assert all(np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
               for a, b in zip(trained.graph.initializer, again.graph.initializer, strict=True))


@pytest.mark.slow
def test_compress_cli_distills_with_labels_and_reports(tmp_path):
    data, labels = _digits_data(tmp_path, 160)
    out = tmp_path / "small.onnx"
    proc = run_cli("compress", str(DIGITS), "-o", str(out), "-t", "arm-a72", "--input-shape",
                   "image=1x1x8x8", "--prune", "0.6", "--distill", str(data), "--labels",
                   str(labels), "--epochs", "3", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "distilled: 3 epoch(s)" in proc.stdout or "distilled:" in proc.stdout
    assert "held-out loss" in proc.stdout and "accuracy" in proc.stdout
    assert "before distillation" in proc.stdout
    assert "distill (epochs)" in proc.stderr  # the progress bar
    onnx.checker.check_model(onnx.load(str(out)))


def test_distillation_bad_input_is_one_clear_line_and_writes_nothing(tmp_path):
    data, labels = _digits_data(tmp_path, 200)
    out = tmp_path / "small.onnx"
    base = ["compress", str(DIGITS), "-o", str(out), "-t", "arm-a72", "--input-shape",
            "image=1x1x8x8", "--prune", "0.5"]
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((20, 1, 8, 8), np.float32))
    _assert_clean_error(run_cli(*base, "--distill", str(tmp_path / "wrong.npz")),
                        "no array for input 'image'", code=3)
    np.savez(tmp_path / "few.npz", image=np.zeros((5, 1, 8, 8), np.float32))
    _assert_clean_error(run_cli(*base, "--distill", str(tmp_path / "few.npz")),
                        "5 sample(s)", "at least 10", code=3)
    _assert_clean_error(run_cli(*base, "--epochs", "3"), "--epochs", "--distill")
    _assert_clean_error(run_cli(*base, "--distill", str(data), "--alpha", "0.5"),
                        "--alpha 0.5", "--labels")
    _assert_clean_error(run_cli(*base, "--distill", str(data), "--epochs", "0"), "--epochs 0")
    no_prune = ["compress", str(DIGITS), "-o", str(out), "-t", "arm-a72", "--distill", str(data)]
    _assert_clean_error(run_cli(*no_prune), "--prune or --lowrank")
    np.savez(tmp_path / "other.npz", image=np.zeros((20, 1, 8, 8), np.float32))
    _assert_clean_error(run_cli(*base, "--distill", str(data), "--calib",
                                str(tmp_path / "other.npz"), "--labels", str(labels)),
                        "--labels", "one sample file", code=3)
    assert not out.exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_an_unconvertible_student_op_is_refused_before_training(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    proto = make_model(
        [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["c"]),
         helper.make_node("Flatten", ["c"], ["f"]),
         helper.make_node("Hardmax", ["f"], ["y"], name="post_hardmax", axis=-1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 144])],
        [w, w2])
    onnx.save(proto, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((20, 3, 6, 6)).astype(np.float32))
    out = tmp_path / "s.onnx"
    proc = run_cli("compress", str(tmp_path / "m.onnx"), "-o", str(out), "-t", "host",
                   "--prune", "0.5", "--distill", str(tmp_path / "d.npz"))
    _assert_clean_error(proc, "post_hardmax", "Hardmax", "--distill", code=4)
    assert "distill (epochs)" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_quantization_aware_fine_tuning_is_planned_and_reported(tmp_path):
    from hwcomp import api
    from hwcomp.compress.precision import PrecisionOptions

    data, labels = _digits_data(tmp_path, 240)
    options = CompressionOptions(distill=DistillOptions(data=data, epochs=2), labels=labels)
    precision = PrecisionOptions(precision="int8", labels=labels)
    model, compressed, plan, _ = api._transformed_model(
        DIGITS, load_target("cortex-m7"), {"image": (1, 1, 8, 8)}, options, precision, data)
    assert compressed is None and plan is not None
    qat = plan.qat
    assert qat is not None and qat["fake_quantized"] >= 5
    assert qat["distillation"]["epochs_run"] >= 1
    assert qat["accuracy_without"] is not None and qat["accuracy_with"] is not None
    assert "quantization-aware fine-tuning" in plan.decisions[-2]
    ops = [n.op_type for n in model.graph]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = np.load(data)["image"][:1]
    assert np.isfinite(run_ort(model, {"image": x})[0]).all()


@pytest.mark.slow
def test_ctrl_c_during_distillation_writes_nothing(tmp_path):
    import signal
    import subprocess

    data, _ = _digits_data(tmp_path, 400)
    out = tmp_path / "small.onnx"
    # Background jobs (CI) inherit SIGINT ignored; a user's terminal delivers it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwcomp", "-v", "compress", str(DIGITS), "-o", str(out), "-t",
         "arm-a72", "--input-shape", "image=1x1x8x8", "--prune", "0.6", "--distill", str(data),
         "--epochs", "500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # -v logs each epoch
        seen.append(line)
        if "distill epoch 2:" in line:
            break
    else:
        pytest.fail("distillation never reached epoch 2: " + "".join(seen[-5:]))
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, rest
    assert "interrupted; nothing was written" in rest and "Traceback" not in rest
    assert not out.exists() and not list(tmp_path.glob(".small*"))
