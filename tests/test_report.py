"""hwcomp analyze: the report (terminal, JSON, HTML) and its bad input, through the CLI."""

import json
import re

import numpy as np
import onnx
import pytest

from hwcomp import api, report
from tests import model_zoo
from tests.conftest import REPO, run_cli
from tests.test_cli import _assert_clean_error

EXAMPLE = str(REPO / "tests" / "data" / "example_cnn.onnx")


def test_analyze_table_json_and_html(tmp_path):
    data = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=data)
    np.save(tmp_path / "labels.npy", np.arange(6) % 10)
    proc = run_cli("analyze", EXAMPLE, "--target", "arm-a72", "--calib", str(tmp_path / "calib.npz"),
                   "--labels", str(tmp_path / "labels.npy"), "--json", str(tmp_path / "a.json"),
                   "--html", str(tmp_path / "a.html"), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Conv16" in proc.stdout and "int8 dB" in proc.stdout and "compute" in proc.stdout
    assert "GMACs" in proc.stdout and "baseline accuracy" in proc.stdout
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["schema"] == "hwcomp-analysis/1"
    assert doc["target"]["name"] == "arm-a72"
    assert doc["totals"]["macs"] == sum(layer["macs"] for layer in doc["layers"])
    conv = next(layer for layer in doc["layers"] if layer["op"] == "Conv")
    assert set(conv["sensitivity"]) == {"int8", "fp16", "prune25", "prune50", "rank50", "rank25"}
    assert conv["estimate"]["source"] == "roofline"
    assert doc["sensitivity"]["samples"] == 6 and not doc["sensitivity"]["random_calibration"]
    page = (tmp_path / "a.html").read_text()
    image = r'id="plot-(\w+)"><img alt="\w+" src="data:image/png;base64,([A-Za-z0-9+/=]{1000,})"'
    plots = re.findall(image, page)
    assert [name for name, _ in plots] == ["roofline", "layers", "memory", "sensitivity"]
    assert "<table id=\"layers\">" in page and "Conv16" in page


def test_cost_only_without_calibration(tmp_path):
    proc = run_cli("analyze", EXAMPLE, "--target", "cortex-m7", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    assert "int8 dB" not in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if "Conv" in line]) == 3
    assert "cortex-m7" in proc.stdout


def test_random_calibration_warns(tmp_path):
    proc = run_cli("analyze", EXAMPLE, "--target", "host", "--calib-random", "2",
                   "--actions", "int8,prune30", "--html", str(tmp_path / "a.html"))
    assert proc.returncode == 0, proc.stderr
    assert "unreliable" in proc.stderr and "RANDOM" in proc.stdout
    assert "prune30 dB" in proc.stdout
    page = (tmp_path / "a.html").read_text()
    assert '<p class="warning">Sensitivity was measured on seeded RANDOM samples' in page


def test_html_table_sorts_and_carries_sensitivity_and_the_boards_memory(tmp_path):
    """The layer table has each action's SQNR and sorts by any column; a microcontroller's
    page compares peak activations with its SRAM and weights with its flash."""
    proc = run_cli("analyze", EXAMPLE, "--target", "cortex-m7", "--calib-random", "2",
                   "--actions", "int8,prune50", "--html", str(tmp_path / "a.html"))
    assert proc.returncode == 0, proc.stderr
    assert "of the 512 KiB SRAM; weights" in proc.stdout
    page = (tmp_path / "a.html").read_text()
    assert "<th>int8 dB</th><th>prune50 dB</th>" in page
    assert 'id="layers"' in page and "addEventListener(\"click\"" in page
    assert "of the 512 KiB SRAM" in page and "class=\"warning\"" in page
    row = next(line for line in page.splitlines() if line.startswith("<tr><td>Conv4<"))
    assert row.count("<td>") == 11 + 2  # the layer's columns, then one per action


@pytest.mark.parametrize(("make", "fragments"), [
    (lambda d: d / "missing.npz", ["missing.npz", "no such"]),
    (lambda d: (d / "bad.npz").write_text("garbage") and d / "bad.npz", ["bad.npz"]),
    (lambda d: np.savez(d / "name.npz", image=np.zeros((2, 3, 32, 32), np.float32)) or d / "name.npz",
     ["name.npz", "'input'", "[1, 3, 32, 32]"]),
    (lambda d: np.savez(d / "shape.npz", input=np.zeros((2, 3, 28, 28), np.float32)) or d / "shape.npz",
     ["shape.npz", "[2, 3, 28, 28]", "[1, 3, 32, 32]"]),
])
def test_bad_calibration_is_named(tmp_path, make, fragments):
    proc = run_cli("analyze", EXAMPLE, "--target", "host", "--calib", str(make(tmp_path)))
    _assert_clean_error(proc, *fragments, code=3)


def test_labels_count_mismatch(tmp_path):
    np.savez(tmp_path / "calib.npz", input=np.zeros((4, 3, 32, 32), np.float32))
    np.save(tmp_path / "labels.npy", np.arange(3))
    proc = run_cli("analyze", EXAMPLE, "--target", "host", "--calib", str(tmp_path / "calib.npz"),
                   "--labels", str(tmp_path / "labels.npy"))
    _assert_clean_error(proc, "labels.npy", "[3]", "expected [4]", code=3)


def test_unknown_action(tmp_path):
    proc = run_cli("analyze", EXAMPLE, "--target", "host", "--calib-random", "1",
                   "--actions", "int4")
    _assert_clean_error(proc, "int4", "prune<P>")


