"""--prune auto: per-group ratios chosen under an accuracy budget."""

import json

import numpy as np
import pytest

from hwcomp import api
from hwcomp.compress.driver import CompressionOptions
from hwcomp.compress.pipeline import CompressionError, parse_budget
from hwcomp.compress.prune_plan import plan_pruning
from tests import model_zoo
from tests.conftest import REPO, run_cli
from tests.digits import write_calibration
from tests.helpers import to_ir
from tests.test_cli import _assert_clean_error

DIGITS = REPO / "tests" / "data" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("auto"), 192)


def test_auto_plan_meets_the_budget_and_cuts_macs(calibration, tmp_path):
    options = CompressionOptions(prune="auto", accuracy_budget="1%", calib=calibration / "calib.npz",
                                 labels=calibration / "labels.npy")
    outcome = api.compress(DIGITS, tmp_path / "auto.onnx", "arm-a72", options,
                           input_shapes={"image": (1, 1, 8, 8)})
    plan = outcome.plan
    assert plan is not None and plan.metric.startswith("top-1 accuracy drop")
    assert plan.loss <= 0.01 and plan.ratios
    assert outcome.macs_after < 0.7 * outcome.macs_before
    assert any("alone costs" in d for d in plan.decisions)


def test_zero_budget_without_labels_uses_agreement():
    model = to_ir(model_zoo.resnet_like())
    rng = np.random.default_rng(0)
    batches = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(6)]
    plan = plan_pruning(model, 0.0, batches[:4], batches[4:])
    assert plan.metric.startswith("top-1 disagreement with the original")
    assert plan.loss == 0.0


def test_nothing_prunable_is_a_decision_line():
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["out"], name="only")], "one",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])], [weight])
    model = to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                        ir_version=10))
    rng = np.random.default_rng(0)
    batches = [{"input": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(2)]
    plan = plan_pruning(model, 0.01, batches[:1], batches[1:])
    assert plan.ratios == {} and plan.decisions == ["nothing prunable: every group is frozen"]


def test_transformer_ffn_and_heads_are_planned():
    """--prune auto weighs a transformer's FFN hidden units and attention heads too."""
    model = to_ir(model_zoo.transformer_block())
    rng = np.random.default_rng(0)
    batches = [{"input": rng.standard_normal((1, 16, 64)).astype(np.float32)} for _ in range(8)]
    plan = plan_pruning(model, 0.2, batches[:6], batches[6:])
    assert plan.metric == "relative output error"  # a hidden state, not class scores
    assert any(d.startswith("MatMul68 (FFN hidden):") for d in plan.decisions)  # weighed
    assert any(name.endswith("(attention heads)") for name in plan.ratios)
    assert plan.loss <= 0.2


def test_budget_parsing():
    assert parse_budget("1%") == pytest.approx(0.01) and parse_budget("0.02") == 0.02
    for bad in ["abc", "150%", "-1%"]:
        with pytest.raises(CompressionError, match="accuracy-budget"):
            parse_budget(bad)


def test_auto_without_budget_is_an_error(tmp_path):
    proc = run_cli("compress", str(REPO / "tests" / "data" / "example_cnn.onnx"), "-o",
                   str(tmp_path / "s.onnx"), "--target", "host", "--prune", "auto")
    _assert_clean_error(proc, "--prune auto needs --accuracy-budget")


def test_auto_without_calibration_data_is_an_error(tmp_path):
    """Judged on random samples the budget means nothing: refuse rather than prune blind."""
    proc = run_cli("compress", str(REPO / "tests" / "data" / "example_cnn.onnx"), "-o",
                   str(tmp_path / "s.onnx"), "--target", "host", "--prune", "auto",
                   "--accuracy-budget", "1%")
    _assert_clean_error(proc, "--prune auto needs --calib")
    assert not (tmp_path / "s.onnx").exists()


def test_planning_on_random_samples_only_when_asked_and_then_said(tmp_path):
    """--calib-random N plans anyway, and the output and manifest say the figures are noise."""
    model = str(REPO / "tests" / "data" / "example_cnn.onnx")
    proc = run_cli("compress", model, "-o", str(tmp_path / "s.onnx"), "--target", "host",
                   "--prune", "auto", "--accuracy-budget", "1%", "--calib-random", "16")
    assert proc.returncode == 0, proc.stderr
    assert "--prune auto judged on 16 seeded RANDOM samples" in proc.stderr
    assert "held-out samples (RANDOM: 16 seeded samples (--calib-random" in proc.stdout

    both = run_cli("compress", model, "-o", str(tmp_path / "t.onnx"), "--target", "host",
                   "--prune", "0.25", "--calib", model, "--calib-random", "4")
    _assert_clean_error(both, "--calib-random 4 both given")
    negative = run_cli("compress", model, "-o", str(tmp_path / "t.onnx"), "--target", "host",
                       "--prune", "0.25", "--calib-random", "-1")
    _assert_clean_error(negative, "--calib-random -1")

    built = run_cli("build", model, "--target", "host", "-o", str(tmp_path / "out"),
                    "--precision", "int8", "--calib-random", "8")
    assert built.returncode == 0, built.stderr
    assert "--precision int8 judged on 8 seeded RANDOM samples" in built.stderr
    assert "planned on: RANDOM: 8 seeded samples" in built.stdout
    manifest = json.loads((tmp_path / "out" / "example_cnn-host" / "manifest.json").read_text())
    assert manifest["planned_on"].startswith("RANDOM: 8 seeded samples")
    assert manifest["precision"]["counts"]["int8"] > 0
