import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from hwcomp.errors import CalibrationDataError, InputShapeError, ModelLoadError
from hwcomp.model import (
    class_count,
    graph_inputs,
    load_calibration,
    load_labels,
    load_model,
    parse_input_shapes,
    seeded_inputs,
)
from tests import model_zoo
from tests.helpers import make_model, run_ort


def test_parse_input_shapes():
    assert parse_input_shapes(["input=1x3x224x224", "ids=2X7"]) == {
        "input": (1, 3, 224, 224), "ids": (2, 7)}
    for bad in ["input", "input=", "=1x2", "input=1x0", "input=1xa"]:
        with pytest.raises(InputShapeError, match="name=1x3x224x224"):
            parse_input_shapes([bad])
    # A typo that would allocate 1 TiB is refused before any allocation.
    with pytest.raises(InputShapeError, match="elements per input"):
        parse_input_shapes(["x=2147483648x4x16"])


def test_static_model_loads_with_inferred_shapes(models_dir):
    model = load_model(models_dir / "resnet_like.onnx")
    assert [s.shape for s in graph_inputs(model)] == [(1, 3, 32, 32)]
    shapes = [v.shape for node in model.graph for v in node.outputs]
    assert all(s is not None and all(isinstance(d, int) for d in s) for s in shapes)


def test_dynamic_dim_needs_a_binding(models_dir):
    with pytest.raises(InputShapeError) as info:
        load_model(models_dir / "resnet_dynamic_hw.onnx")
    assert "'input'" in str(info.value) and "--input-shape input=1x3x<S>x<S>" in str(info.value)
    model = load_model(models_dir / "resnet_dynamic_hw.onnx", {"input": (4, 3, 16, 16)})
    assert list(model.graph.outputs[0].shape) == [4, 10]
    # A dynamic batch axis alone is bound to 1.
    assert graph_inputs(load_model(models_dir / "resnet_dynamic.onnx"))[0].shape == (1, 3, 32, 32)
    model = load_model(models_dir / "resnet_dynamic.onnx", {"input": (4, 3, 32, 32)})
    assert graph_inputs(model)[0].shape == (4, 3, 32, 32)
    assert list(model.graph.outputs[0].shape) == [4, 10]


def test_binding_must_fit_the_model(models_dir):
    with pytest.raises(InputShapeError, match="rank 3"):
        load_model(models_dir / "resnet_dynamic.onnx", {"input": (4, 3, 32)})
    with pytest.raises(InputShapeError, match="axis 1"):
        load_model(models_dir / "resnet_dynamic.onnx", {"input": (4, 5, 32, 32)})
    with pytest.raises(InputShapeError, match="model's inputs are input"):
        load_model(models_dir / "resnet_dynamic.onnx", {"image": (1, 3, 32, 32)})


def test_bad_files_are_named(tmp_path, models_dir):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    with pytest.raises(ModelLoadError, match="notes.onnx"):
        load_model(text)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes((models_dir / "resnet_like.onnx").read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="truncated.onnx"):
        load_model(truncated)


def test_checker_failures_are_reported(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    path = tmp_path / "dangling.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelLoadError, match="checker"):
        load_model(path)


def test_external_data_is_loaded(tmp_path):
    model = model_zoo.resnet_like()
    path = tmp_path / "external.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.data", size_threshold=0)
    assert (tmp_path / "external.data").stat().st_size > 50_000
    loaded = load_model(path)
    feeds = seeded_inputs(graph_inputs(loaded))
    from hwcomp.model import to_proto

    np.testing.assert_allclose(run_ort(to_proto(loaded), feeds)[0],
                               run_ort(model_zoo.resnet_like(), feeds)[0],
                               rtol=1e-6)