@pytest.mark.slow
@pytest.mark.parametrize("name", model_zoo.LIGHT_MODELS)
def test_analyze_every_light_model(name, tmp_path):
    onnx.save(model_zoo.light_model(name), tmp_path / f"{name}.onnx")
    result = api.analyze(tmp_path / f"{name}.onnx", "arm-a72")
    assert result.cost.total_macs > 1e8 and result.cost.total_params > 1e6
    assert result.roofline.total_s > 0
    if name == "squeezenet":
        with_sens = api.analyze(tmp_path / f"{name}.onnx", "arm-a72", calib_random=1,
                                actions=("int8",))
        assert len(with_sens.sensitivity.results) == len(with_sens.sensitivity.layers) == 26


def test_analyze_learns_shapes_inference_cannot_reach(tmp_path):
    """A Resize whose scales depend on the data hides the Conv after it from shape
    inference: its MACs were counted as 0. Now they come from one onnxruntime run."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.helpers import make_model

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    base = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "base")
    zero = numpy_helper.from_array(np.array(0, np.float32), "zero")
    one = numpy_helper.from_array(np.array(1, np.float32), "one")
    nodes = [
        # scales = base * (0 * max(x) + 1): [1, 1, 2, 2] at run time, unknown statically.
        helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "one"], ["unit"]),
        helper.make_node("Mul", ["base", "unit"], ["scales"]),
        helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Conv", ["up", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
    ]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, "h", "w"])],
                       [weight, base, zero, one])
    onnx.save(model, tmp_path / "m.onnx")
    result = api.analyze(tmp_path / "m.onnx", "host")
    conv = next(n for n in result.cost.nodes if n.name == "conv")
    assert conv.output_shape == (1, 8, 16, 16)
    assert conv.macs == 8 * 16 * 16 * 3 * 9


def test_layers_as_compiled_fold_batchnorm_and_fuse_what_the_targets_kernels_fuse(
        tmp_path, monkeypatch):
    """--layers compiled (the default): BatchNorm folded into its conv, and the elementwise
    ops the target's kernels run after a layer are in its row (TVM on the host fuses the
    residual Add, hwcomp's Cortex-M kernels only the clamp); --layers onnx: every node.

    An empty cache: a latency table of this machine's (``hwcomp profile``) would give the
    estimates a fit of its own."""
    monkeypatch.setenv("HWCOMP_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "resnet.onnx"
    onnx.save(model_zoo.resnet_like(size=16, width=8), model)
    host = report.to_json(api.analyze(model, "host"))
    m7 = report.to_json(api.analyze(model, "cortex-m7"))
    written = report.to_json(api.analyze(model, "cortex-m7", layers="onnx"))
    assert sum(layer["op"] == "BatchNormalization" for layer in written["layers"]) == 6
    for doc in (host, m7):
        assert not any(layer["op"] == "BatchNormalization" for layer in doc["layers"])
        assert doc["layers_view"]["folded_batchnorms"] == 6
        assert doc["totals"]["macs"] == written["totals"]["macs"]
        # the activations live at each step: their maximum is the peak
        assert max(layer["live_bytes"] for layer in doc["layers"]) == \
            doc["totals"]["peak_activation_bytes"]
    host_ops = {row["name"]: row["op"] for row in report.compiled_layers(host["layers"])}
    m7_ops = {row["name"]: row["op"] for row in report.compiled_layers(m7["layers"])}
    assert host_ops["Conv4"] == m7_ops["Conv4"] == "Conv+Relu"
    assert host_ops["Conv28"] == "Conv+Add+Relu" and "Add36" not in host_ops
    assert m7_ops["Conv28"] == "Conv" and m7_ops["Add36"] == "Add"
    fused = next(layer for layer in host["layers"] if layer["name"] == "Add36")
    assert fused["fused_into"] == "Conv28" and fused["estimate"]["source"] == "fused"
    assert fused["estimate"]["time_s"] == 0
    assert host["totals"]["estimated_time_s"] < report.to_json(
        api.analyze(model, "host", layers="onnx"))["totals"]["estimated_time_s"]


@pytest.mark.cross
def test_a_bundles_arena_over_its_kernel_calls_is_reported(tmp_path):
    """analyze --bundle on a Cortex-M bundle: the live arena bytes at each kernel call (the
    bundle's own plan), whose maximum is the plan's lower bound, in JSON, table and page."""
    from tests.conftest import require_tools

    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    model = tmp_path / "resnet.onnx"
    onnx.save(model_zoo.resnet_like(size=16, width=8), model)
    bundle = api.build(model, "cortex-m7", tmp_path / "out").bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    proc = run_cli("analyze", str(model), "-t", "cortex-m7", "--bundle", str(bundle),
                   "--json", str(tmp_path / "a.json"), "--html", str(tmp_path / "a.html"))
    assert proc.returncode == 0, proc.stderr
    counted = json.loads((tmp_path / "a.json").read_text())["counted"]
    live = counted["arena_live_bytes_by_step"]
    assert len(live) == len(counted["steps"]) == len(manifest["layer_counts"]["steps"])
    assert max(live) == manifest["mcu"]["arena"]["lower_bound_bytes"] <= counted["arena_bytes"]
    assert "arena live" in proc.stdout and f"most live at one kernel call {max(live):,}" in \
        proc.stdout
    assert 'id="plot-memory"' in (tmp_path / "a.html").read_text()
