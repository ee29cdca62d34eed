"""``--outputs NAME,...``: compile a detector up to its heads, its post-processing cut off."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests import model_zoo
from tests.conftest import require_tools, run_cli
from tests.helpers import run_ort
from tests.test_cli import _assert_clean_error


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "det.onnx"
    onnx.save(model_zoo.tiny_detector(), path)
    return path


def _check_cut_bundle(bundle, detector):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed"
    assert manifest["cut"] == {"outputs": ["boxes", "scores"], "removed_nodes": 3,
                               "removed_ops": {"NonMaxSuppression": 1, "ReduceMax": 1, "TopK": 1}}
    # The bundle's outputs are the heads, equal to the full model's heads in onnxruntime.
    expected = [np.load(bundle / "verify" / f"expected_output_{i:02d}.npy") for i in range(2)]
    assert not (bundle / "verify" / "expected_output_02.npy").exists()
    x = np.load(next((bundle / "verify").glob("input_00_*.npy")))
    full = run_ort(onnx.load(str(detector)), {"input": x})
    np.testing.assert_array_equal(expected[0], full[0])
    np.testing.assert_array_equal(expected[1], full[1])


def test_build_up_to_the_heads_for_host(detector, tmp_path):
    proc = run_cli("build", str(detector), "-t", "host", "-o", str(tmp_path), "--outputs",
                   "boxes,scores", "--json", str(tmp_path / "build.json"))
    assert proc.returncode == 0, proc.stderr
    assert "cut at: boxes, scores (3 node(s) after them removed: 1 NonMaxSuppression" in proc.stdout
    _check_cut_bundle(tmp_path / "det-host", detector)
    summary = json.loads((tmp_path / "build.json").read_text())  # build --json
    assert summary["schema"] == "hwcomp-build/1" and summary["target"]["name"] == "host"
    assert summary["verification"]["status"] == "passed"
    assert summary["cut"]["outputs"] == ["boxes", "scores"] and summary["compression"] is None


@pytest.mark.cross
def test_build_up_to_the_heads_for_a_microcontroller(detector, tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    proc = run_cli("build", str(detector), "-t", "cortex-m7", "-o", str(tmp_path), "--outputs",
                   "boxes,scores")
    assert proc.returncode == 0, proc.stderr
    _check_cut_bundle(tmp_path / "det-cortex-m7", detector)


def test_analyze_and_compress_take_the_cut(detector, tmp_path):
    proc = run_cli("analyze", str(detector), "-t", "cortex-m7", "--outputs", "boxes,scores",
                   "--json", str(tmp_path / "a.json"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["cut"]["removed_ops"] == {"NonMaxSuppression": 1, "ReduceMax": 1, "TopK": 1}
    assert not any(layer["op"] in ("NonMaxSuppression", "TopK") for layer in doc["layers"])
    out = tmp_path / "small.onnx"
    proc = run_cli("compress", str(detector), "-o", str(out), "-t", "host", "--outputs",
                   "boxes,scores", "--prune", "0.25")
    assert proc.returncode == 0, proc.stderr
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["boxes", "scores"]


def test_a_bad_output_name_lists_candidates(detector, tmp_path):
    proc = run_cli("build", str(detector), "-t", "host", "-o", str(tmp_path), "--outputs",
                   "boxes,scors")
    _assert_clean_error(proc, "--outputs scors", "no tensor of that name", "close: scores")
    assert not list(tmp_path.iterdir())
    _assert_clean_error(run_cli("analyze", str(detector), "-t", "host", "--outputs", "boxes,,x"),
                        "empty tensor name")
    _assert_clean_error(run_cli("analyze", str(detector), "-t", "host", "--outputs",
                                "boxes,boxes"), "boxes twice")


def test_the_whole_detector_is_refused_at_its_nms_with_the_way_around(detector, tmp_path):
    proc = run_cli("build", str(detector), "-t", "host", "-o", str(tmp_path))
    _assert_clean_error(proc, "node 'nms' (op NonMaxSuppression)", "--outputs", code=4)
    assert not list(tmp_path.iterdir())
