"""hwcomp validate: tensor-by-tensor comparison that names the first divergent layer."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hwcomp.validate import tensor_error
from tests.conftest import REPO, run_cli
from tests.test_cli import _assert_clean_error

DIGITS = REPO / "tests" / "data" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("validate")
    proc = run_cli("build", str(DIGITS), "-t", "host", "-o", str(out), "--input-shape",
                   "image=1x1x8x8")
    assert proc.returncode == 0, proc.stderr
    return out / "digits_cnn-host"


def test_a_clean_bundle_has_no_divergent_tensor(digits_bundle, tmp_path):
    proc = run_cli("validate", str(digits_bundle), "--model", str(DIGITS), "--json",
                   str(tmp_path / "v.json"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "v.json").read_text())
    assert doc["schema"] == "hwcomp-validate/1"
    compiled, graph = doc["comparisons"]
    assert compiled["first_divergent"] is None and graph["first_divergent"] is None
    # Every conv, ReLU and pool of the network compared, the output last.
    ops = [t["op"] for t in compiled["tensors"]]
    assert ops.count("Conv") == 4 and ops.count("Relu") == 4 and ops[-1] == "output"
    assert all(t["within"] and t["max_abs"] < 1e-4 for t in compiled["tensors"])
    assert "first divergent: none" in proc.stdout


def test_a_planted_divergence_is_found_at_its_layer(digits_bundle, tmp_path):
    # The "original" differs from what the bundle was built from at the third conv only:
    # everything before it matches, it and everything after it do not.
    model = onnx.load(str(DIGITS))
    conv = [n for n in model.graph.node if n.op_type == "Conv"][2]
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    planted = numpy_helper.to_array(weight).copy()
    planted[0] *= 3.0
    weight.CopyFrom(numpy_helper.from_array(planted, weight.name))
    onnx.save(model, tmp_path / "planted.onnx")
    proc = run_cli("validate", str(digits_bundle), "--model", str(tmp_path / "planted.onnx"),
                   "--json", str(tmp_path / "v.json"), "--all")
    assert proc.returncode == 0, proc.stderr  # the compiled graph itself is fine
    graph = json.loads((tmp_path / "v.json").read_text())["comparisons"][1]
    assert graph["first_divergent"] == conv.output[0]
    names = [t["tensor"] for t in graph["tensors"]]
    index = names.index(conv.output[0])
    assert all(t["within"] for t in graph["tensors"][:index])
    assert f"first divergent: {conv.output[0]} (Conv)" in proc.stdout


def test_tensor_error_figures():
    ref = np.array([1.0, -2.0, 3.0], np.float32)
    same = tensor_error("t", "Conv", ref, ref.copy(), 1e-4)
    assert same.within and same.max_abs == 0 and same.sqnr_db is None and same.cosine == 1.0
    off = tensor_error("t", "Conv", ref, ref + np.array([0, 0, 0.1], np.float32), 1e-4)
    assert not off.within and off.max_abs == pytest.approx(0.1, rel=1e-5)
    assert off.sqnr_db == pytest.approx(20 * np.log10(np.linalg.norm(ref) / 0.1), rel=1e-4)
    assert not tensor_error("t", "Conv", ref, ref[:2], 1e-4).within


def test_validate_refuses_a_folder_that_is_no_bundle(tmp_path):
    _assert_clean_error(run_cli("validate", str(tmp_path)), "not an hwcomp bundle", code=3)
