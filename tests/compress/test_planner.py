"""--optimize: one planner for pruning ratios and precisions under accuracy and latency budgets."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from hwcomp import model as model_io
from hwcomp.compress.planner import (
    PlanBudgetError,
    _at_precision,
    parse_latency_budget,
    plan_jointly,
)
from hwcomp.errors import EXIT_BUDGET, OptionError
from hwcomp.targets import load_target
from tests.conftest import REPO, run_cli
from tests.digits import digits_split, write_calibration
from tests.test_cli import _assert_clean_error

DIGITS = REPO / "tests" / "data" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("optimize"), 256)


@pytest.fixture(scope="module")
def digits_split_batches(calibration):
    model = model_io.load_model(DIGITS, {"image": (1, 1, 8, 8)})
    specs = model_io.graph_inputs(model)
    batches = model_io.calibration_batches(
        specs, model_io.load_calibration(calibration / "calib.npz", specs))
    fit, check = model_io.split_held_out(batches)
    labels = np.load(calibration / "labels.npy")[model_io.sample_count(fit):]
    return model, fit, check, labels


@pytest.fixture(scope="module")
def m7_plan(digits_split_batches):
    model, fit, check, labels = digits_split_batches
    return plan_jointly(model, load_target("cortex-m7"), "latency", fit, check, labels,
                        accuracy_budget=0.01)


def test_plan_meets_the_budget_and_beats_each_transformation_alone(m7_plan):
    plan = m7_plan
    assert plan.metric.startswith("top-1 accuracy drop") and plan.loss <= plan.budget == 0.01
    assert plan.ratios and set(plan.precisions.values()) == {"int8"}
    chosen = [c for c in plan.candidates if c.chosen]
    assert len(chosen) == 1 and chosen[0].ratios == plan.ratios
    # Prune-only and precision-only plans were measured too; none within the budget is faster.
    alone = [c for c in plan.candidates if c.within and c.label.startswith(("pruning", "precision"))]
    assert alone and all(plan.costs.latency_s <= c.costs.latency_s for c in alone)
    assert plan.costs.latency_s < plan.baseline.latency_s / 2.5
    assert plan.costs.weight_bytes < plan.baseline.weight_bytes
    assert plan.costs.arena_bytes < plan.baseline.arena_bytes
    # Every setting measured alone is recorded with its loss and predicted saving.
    assert all(s.saving > 0 and s.loss <= plan.budget for s in plan.settings)
    assert {s.kind for s in plan.settings} >= {"prune", "precision"}
    json.dumps(plan.to_dict())


def test_latency_budget_fp32_misses_is_met_within_the_accuracy_budget(digits_split_batches,
                                                                      m7_plan):
    model, fit, check, labels = digits_split_batches
    budget = m7_plan.baseline.latency_s / 3
    plan = plan_jointly(model, load_target("cortex-m7"), "latency", fit, check, labels,
                        accuracy_budget=0.01, latency_budget_s=budget)
    assert m7_plan.baseline.latency_s > budget >= plan.costs.latency_s
    assert plan.loss <= 0.01
    assert any("--latency-budget" in d for d in plan.decisions)
    with pytest.raises(PlanBudgetError, match="cannot be met within the accuracy budget"):
        plan_jointly(model, load_target("cortex-m7"), "latency", fit, check, labels,
                     accuracy_budget=0.01, latency_budget_s=m7_plan.costs.latency_s / 100)


def test_size_objective_without_precision_prunes_only(digits_split_batches):
    model, fit, check, labels = digits_split_batches
    plan = plan_jointly(model, load_target("x86-avx2"), "size", fit, check, labels,
                        accuracy_budget=0.01, with_precision=False)
    assert plan.precisions == {} and plan.ratios
    assert plan.costs.weight_bytes < plan.baseline.weight_bytes and plan.loss <= 0.01


def test_sqnr_floor_without_an_accuracy_budget(digits_split_batches):
    """No --accuracy-budget: the output SQNR against the original must stay above the floor."""
    model, fit, check, _ = digits_split_batches
    plan = plan_jointly(model, load_target("cortex-m7"), "latency", fit, check,
                        min_sqnr_db=30.0)
    assert "SQNR" in plan.metric and plan.budget == 0.0 and plan.loss == 0.0
    chosen = next(c for c in plan.candidates if c.chosen)
    assert chosen.costs.latency_s <= plan.baseline.latency_s


def test_precision_restates_bytes():
    from hwcomp.analysis.cost import NodeCost

    node = NodeCost("c", "Conv", (1, 8, 4, 4), 1000, 2000, 64, 256, 128, 512, "float32", "fp32")
    narrowed = _at_precision(node, "int8")
    assert narrowed.precision == "int8" and narrowed.weight_bytes == 64
    assert narrowed.input_bytes == 32 and narrowed.output_bytes == 128
    assert _at_precision(node, "fp32") is node


def test_latency_budget_parsing():
    assert parse_latency_budget("5") == pytest.approx(5e-3)
    assert parse_latency_budget("5ms") == pytest.approx(5e-3)
    assert parse_latency_budget("800us") == pytest.approx(8e-4)
    assert parse_latency_budget(None) is None
    for bad in ["fast", "-1ms", "0", "nan"]:
        with pytest.raises(OptionError, match="latency-budget"):
            parse_latency_budget(bad)


def test_build_optimize_latency_on_cortex_m7(calibration, tmp_path):
    """The whole path: plan, prune + reconstruct, quantize as planned, build, count, report.

    The bundle's accuracy on the 360 held-out digits (never seen by the planner) stays
    within 1 % of the original's.
    """
    out = tmp_path / "out"
    proc = run_cli("build", str(DIGITS), "-t", "cortex-m7", "-o", str(out), "--optimize",
                   "latency", "--calib", str(calibration / "calib.npz"), "--labels",
                   str(calibration / "labels.npy"), "--accuracy-budget", "1%",
                   "--input-shape", "image=1x1x8x8")
    assert proc.returncode == 0, proc.stderr
    assert "plan (latency):" in proc.stdout and "bundle counted" in proc.stdout
    assert "precision (planned):" in proc.stdout
    bundle = out / "digits_cnn-cortex-m7"
    manifest = json.loads((bundle / "manifest.json").read_text())
    plan = manifest["plan"]
    assert plan["loss"] <= plan["budget"] and plan["ratios"] and plan["precisions"]
    assert plan["measured"]["source"] == "counted" and plan["measured"]["seconds"] > 0
    # The best predicted plans were built and counted; the fastest counted one was kept.
    timed = [c for c in plan["candidates"] if c["measured_s"] is not None]
    chosen = next(c for c in plan["candidates"] if c["chosen"])
    assert len(timed) >= 2 and chosen["measured_s"] == min(c["measured_s"] for c in timed)
    assert chosen["measured_s"] == pytest.approx(plan["measured"]["seconds"])
    assert any(d.startswith("built and timed") for d in plan["decisions"])
    assert manifest["precision"]["mode"] == "planned"
    assert {x["name"]: x["precision"] for x in manifest["precision"]["layers"]
            if x["precision"] != "fp32"} == plan["precisions"]
    page = (bundle / "plan.html").read_text()
    assert 'id="plot-pareto"' in page and "data:image/png;base64," in page
    assert page.count('class="chosen"') == 1

    _, (x_test, y_test) = digits_split()

    def accuracy(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.mean([session.run(None, {"image": x_test[i:i + 1]})[0].argmax() == y_test[i]
                        for i in range(len(y_test))])

    assert accuracy(bundle / "model.optimized.onnx") >= accuracy(DIGITS) - 0.01


def test_unmeetable_latency_budget_fails_writing_nothing(calibration, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("build", str(DIGITS), "-t", "cortex-m7", "-o", str(out), "--optimize",
                   "latency", "--calib", str(calibration / "calib.npz"), "--labels",
                   str(calibration / "labels.npy"), "--accuracy-budget", "1%",
                   "--latency-budget", "1us", "--input-shape", "image=1x1x8x8")
    _assert_clean_error(proc, "--latency-budget 0.001 ms cannot be met", code=EXIT_BUDGET)
    assert "the fastest plan found" in proc.stderr
    assert not (out / "digits_cnn-cortex-m7").exists()


def test_compress_optimize_writes_the_plan_report(calibration, tmp_path):
    proc = run_cli("compress", str(DIGITS), "-o", str(tmp_path / "small.onnx"), "-t", "x86-avx2",
                   "--optimize", "latency", "--calib", str(calibration / "calib.npz"),
                   "--labels", str(calibration / "labels.npy"), "--accuracy-budget", "1%",
                   "--plan-report", str(tmp_path / "plan.html"), "--input-shape",
                   "image=1x1x8x8")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "small.onnx").is_file() and "plan report:" in proc.stdout
    assert "data:image/png;base64," in (tmp_path / "plan.html").read_text()


@pytest.mark.parametrize(("extra", "message"), [
    (["--optimize", "latency", "--prune", "0.5"], "--optimize chooses pruning and low-rank itself"),
    (["--latency-budget", "5ms"], "--latency-budget constrains the planner"),
    (["--optimize", "latency"], "--optimize latency needs --calib"),
    (["--optimize", "latency", "--calib-random", "8", "--precision", "int8"],
     "--optimize chooses each layer's precision itself"),
    (["--optimize", "latency", "--calib-random", "8", "--latency-budget", "soon"],
     "--latency-budget 'soon' is not a time"),
])
def test_option_errors(tmp_path, extra, message):
    proc = run_cli("build", str(REPO / "tests" / "data" / "example_cnn.onnx"), "-t", "cortex-m7",
                   "-o", str(tmp_path / "out"), *extra)
    _assert_clean_error(proc, message)
    assert not (tmp_path / "out").exists()


def test_plan_predicts_from_the_targets_measured_latency_table(digits_split_batches, tmp_path,
                                                               monkeypatch):
    """After hwcomp profile, the plan's costs come from measured layers and a fit on them."""
    import os

    cache = tmp_path / "cache"
    monkeypatch.setenv("HWCOMP_CACHE_DIR", str(cache))
    done = run_cli("profile", str(DIGITS), "-t", "x86-avx2", "--runs", "5", "--input-shape",
                   "image=1x1x8x8", env={**os.environ, "HWCOMP_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stderr
    model, fit, check, labels = digits_split_batches
    plan = plan_jointly(model, load_target("x86-avx2"), "latency", fit, check, labels,
                        accuracy_budget=0.01, with_precision=False)
    assert plan.baseline.sources.get("measured", 0) >= 4  # the four convolutions at least
    pruned = [c for c in plan.candidates if c.ratios]
    assert pruned and all(c.costs.sources.get("predicted", 0) > 0 for c in pruned)


def test_low_rank_is_a_setting_and_compresses_as_planned(digits_split_batches):
    """Split layers are planned like pruned groups; the compressed model has the factors."""
    from hwcomp.compress.pipeline import compress_graph

    model, fit, check, labels = digits_split_batches
    plan = plan_jointly(model, load_target("x86-avx2"), "latency", fit, check, labels,
                        accuracy_budget=0.01, with_precision=False)
    ranks = [s for s in plan.settings if s.kind == "rank"]
    assert ranks and all(0 < float(s.value) < 1 and s.loss <= 0.01 for s in ranks)
    split = next(c for c in plan.candidates if c.label.startswith("low-rank only"))
    assert split.ranks and not split.ratios and split.costs.latency_s < plan.baseline.latency_s
    result = compress_graph(model, lowrank=split.ranks, target=load_target("x86-avx2"),
                            alignment=8)
    assert result.lowrank is not None
    assert {change.layer for change in result.lowrank.split} == set(split.ranks)