def test_external_data_outside_the_folder_or_missing_is_refused(tmp_path):
    path = tmp_path / "model" / "external.onnx"
    path.parent.mkdir()
    onnx.save(model_zoo.resnet_like(), path, save_as_external_data=True,
              all_tensors_to_one_file=True, location="external.data", size_threshold=0)
    (tmp_path / "secret.bin").write_bytes(bytes(range(256)) * 1000)
    proto = onnx.load(str(path), load_external_data=False)
    for location, match in (("../secret.bin", "outside the model's folder"),
                            (str(tmp_path / "secret.bin"), "outside the model's folder"),
                            ("missing.data", "not a file")):
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        hostile = path.parent / "hostile.onnx"
        onnx.save(proto, hostile)
        with pytest.raises(ModelLoadError, match=match) as info:
            load_model(hostile)
        assert "tensor '" in str(info.value)
    # A data file cut short.
    data = path.parent / "external.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(path)


def test_raw_data_that_does_not_match_its_dims_is_refused(tmp_path):
    model = model_zoo.resnet_like()
    tensor = model.graph.initializer[0]
    tensor.raw_data = onnx.numpy_helper.to_array(tensor).tobytes() + bytes(64)
    onnx.save(model, tmp_path / "long.onnx")
    with pytest.raises(ModelLoadError, match=f"tensor '{tensor.name}' has dims"):
        load_model(tmp_path / "long.onnx")


def test_a_reshape_that_changes_the_size_is_refused(tmp_path):
    weight = onnx.numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    target = onnx.numpy_helper.from_array(np.array([2**63 - 1], np.int64), "s")
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Reshape", ["c", "s"], ["y"], name="rs")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], [weight, target])
    onnx.save(model, tmp_path / "reshape.onnx")
    with pytest.raises(ModelLoadError, match="node 'rs' .* reshapes"):
        load_model(tmp_path / "reshape.onnx")


def test_calibration_files(tmp_path, models_dir):
    model = load_model(models_dir / "resnet_like.onnx")
    specs = graph_inputs(model)
    data = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=data)
    assert load_calibration(tmp_path / "calib.npz", specs)["input"].shape == (8, 3, 32, 32)
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "input.npy", data)
    assert load_calibration(folder, specs)["input"].shape == (8, 3, 32, 32)
    np.savez(tmp_path / "wrong_name.npz", image=data)
    with pytest.raises(CalibrationDataError, match="no array for input 'input'"):
        load_calibration(tmp_path / "wrong_name.npz", specs)
    np.savez(tmp_path / "wrong_shape.npz", input=data[:, :, :16])
    with pytest.raises(CalibrationDataError, match=r"expected \[1, 3, 32, 32\]"):
        load_calibration(tmp_path / "wrong_shape.npz", specs)
    (tmp_path / "garbage.npz").write_text("nope")
    with pytest.raises(CalibrationDataError, match="garbage.npz"):
        load_calibration(tmp_path / "garbage.npz", specs)


def test_seeded_inputs_are_deterministic(models_dir):
    specs = graph_inputs(load_model(models_dir / "resnet_like.onnx"))
    a, b = seeded_inputs(specs, 3), seeded_inputs(specs, 3)
    np.testing.assert_array_equal(a["input"], b["input"])
    assert not np.array_equal(a["input"], seeded_inputs(specs, 4)["input"])


def test_int_inputs_are_small_and_valid():
    model = make_model([helper.make_node("Identity", ["ids"], ["out"])],
                       [helper.make_tensor_value_info("ids", TensorProto.INT64, [5])],
                       [helper.make_tensor_value_info("out", TensorProto.INT64, [5])])
    from tests.helpers import to_ir

    feeds = seeded_inputs(graph_inputs(to_ir(model)))
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].min() >= 0


def test_calibration_for_a_rank_1_input(tmp_path):
    model = make_model([helper.make_node("Relu", ["v"], ["out"])],
                       [helper.make_tensor_value_info("v", TensorProto.FLOAT, [4])],
                       [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])])
    from tests.helpers import to_ir

    specs = graph_inputs(to_ir(model))
    np.savez(tmp_path / "calib.npz", v=np.zeros(12, np.float32))
    assert load_calibration(tmp_path / "calib.npz", specs)["v"].shape == (12,)
    np.savez(tmp_path / "bad.npz", v=np.zeros((3, 4), np.float32))
    with pytest.raises(CalibrationDataError, match=r"expected \[4\]"):
        load_calibration(tmp_path / "bad.npz", specs)


