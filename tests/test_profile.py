"""hwcomp profile: each kernel's time on this machine (a host bundle, TVM's VM timing every
call) or its count on the emulated board (Cortex-M), recorded in the target's latency table."""

import json
import os

import numpy as np
import pytest

from hwcomp.profile import load_table, signature, table_path
from tests import model_zoo
from tests.conftest import require_tools, run_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own (the latency table is written there), runner cache shared."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("HWCOMP_CACHE_DIR", str(folder))
    return {**os.environ, "HWCOMP_CACHE_DIR": str(folder)}


def test_signature_drops_numbering_and_keeps_types():
    assert signature("fused_conv2d1_add3_relu1", ["float32[1x8x4x4]"]) == \
        "fused_conv2d_add_relu(float32[1x8x4x4])"
    assert signature("hwcomp_int8_c_conv_3", ["uint8[1x4]", "int8[2x4]"]) == \
        "hwcomp_int8_c_conv(uint8[1x4], int8[2x4])"
    assert signature("hwcomp_kernel_12", []) == signature("hwcomp_kernel_0", [])


def test_profile_times_each_kernel_of_a_host_bundle(tmp_path, cache):
    model = model_zoo.save(model_zoo.resnet_like(size=16, width=8), str(tmp_path / "tiny.onnx"))
    report = tmp_path / "profile.json"
    done = run_cli("profile", model, "-t", "host", "--runs", "5", "--json", str(report),
                   env=cache)
    assert done.returncode == 0, done.stderr
    assert "measured on this machine" in done.stdout and "roofline estimate" in done.stdout
    found = json.loads(report.read_text())
    assert found["source"] == "measured" and found["runs"] == 5
    kernels = found["kernels"]
    assert kernels and all(k["seconds"] > 0 and k["calls"] >= 1 for k in kernels)
    # The hook adds a little to each call: the kernels' sum is the whole inference's order.
    assert 0.2 * found["whole_s"] < found["kernels_s"] < 5 * found["whole_s"]
    table = json.loads(table_path("host").read_text())
    assert table["schema"] == "hwcomp-latency/1" and table["target"] == "host"
    assert {k["signature"] for k in kernels} <= set(table["entries"])
    entry = table["entries"][kernels[0]["signature"]]
    assert entry["source"] == "measured" and entry["model"] == "tiny.onnx"
    assert load_table("host") == table  # round trip
    # hwcomp's layer kernels know their MACs: each conv / matmul layer is in the table.
    assert sum(k["macs"] for k in kernels) > 0
    assert {entry["op"] for entry in table["layers"].values()} >= {"Conv"}

    # analyze reads it: the profiled model's layers measured (their epilogues fused into
    # them), another model's convolutions predicted from the measured sizes.
    doc = _analyze(model, tmp_path / "same.json", cache)
    sources = {layer["name"]: layer["estimate"]["source"] for layer in doc["layers"]}
    convs = [layer for layer in doc["layers"] if layer["op"] in ("Conv", "Gemm")]
    assert {sources[layer["name"]] for layer in convs} == {"measured"}
    assert "fused" in sources.values()
    # Each layer's time is its kernel call's (two layers of one shape share an entry).
    recorded = {round(e["seconds"], 12) for e in table["layers"].values()}
    assert {round(layer["estimate"]["time_s"], 12) for layer in convs} == recorded
    other = model_zoo.save(model_zoo.resnet_like(size=12, width=6), str(tmp_path / "other.onnx"))
    doc = _analyze(other, tmp_path / "other.json", cache)
    assert {layer["estimate"]["source"] for layer in doc["layers"]
            if layer["op"] == "Conv"} == {"predicted"}


