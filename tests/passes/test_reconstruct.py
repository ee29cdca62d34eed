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
    assert all(f.error_after <= f.error_before + 1e-6 for f in report.fitted)
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
