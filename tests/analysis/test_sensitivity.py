import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.analysis.sensitivity import (
    fake_quant_int8,
    find_layers,
    measure_sensitivity,
    parse_action,
    prune_channels,
    truncate_rank,
)
from tests import model_zoo
from tests.helpers import make_model, to_ir

RNG = np.random.default_rng(0)


def _batches(shape, count=6, seed=1):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def _twin_model():
    # Two parallel convs on the same input with the same weights, except that "spiky" has
    # one planted outlier per output channel.
    clean = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.2
    spiky = clean.copy()
    spiky[:, 0, 0, 0] = 12.0
    return to_ir(make_model(
        [helper.make_node("Conv", ["input", "w_clean"], ["a"], pads=[1, 1, 1, 1], name="clean"),
         helper.make_node("Conv", ["input", "w_spiky"], ["b"], pads=[1, 1, 1, 1], name="spiky"),
         helper.make_node("Concat", ["a", "b"], ["y"], axis=1)],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        [numpy_helper.from_array(clean, "w_clean"), numpy_helper.from_array(spiky, "w_spiky")]))


def test_planted_outliers_lower_int8_sqnr():
    report = measure_sensitivity(_twin_model(), _batches((1, 4, 8, 8)), actions=["int8", "fp16"])
    table = report.table()
    assert table["spiky"]["int8"].sqnr_db < table["clean"]["int8"].sqnr_db - 6
    assert table["clean"]["fp16"].sqnr_db > table["clean"]["int8"].sqnr_db


def test_no_op_actions_reproduce_the_output_exactly():
    report = measure_sensitivity(to_ir(model_zoo.resnet_like()), _batches((1, 3, 32, 32), 3),
                                 actions=["prune0", "rank100"])
    assert report.results and all(r.exact and r.sqnr_db is None and r.cosine == 1.0
                                  for r in report.results)
    assert report.notes == []


def test_every_layer_and_action_is_measured_and_jobs_agree():
    model = to_ir(model_zoo.mobilenet_like())
    batches = _batches((1, 3, 32, 32), 3)
    one = measure_sensitivity(model, batches, jobs=1)
    two = measure_sensitivity(model, batches, jobs=2)
    assert len(one.layers) == len(find_layers(model)) == 11
    assert len(one.results) == 11 * 6
    for a, b in zip(one.results, two.results, strict=True):
        assert (a.layer, a.action) == (b.layer, b.action)
        assert a.cosine == pytest.approx(b.cosine, abs=1e-6)
    prune = {r.action: r.sqnr_db for r in one.results if r.layer == one.layers[3]}
    assert prune["prune50"] < prune["prune25"]


def test_labels_give_accuracy():
    model = to_ir(model_zoo.resnet_like())
    batches = _batches((1, 3, 32, 32), 4)
    from tests.helpers import run_ort

    labels = np.array([int(np.argmax(run_ort(model, b)[0])) for b in batches])
    report = measure_sensitivity(model, batches, labels=labels, actions=["prune50"])
    assert report.baseline_accuracy == 1.0
    assert all(r.accuracy is not None and 0 <= r.accuracy <= 1 for r in report.results)


def test_weight_transformations():
    w = RNG.standard_normal((6, 5)).astype(np.float32)
    q = fake_quant_int8(w, 0)
    assert np.abs(q - w).max() <= np.abs(w).max(axis=1).max() / 127 / 2 + 1e-6
    assert len(np.unique(q[0])) <= 255
    pruned, bias = prune_channels(w, np.ones(6, np.float32), 0, 0.5)
    assert (np.abs(pruned).sum(axis=1) == 0).sum() == 3 and (bias == 0).sum() == 3
    assert np.linalg.matrix_rank(truncate_rank(w, 0, 0.4)) == 2
    assert np.array_equal(truncate_rank(w, 0, 1.0), w)
    assert parse_action("prune30") == ("prune", 0.3)
    with pytest.raises(ValueError, match="prune<P>"):
        parse_action("prune200")
