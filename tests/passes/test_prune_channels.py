import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.analysis.cost import graph_cost
from hwcomp.compress.pipeline import CompressionError, compress_graph, parse_ratios
from hwcomp.model import load_model
from hwcomp.passes.prune_channels import PruneChannelsPass
from tests import model_zoo
from tests.helpers import make_model, run_ort, to_ir

RNG = np.random.default_rng(0)


def _feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {model.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("make", [model_zoo.resnet_like, model_zoo.mobilenet_like])
def test_prune_zero_reproduces_the_model(make):
    model = make()
    pruner = PruneChannelsPass(0.0)
    result = pruner(to_ir(model))
    assert not result.modified
    feeds = _feeds(model)
    np.testing.assert_allclose(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0], rtol=1e-6)


@pytest.mark.parametrize("make", [model_zoo.resnet_like, model_zoo.mobilenet_like])
def test_pruning_removes_channels_physically(make):
    model = to_ir(make())
    pruner = PruneChannelsPass(0.5)
    result = pruner(model)
    report = pruner.report
    assert result.modified and all(g.after == g.before // 2 for g in report.groups)
    # Weights and activations shrink; outputs keep their shape; onnxruntime runs it.
    after = graph_cost(result.model)
    assert after.total_macs == report.macs_after < 0.4 * report.macs_before
    assert after.total_params < graph_cost(model).total_params
    assert after.peak_activation_bytes < graph_cost(model).peak_activation_bytes
    feeds = _feeds(make())
    out = run_ort(result.model, feeds)[0]
    assert out.shape == run_ort(model, feeds)[0].shape and np.isfinite(out).all()


def test_importance_removes_the_weakest_channels():
    # conv_a's channels 1 and 3 have tiny filters: L1 pruning at 50 % removes exactly them,
    # so the Relu'd output of the kept channels is unchanged.
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    w[[1, 3]] *= 1e-3
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a"),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="conv_b")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 5])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(RNG.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")])
    result = PruneChannelsPass(0.5)(to_ir(model))
    pruned_w = next(n for n in result.model.graph if n.name == "conv_a").inputs[1].const_value.numpy()
    np.testing.assert_array_equal(pruned_w, w[[0, 2]])
    feeds = _feeds(model)
    np.testing.assert_allclose(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0],
                               rtol=1e-2, atol=1e-2)


def test_alignment_rounds_kept_counts_up():
    pruner = PruneChannelsPass(0.3, alignment=8)
    pruner(to_ir(model_zoo.resnet_like()))
    assert all(g.after % 8 == 0 and g.after >= g.before * 0.7 for g in pruner.report.groups)


def test_compress_pipeline_folds_bn_then_prunes():
    result = compress_graph(to_ir(model_zoo.resnet_like()), 0.3)
    names = [(s.name, s.modified) for s in result.steps]
    assert ("fold-batchnorm", True) in names and ("prune-channels", True) in names
    assert "BatchNormalization" not in [n.op_type for n in result.model.graph]
    assert result.pruning.macs_after < 0.7 * result.pruning.macs_before


def test_per_layer_ratio_file(tmp_path):
    path = tmp_path / "ratios.json"
    path.write_text('{"Conv16": 0.5}')
    ratios = parse_ratios(str(path))
    result = compress_graph(to_ir(model_zoo.resnet_like()), ratios)
    changes = {g.group: (g.before, g.after) for g in result.pruning.groups}
    assert changes["Conv16"] == (16, 8) and changes["Conv42"] == (32, 32)


def test_bad_ratios_are_clear_errors(tmp_path):
    for bad in ["1.0", "-0.1", "1.5"]:
        with pytest.raises(CompressionError, match=r"outside \[0, 1\)"):
            parse_ratios(bad)
    (tmp_path / "r.json").write_text('{"NoSuchLayer": 0.5}')
    with pytest.raises(CompressionError, match="NoSuchLayer.*prunable: Conv16"):
        compress_graph(to_ir(model_zoo.resnet_like()), parse_ratios(str(tmp_path / "r.json")))
    with pytest.raises(CompressionError, match="neither a ratio"):
        parse_ratios(str(tmp_path / "missing.json"))


def _single_conv_to_output():
    return make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="only")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")])


def test_nothing_prunable_is_reported_not_raised():
    result = compress_graph(to_ir(_single_conv_to_output()), 0.3)
    assert result.pruning.groups == [] and result.pruning.frozen_layers
    assert result.pruning.macs_after == result.pruning.macs_before


