import numpy as np

from hwcomp.analysis.sensitivity import metrics
from hwcomp.compress.pipeline import compress_graph
from hwcomp.passes.reconstruct import ReconstructPass
from hwcomp.targets import load_target
from tests import model_zoo
from tests.helpers import run_ort, to_ir


def _batches(count, seed):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(count)]


def _sqnr(reference_model, model, batches):
    reference = [run_ort(reference_model, b)[0] for b in batches]
    return metrics(reference, [run_ort(model, b)[0] for b in batches], None)[0]


def test_reconstruction_recovers_pruned_outputs_on_held_out_samples():
    original = to_ir(model_zoo.resnet_like())
    fit, held_out = _batches(12, 1), _batches(4, 99)
    plain = compress_graph(original, 0.3)
    refit = compress_graph(original, 0.3, reconstruct_with=fit)
    report = refit.reconstruction
    assert report is not None and len(report.fitted) >= 6
    # Errors are measured on held-out calibration batches; a refit is kept only where it helps.
    assert all(f.held_out for f in report.fitted)
    assert all((f.error_after < f.error_before) == f.kept for f in report.fitted)
    assert sum(f.kept for f in report.fitted) >= 5
    # Structure is the pruned one; only weight values changed.
    assert [n.op_type for n in refit.model.graph] == [n.op_type for n in plain.model.graph]
    before, after = _sqnr(original, plain.model, held_out), _sqnr(original, refit.model, held_out)
    assert after > before + 10, (before, after)


def test_reconstruction_refits_the_second_low_rank_factor():
    original = to_ir(model_zoo.resnet_like())
    result = compress_graph(original, lowrank=0.6, target=load_target("arm-a72"),
                      reconstruct_with=_batches(12, 1))
    fitted = {f.layer for f in result.reconstruction.fitted}
    split = {s.layer for s in result.lowrank.split}
    assert split and split <= fitted
    held_out = _batches(4, 99)
    assert _sqnr(original, result.model, held_out) > _sqnr(original, result.before_reconstruction,
                                                         held_out)


def test_unchanged_models_are_not_touched_and_depthwise_is_reported():
    original = to_ir(model_zoo.mobilenet_like())
    untouched = ReconstructPass(original, _batches(2, 1))(to_ir(model_zoo.mobilenet_like()))
    assert not untouched.modified
    result = compress_graph(original, 0.5, reconstruct_with=_batches(8, 1))
    skipped = result.reconstruction.skipped
    assert skipped and all(reason == "grouped or depthwise convolution" for reason in skipped.values())


def test_a_refit_that_makes_held_out_outputs_worse_is_not_kept():
    """Few noisy fitting rows: least squares fits the noise; the layer keeps its weight."""
    from onnx import TensorProto, helper, numpy_helper

    from hwcomp.passes.reconstruct import _refit
    from tests.helpers import make_model

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    model = to_ir(make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [numpy_helper.from_array(weight, "w")]))
    node = next(iter(model.graph))
    inputs = [rng.standard_normal((3, 8)).astype(np.float32) for _ in range(4)]
    # Fitting batches: the true map plus large noise; the held-out batch: the true map.
    outputs = [x @ weight + 3 * rng.standard_normal((3, 4)).astype(np.float32) for x in inputs[:3]]
    outputs.append(inputs[3] @ weight)
    fit = _refit(node, model.graph, inputs, outputs)
    assert fit.held_out and not fit.kept and fit.error_after > fit.error_before
    assert np.array_equal(node.inputs[1].const_value.numpy(), weight)


def test_fewer_rows_than_parameters_solve_the_same_ridge_problem_in_its_small_form(monkeypatch):
    """X X^T (rows x rows) instead of X^T X: 9 rows of VGG-19's fc6 built a 2.6 GB system."""
    from hwcomp.passes import reconstruct

    original = to_ir(model_zoo.resnet_like())
    fit = _batches(3, 1)  # 3 x 8 x 8 = 192 rows < 289 parameters of the 3x3 convs at 8x8
    solved = {}
    for name, solver in (("dual", reconstruct._solve_dual), ("normal", reconstruct._solve_normal)):
        monkeypatch.setattr(reconstruct, "_solve_dual", solver if name == "dual" else _normal)
        result = compress_graph(original, 0.3, reconstruct_with=fit)
        solved[name] = {f.layer: (f.error_before, f.error_after) for f in result.reconstruction.fitted}
    assert solved["dual"].keys() == solved["normal"].keys()
    for layer, (before, after) in solved["dual"].items():
        assert before == solved["normal"][layer][0]
        np.testing.assert_allclose(after, solved["normal"][layer][1], rtol=1e-4, atol=1e-7)


def _normal(node, pairs, weight):
    from hwcomp.passes import reconstruct

    features, targets = next(reconstruct._row_chunks(node, pairs, weight))
    return reconstruct._solve_normal(node, pairs, weight, features.shape[1] + 1, targets.shape[1])


def test_a_system_too_large_to_solve_is_skipped_with_the_numbers(monkeypatch):
    from hwcomp.passes import reconstruct

    monkeypatch.setattr(reconstruct, "MAX_SYSTEM_BYTES", 1 << 16)
    result = compress_graph(to_ir(model_zoo.resnet_like()), 0.3, reconstruct_with=_batches(4, 1))
    skipped = result.reconstruction.skipped
    assert len(skipped) >= 4
    assert all("least-squares system" in why and "above the 0.1 MB limit" in why
               for why in skipped.values())
    assert len(result.reconstruction.fitted) <= 3  # the stem and head fit in 64 KB