@pytest.mark.parametrize("values,message", [
    (lambda x: x.astype(np.complex64) + 1j, "complex64 values"),      # was cut to its real part
    (lambda x: x.astype(str), "<U"),                                    # was an internal error
    (lambda x: np.where(x > 2.5, np.nan, x), "NaN or infinite"),
    (lambda x: x.astype(np.float64) * 1e300, "NaN or infinite"),         # overflows float32
])
def test_calibration_data_that_is_not_finite_real_numbers_is_refused(
        tmp_path, models_dir, values, message):
    specs = graph_inputs(load_model(models_dir / "resnet_like.onnx"))
    data = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=values(data))
    with pytest.raises(CalibrationDataError, match=message):
        load_calibration(tmp_path / "calib.npz", specs)


def test_labels_must_be_classes_of_the_model(tmp_path, models_dir):
    model = load_model(models_dir / "resnet_like.onnx")
    classes = class_count(model)
    assert classes == 10
    for bad in (-1, 1000):
        np.save(tmp_path / "labels.npy", np.array([0, 1, bad, 3]))
        with pytest.raises(CalibrationDataError, match=f"label {bad} of sample 2 is not a class"):
            load_labels(tmp_path / "labels.npy", 4, classes)
    # Negative case: every label a class index loads as given.
    np.save(tmp_path / "labels.npy", np.array([0, 9, 5, 3]))
    assert load_labels(tmp_path / "labels.npy", 4, classes).tolist() == [0, 9, 5, 3]


def test_empty_calibration_and_label_files_are_bad_data(tmp_path, models_dir):
    """numpy raises EOFError on an empty file, which click reported as 'interrupted' (130)."""
    specs = graph_inputs(load_model(models_dir / "resnet_like.onnx"))
    (tmp_path / "calib.npz").write_bytes(b"")
    (tmp_path / "labels.npy").write_bytes(b"")
    with pytest.raises(CalibrationDataError, match="calib.npz"):
        load_calibration(tmp_path / "calib.npz", specs)
    with pytest.raises(CalibrationDataError, match="labels.npy"):
        load_labels(tmp_path / "labels.npy", 4)


def test_nan_weights_are_refused_naming_the_layer(tmp_path):
    """compress on such a model printed 'top-1 agreement 1.000' (NaN agrees with NaN)."""
    model = model_zoo.resnet_like()
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[3] = np.nan
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, tmp_path / "nan.onnx")
    with pytest.raises(ModelLoadError, match=f"weight '{weight.name}' of node '{conv.name}' holds 1 NaN"):
        load_model(tmp_path / "nan.onnx")


def test_npz_and_npy_mixed_up_or_truncated_are_bad_data(tmp_path, models_dir):
    """Each was an internal error (exit 1): a plain .npy as --calib, a truncated .npz, an
    .npz as --labels."""
    specs = graph_inputs(load_model(models_dir / "resnet_like.onnx"))
    data = np.zeros((2, 3, 32, 32), np.float32)
    np.save(tmp_path / "plain.npy", data)
    with pytest.raises(CalibrationDataError, match="not an .npz keyed by input name"):
        load_calibration(tmp_path / "plain.npy", specs)
    np.savez(tmp_path / "whole.npz", input=data)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:200])
    with pytest.raises(CalibrationDataError, match="cut.npz"):
        load_calibration(tmp_path / "cut.npz", specs)
    np.savez(tmp_path / "labels.npz", labels=np.arange(2))
    with pytest.raises(CalibrationDataError, match="an .npz archive"):
        load_labels(tmp_path / "labels.npz", 2)


def test_an_input_with_a_zero_dimension_is_refused(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 4])])
    onnx.save(model, tmp_path / "empty.onnx")
    with pytest.raises(InputShapeError, match="input 'x' has shape \\[0, 4\\]"):
        load_model(tmp_path / "empty.onnx")