def test_transformer_heads_and_ffn_units_prune_exactly_and_refit():
    """Dropping a head (FFN unit) is dropping its rows of the output projection (of W2)."""
    proto = model_zoo.transformer_block()  # 4 heads of 16, FFN 64 -> 128 -> 64
    model = to_ir(proto)
    result = compress_graph(model, 0.5)
    groups = {g.group.split(" ", 1)[1]: g for g in result.pruning.groups}
    assert set(groups) == {"(attention heads)", "(FFN hidden)"}
    assert (groups["(attention heads)"].before, groups["(attention heads)"].after) == (4, 2)
    assert (groups["(FFN hidden)"].before, groups["(FFN hidden)"].after) == (128, 64)
    kept = result.pruning.kept
    ffn_kept = next(v for v in kept.values() if len(v) == 64 and max(v) >= 64)
    head_columns = next(v for v in kept.values() if len(v) == 32 and max(v) < 64)
    assert len({c // 16 for c in head_columns}) == 2  # whole heads
    assert sum(1 for v in kept.values() if v == head_columns) == 3  # Q, K and V alike
    # The same computation: the original with the dropped rows of Wo and W2 zeroed.
    reference = onnx.ModelProto()
    reference.CopyFrom(proto)
    inits = {t.name: t for t in reference.graph.initializer}
    matmuls = [n for n in reference.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    out_proj = next(n for n in matmuls if numpy_helper.to_array(inits[n.input[1]]).shape == (64, 64)
                    and any(u.op_type == "Reshape" for u in reference.graph.node
                            if n.input[0] in u.output))
    down = next(n for n in matmuls if numpy_helper.to_array(inits[n.input[1]]).shape == (128, 64))
    for node, keep, size in ((out_proj, head_columns, 64), (down, ffn_kept, 128)):
        array = numpy_helper.to_array(inits[node.input[1]]).copy()
        array[[j for j in range(size) if j not in keep]] = 0
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(array, node.input[1]))
    x = RNG.standard_normal((1, 16, 64)).astype(np.float32)
    np.testing.assert_allclose(run_ort(result.model, {"input": x})[0],
                               run_ort(reference, {"input": x})[0], rtol=1e-4, atol=1e-4)
    # Reconstruction refits the changed MatMuls (a bias Add after each) into a valid graph.
    batches = [{"input": RNG.standard_normal((1, 16, 64)).astype(np.float32)} for _ in range(6)]
    refit = compress_graph(model, 0.5, reconstruct_with=batches)
    assert len(refit.reconstruction.fitted) >= 5
    assert np.isfinite(run_ort(refit.model, {"input": x})[0]).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", model_zoo.LIGHT_MODELS)
def test_light_models_prune_at_30_percent(name, tmp_path):
    onnx.save(model_zoo.light_model(name), tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx")
    result = compress_graph(model, 0.3)
    report = result.pruning
    # The reported MACs are the pruned model's MACs.
    assert graph_cost(result.model).total_macs == report.macs_after
    feeds = {model.graph.inputs[0].name:
             np.random.default_rng(0).standard_normal(list(model.graph.inputs[0].shape)).astype(np.float32)}
    out = run_ort(result.model, feeds)[0]
    assert np.isfinite(out).all()
    if name == "shufflenet":  # shuffles couple a slot of every group: coarse, 20 % of MACs
        assert report.macs_after < 0.85 * report.macs_before
    elif name == "bvlc_alexnet":  # grouped convs freeze most layers; the FC layers prune
        assert report.macs_after < report.macs_before
    else:
        assert report.macs_after < 0.7 * report.macs_before


def test_activation_importance_finds_channels_relu_always_zeroes():
    from hwcomp.compress.driver import _activation_means

    # Channel 0 has the largest filter, but a bias of -1000 means ReLU always zeroes it.
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    w[0] *= 10
    b = np.array([-1000, 0, 0, 0], np.float32)
    model = to_ir(make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["a"], name="conv_a"),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="conv_b")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(RNG.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")]))
    batches = [{"x": RNG.standard_normal((1, 3, 5, 5)).astype(np.float32)} for _ in range(4)]
    means = _activation_means(model, batches)
    assert means["r"][0] == 0.0
    by_activation = compress_graph(model, 0.25, "activation", activation_means=means).model
    by_norm = compress_graph(model, 0.25, "l1").model
    kept_bias = [n.inputs[2].const_value.numpy() for n in by_activation.graph if n.name == "conv_a"][0]
    assert -1000 not in kept_bias  # the dead channel went
    norm_bias = [n.inputs[2].const_value.numpy() for n in by_norm.graph if n.name == "conv_a"][0]
    assert -1000 in norm_bias  # L1 kept it for its large weights


def test_grouped_conv_prunes_the_same_slot_in_every_group_exactly():
    """A ResNeXt-style block: pruned == the original with the removed filters zeroed."""
    rng = np.random.default_rng(5)
    arrays = {"w1": (16, 8, 1, 1), "b1": (16,), "w2": (16, 4, 3, 3), "b2": (16,), "w3": (8, 16, 1, 1)}
    weights = {n: (rng.standard_normal(shape) * 0.5).astype(np.float32) for n, shape in arrays.items()}
    proto = make_model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="reduce"),
         helper.make_node("Relu", ["a"], ["ra"]),
         helper.make_node("Conv", ["ra", "w2", "b2"], ["g"], group=4, pads=[1, 1, 1, 1],
                          name="grouped"),
         helper.make_node("Relu", ["g"], ["rg"]),
         helper.make_node("Conv", ["rg", "w3"], ["y"], name="expand")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        [numpy_helper.from_array(a, n) for n, a in weights.items()])
    result = compress_graph(to_ir(proto), 0.5)
    kept = result.pruning.kept
    grouped = next(n for n in result.model.graph if n.name == "grouped")
    assert grouped.attributes.get_int("group") == 4
    assert list(grouped.inputs[1].const_value.numpy().shape) == [8, 2, 3, 3]  # 2 slots a group
    for tensor in ("a", "g"):  # the same slots in each of the 4 groups of 4
        slots = [{c % 4 for c in kept[tensor] if c // 4 == g} for g in range(4)]
        assert len(kept[tensor]) == 8 and all(s == slots[0] for s in slots), kept[tensor]
    zeroed = dict(weights)
    for tensor, weight, bias in (("a", "w1", "b1"), ("g", "w2", "b2")):
        removed = [c for c in range(16) if c not in kept[tensor]]
        zeroed[weight] = zeroed[weight].copy()
        zeroed[bias] = zeroed[bias].copy()
        zeroed[weight][removed] = 0
        zeroed[bias][removed] = 0
    reference = onnx.ModelProto()
    reference.CopyFrom(proto)
    del reference.graph.initializer[:]
    reference.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in zeroed.items())
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run_ort(result.model, {"x": x})[0], run_ort(reference, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


def test_channel_shuffle_prunes_the_same_slot_of_every_group_exactly():
    """Conv -> Reshape [N, G, C/G, H, W] -> Transpose -> Reshape -> Conv, pruned exactly."""
    rng = np.random.default_rng(9)
    weights = {"w1": (rng.standard_normal((8, 3, 1, 1)) * 0.5).astype(np.float32),
               "b1": rng.standard_normal(8).astype(np.float32),
               "w2": (rng.standard_normal((4, 8, 1, 1)) * 0.5).astype(np.float32)}
    shapes = {"split": np.array([1, 2, 4, 4, 4], np.int64), "back": np.array([1, 8, 4, 4], np.int64)}
    proto = make_model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="first"),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Reshape", ["r", "split"], ["s"]),
         helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3, 4]),
         helper.make_node("Reshape", ["t", "back"], ["u"]),
         helper.make_node("Conv", ["u", "w2"], ["y"], name="second")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(a, n) for n, a in {**weights, **shapes}.items()])
    result = compress_graph(to_ir(proto), 0.5)
    kept = result.pruning.kept["a"]
    assert len(kept) == 4 and {c % 4 for c in kept if c < 4} == {c % 4 for c in kept if c >= 4}
    assert result.pruning.kept["u"] == sorted(i * 2 + g for g in range(2) for i in {c % 4 for c in kept})
    zeroed = {**weights, "w1": weights["w1"].copy(), "b1": weights["b1"].copy()}
    removed = [c for c in range(8) if c not in kept]
    zeroed["w1"][removed] = 0
    zeroed["b1"][removed] = 0
    reference = onnx.ModelProto()
    reference.CopyFrom(proto)
    del reference.graph.initializer[:]
    reference.graph.initializer.extend(numpy_helper.from_array(a, n)
                                       for n, a in {**zeroed, **shapes}.items())
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(result.model, {"x": x})[0], run_ort(reference, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)