def _analyze(model, report, env):
    done = run_cli("analyze", str(model), "-t", "host", "--json", str(report), env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(report.read_text())


def test_prediction_fits_relative_error_with_non_negative_terms():
    from hwcomp.profile import _fit

    def entry(macs, nbytes, seconds):
        return {"macs": macs, "bytes": nbytes, "seconds": seconds}

    assert _fit([entry(100, 10, 1.0), entry(200, 20, 2.0)]) is None  # two sizes: too few
    # seconds = 1e-3 * MACs + 2e-4 * bytes + 0.5, recovered exactly from four layers.
    points = [(100, 1000), (400, 500), (900, 4000), (50, 200)]
    fit = _fit([entry(m, b, 1e-3 * m + 2e-4 * b + 0.5) for m, b in points])
    assert (fit.a, fit.b, fit.c) == pytest.approx((1e-3, 2e-4, 0.5))
    # Times falling with bytes would need a negative term: that term is dropped instead.
    fit = _fit([entry(100, 900, 1.0), entry(200, 500, 2.0), entry(300, 100, 3.0)])
    assert min(fit.a, fit.b, fit.c) >= 0 and fit.seconds(200, 500) == pytest.approx(2.0)


def test_profile_refuses_what_it_cannot_time_here(tmp_path, cache):
    model = model_zoo.save(model_zoo.resnet_like(size=16, width=8), str(tmp_path / "tiny.onnx"))
    done = run_cli("profile", model, env=cache)
    assert done.returncode == 2 and "give --target" in done.stderr
    require_tools("aarch64-linux-gnu-gcc", "qemu-aarch64")
    done = run_cli("profile", model, "-t", "arm-a72", env=cache)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("hwcomp: error: hwcomp profile times the kernels")
    assert not table_path("arm-a72").exists()


@pytest.mark.cross
def test_profile_reads_a_cortex_m_bundles_counts(tmp_path, cache):
    """A Cortex-M bundle: the build's per-call counts at the profile's 1 cycle per
    instruction and clock, said to be counted, not measured."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    model = model_zoo.save(model_zoo.resnet_like(size=16, width=8), str(tmp_path / "tiny.onnx"))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(1).standard_normal(
        (8, 3, 16, 16)).astype(np.float32))
    built = run_cli("build", model, "-t", "cortex-m7", "--precision", "int8", "--calib",
                    str(tmp_path / "calib.npz"), "-o", str(tmp_path / "out"), env=cache)
    assert built.returncode == 0, built.stderr
    bundle = tmp_path / "out" / "tiny-cortex-m7"
    report = tmp_path / "profile.json"
    done = run_cli("profile", str(bundle), "--json", str(report), env=cache)
    assert done.returncode == 0, done.stderr
    assert "COUNTED, NOT MEASURED" in done.stdout
    found = json.loads(report.read_text())
    counts = json.loads((bundle / "manifest.json").read_text())["layer_counts"]
    assert sum(k["instructions"] for k in found["kernels"]) == counts["kernel_instructions"]
    assert found["kernels_s"] == pytest.approx(counts["kernel_instructions"] / 480e6)
    entries = load_table("cortex-m7")["entries"]
    assert all(entry["source"] == "counted" for entry in entries.values())
    assert any(key.startswith("hwcomp_int8_c_conv(uint8[") for key in entries)


def test_macs_of_kernels_tvm_scheduled_come_from_their_argument_shapes():
    from hwcomp.profile import _tvm_layer_macs

    depthwise = signature("fused_conv2d_add_maximum_minimum", [
        "float32[1x144x56x56]", "float32[144x1x3x3]", "float32[1x144x1x1]",
        "float32[1x144x28x28]"])
    assert _tvm_layer_macs("fused_conv2d_add_maximum_minimum", depthwise) == 144 * 28 * 28 * 9
    scores = signature("fused_matmul_multiply", [
        "float32[1x12x32x64]", "float32[1x12x64x32]", "float32[]", "float32[1x12x32x32]"])
    assert _tvm_layer_macs("fused_matmul_multiply", scores) == 12 * 32 * 32 * 64
    assert _tvm_layer_macs("fused_add_relu", signature("fused_add_relu", [
        "float32[1x8]", "float32[8]", "float32[1x8]"])) == 0
