"""int8 kernels in C for microcontrollers: bit-exact against onnxruntime on the host build and
on the emulated Cortex-M7, int8 weights and activations in the size report, and the cases
that stay in float.

onnxruntime is the bit-exact reference where its own u8 x s8 kernels are exact. On an x86
CPU without VNNI they multiply with ``vpmaddubsw``, whose int16 pair sums saturate, so
hwcomp's reference there runs the QDQ graph as written (dequantize, float op, quantize;
:func:`hwcomp.verify.integer_kernels_exact`), whose float rounding can land one step away at
a quantization boundary: there the comparison allows one output step, and says so.
"""

import json
import re
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.verify import integer_kernels_exact, run_onnxruntime
from tests import model_zoo
from tests.conftest import REPO, require_tools, run_cli

pytestmark = pytest.mark.cross


EXACT_REFERENCE = integer_kernels_exact()
# Output quantization steps the float-run QDQ reference may differ by (measured on an AVX2
# machine, DS-CNN and ResNet-8 at the seeds below: at most 1; onnxruntime's saturating
# integer kernels were up to 3 steps off).
FLOAT_REFERENCE_STEPS = 1


def _output_step(bundle) -> float:
    """The quantization step of the model's output (its last DequantizeLinear's scale)."""
    model = onnx.load(bundle / "model.optimized.onnx")
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer[model.graph.output[0].name]
    while node.op_type != "DequantizeLinear":
        node = producer[node.input[0]]
    scales = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return float(np.max(scales[node.input[1]]))


def _assert_matches_reference(error: float, bundle) -> None:
    """Bit for bit where onnxruntime is exact, else within :data:`FLOAT_REFERENCE_STEPS`."""
    if EXACT_REFERENCE:
        assert error == 0
    else:
        steps = error / _output_step(bundle)
        # 1e-3: the outputs are dequantized floats, (q - z) * s rounded at the value's size.
        assert steps <= FLOAT_REFERENCE_STEPS + 1e-3, f"{steps:.4f} output steps from onnxruntime"


def _build_int8(folder, model, name, shape, target="cortex-m7"):
    path = model_zoo.save(model, str(folder / f"{name}.onnx"))
    rng = np.random.default_rng(7)
    np.savez(folder / "calib.npz", input=rng.standard_normal((16, *shape[1:])).astype(np.float32))
    done = run_cli("build", path, "--target", target, "--precision", "int8",
                   "--calib", str(folder / "calib.npz"), "-o", str(folder / "out"))
    assert done.returncode == 0, done.stderr
    return folder / "out" / f"{name}-{target}"


@pytest.fixture(scope="module")
def kws_int8(tmp_path_factory):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    return _build_int8(tmp_path_factory.mktemp("kws8"), model_zoo.ds_cnn(), "kws", [1, 1, 49, 10])


def _run_host_batch(bundle, prefix, samples, tmp_path):
    """Compile the bundle's C with tests/mcu_batch/main.c for this machine and run ``samples``."""
    program = tmp_path / "batch"
    macro = prefix.upper()
    sources = [str(p) for p in sorted((bundle / "lib").glob("*.c"))]
    compiled = subprocess.run(
        ["gcc", "-O2", "-I", str(bundle / "lib"), "-I", str(bundle / "include"),
         f"-DMODEL_RUN={prefix}_run", f"-DMODEL_IN_COUNT={macro}_IN0_COUNT",
         f"-DMODEL_OUT_COUNT={macro}_OUT0_COUNT", *sources,
         str(REPO / "tests" / "mcu_batch" / "main.c"), "-o", str(program), "-lm"],
        capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    done = subprocess.run([str(program)], input=samples.astype(np.float32).tobytes(),
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return np.frombuffer(done.stdout, np.float32).reshape(len(samples), -1)


def _onnxruntime_batch(bundle, samples):
    model = onnx.load(bundle / "model.optimized.onnx")
    return np.stack([run_onnxruntime(model, {"input": s[None]})[0].reshape(-1) for s in samples])


def test_ds_cnn_int8_is_bit_exact_on_qemu_and_host(kws_int8):
    manifest = json.loads((kws_int8 / "manifest.json").read_text())
    verification = manifest["verification"]
    assert verification["status"] == "passed"
    emulated = verification["outputs"][0]["max_abs_error"]  # Cortex-M7 (mps2-an500)
    _assert_matches_reference(emulated, kws_int8)
    # The emulated board and this machine run the same C: their outputs agree exactly.
    assert verification["runs"]["host build"][0]["max_abs_error"] == emulated
    kernels = manifest["integer_kernels"]
    layers = kernels["ops"]
    # The stem, four depthwise and four pointwise convolutions, and the classifier; the
    # global average pool on the 8-bit map (hwcomp_q8_elementwise). No ReLU remains: the
    # quantizer gives each convolution's output its ReLU's range (onnxruntime's removable
    # activations), so the convolution's own clamp to that range is the ReLU.
    assert len(layers) == 11 and kernels["kept_float"] == []
    assert sum(op.startswith(("conv2d", "matmul")) for op in layers) == 10
    assert sum(op.startswith("mean ") for op in layers) == 1
    assert sum("groups 64" in op for op in layers) == 4
    assert not any("table" in op for op in layers)
    optimized = onnx.load(kws_int8 / "model.optimized.onnx")
    assert not any(node.op_type == "Relu" for node in optimized.graph.node)
    source = (kws_int8 / "lib" / "kernels.c").read_text()
    assert "hwcomp_q8_conv_u8u8" in source and "hwcomp_q8_depthwise_u8u8" in source
    weights = (kws_int8 / "lib" / "weights.c").read_text()
    assert "const int8_t" in weights


def test_ds_cnn_int8_matches_onnxruntime_bit_for_bit_on_many_inputs(kws_int8, tmp_path):
    samples = np.random.default_rng(11).standard_normal((32, 1, 49, 10)).astype(np.float32)
    got = _run_host_batch(kws_int8, "hwcomp_kws", samples, tmp_path)
    expected = _onnxruntime_batch(kws_int8, samples)
    _assert_matches_reference(float(np.abs(got - expected).max()), kws_int8)
    assert len({tuple(row) for row in got}) > 1  # the outputs depend on the input


def test_int8_shrinks_flash_and_arena(kws_int8):
    mcu = json.loads((kws_int8 / "manifest.json").read_text())["mcu"]
    arena = mcu["arena"]
    # Every block reads one 25x5x64 int8 map and writes another: 2 x 8000 bytes, 16-aligned.
    assert arena["largest_two_live_bytes"] == 16000
    # Plus the pointwise kernel's two 16-bit input columns and their interleaved copy
    # (4 x 64 x 2 bytes, the SMLAD path's) at its step.
    assert arena["arena_bytes"] == arena["lower_bound_bytes"] <= 16000 + 512 + 16
    # The four padded depthwise layers write their output over their input (each channel's
    # plane is copied first).
    assert arena["in_place_buffers"] == 4
    # fp32 DS-CNN weights are 90 KB; int8 weights, int32 biases and float multipliers < 30 KB.
    assert mcu["weights_bytes"] < 30000
    # The library's objects in full: every kernel of hwcomp_q8.c for the four type pairs
    # (about 12 KB of code) counts, before the linker drops what the model does not call.
    assert mcu["library"]["flash"] < 48000


def test_mobilenet_vww_int8_fits_cortex_m4_at_the_lower_bound(tmp_path):
    """MobileNetV1-0.25 at 96x96 (visual wake words) int8 on cortex-m4: it runs, bit-exact
    with the host build, and its arena is the plan's lower bound: the nine stride-1
    depthwise layers run in place (without that the greedy plan took 64512 bytes)."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    bundle = _build_int8(tmp_path, model_zoo.mobilenet_v1_vww(), "vww", [1, 3, 96, 96],
                         target="cortex-m4")
    manifest = json.loads((bundle / "manifest.json").read_text())
    verification = manifest["verification"]
    _assert_matches_reference(verification["outputs"][0]["max_abs_error"], bundle)
    assert verification["runs"]["host build"][0]["max_abs_error"] == (
        verification["outputs"][0]["max_abs_error"])
    arena = manifest["mcu"]["arena"]
    assert arena["in_place_buffers"] == 9
    assert arena["arena_bytes"] == arena["lower_bound_bytes"] == 55360


def test_resnet8_int8_residual_adds_are_bit_exact(tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    bundle = _build_int8(tmp_path, model_zoo.resnet8(), "resnet8", [1, 3, 32, 32])
    manifest = json.loads((bundle / "manifest.json").read_text())
    _assert_matches_reference(manifest["verification"]["outputs"][0]["max_abs_error"], bundle)
    assert manifest["integer_kernels"]["kept_float"] == []
    samples = np.random.default_rng(12).standard_normal((32, 3, 32, 32)).astype(np.float32)
    got = _run_host_batch(bundle, "hwcomp_resnet8", samples, tmp_path)
    expected = _onnxruntime_batch(bundle, samples)
    _assert_matches_reference(float(np.abs(got - expected).max()), bundle)
    # The identity shortcut keeps a 16x32x32 int8 map alive across two convolutions.
    # Plus, at that step, the 16-channel 3x3 conv kernel's two 16-bit input columns and
    # their interleaved copy (4 x 144 x 2 bytes).
    assert manifest["mcu"]["arena"]["arena_bytes"] == 3 * 16384 + 4 * 144 * 2


def test_float_bias_keeps_the_layer_in_float_and_says_why(tmp_path):
    """Negative case: a bias added in float (not an int32 input of the layer) does not match
    onnxruntime's fused integer layer, so the layer stays float, and the build still verifies."""
    require_tools("arm-none-eabi-gcc")
    rng = np.random.default_rng(3)
    weight = rng.integers(-127, 128, (8, 4, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.full(8, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(8, np.int8), "w_zp"),
        numpy_helper.from_array(np.float32(0.02), "x_scale"),
        numpy_helper.from_array(np.int8(3), "x_zp"),
        numpy_helper.from_array(np.float32(0.05), "y_scale"),
        numpy_helper.from_array(np.int8(-2), "y_zp"),
        numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_f"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_f"], axis=0),
        helper.make_node("Conv", ["x_f", "w_f"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Add", ["conv", "bias"], ["biased"]),
        helper.make_node("QuantizeLinear", ["biased", "y_scale", "y_zp"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "float_bias", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "float_bias.onnx"
    onnx.save(model, path)
    done = run_cli("build", str(path), "--target", "cortex-m4", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "float_bias-cortex-m4" / "manifest.json").read_text())
    kernels = manifest["integer_kernels"]
    assert kernels["ops"] == []
    assert kernels["kept_float"] == ["conv2d: bias is not quantized (int32 with the scale s_x * s_w)"]
    assert manifest["verification"]["status"] == "passed"


def test_relu6_becomes_a_table_and_mobilenet_runs_on_helium(tmp_path):
    """ReLU6 (ONNX Clip with bound inputs, imported as maximum / minimum PrimFuncs) between
    quantized layers is the producer's clamp or, where its range is wider than its bounds, a
    256-entry table like ReLU; the MobileNetV2-style model (depthwise
    stride 1 and 2, inverted residuals) runs the Helium kernels on cortex-m55 bit for bit
    with onnxruntime, on the board and on this machine."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    bundle = _build_int8(tmp_path, model_zoo.mobilenet_like(), "mnet", [1, 3, 32, 32],
                         target="cortex-m55")
    manifest = json.loads((bundle / "manifest.json").read_text())
    verification = manifest["verification"]
    emulated = verification["outputs"][0]["max_abs_error"]
    _assert_matches_reference(emulated, bundle)
    assert verification["runs"]["host build"][0]["max_abs_error"] == emulated
    ops = manifest["integer_kernels"]["ops"]
    # The ReLU6 of the stem feeds the first block's residual Add, which widens its range
    # (share_ranges): it stays, as a 256-entry table. The other six (each block's expansion
    # and depthwise conv) are gone: their convolutions' outputs take the ReLU6's range and
    # their clamp is the activation.
    assert sum(op.startswith("clip") and "256-entry table" in op for op in ops) == 1
    # The residual add and the global average pool on the 8-bit maps too.
    assert sum(op.startswith(("add ", "mean ")) for op in ops) == 2
    assert len(ops) == 14
    # No float clamp between two quantized layers is left to TVM's code.
    names = re.findall(r"TVM_DLL int32_t (__tvm_ffi_\w+)\(", (bundle / "lib" / "kernels.c").read_text())
    assert names and not [n for n in names if re.search(r"maximum\d*_minimum\d*_quantize", n)]


def test_profile_build_reports_every_layer(kws_int8, tmp_path):
    """The library and example built with -DHWCOMP_PROFILE call hwcomp_on_step once per
    executor step with the DWT cycle count (0 under qemu, which does not model the DWT),
    and the model still matches onnxruntime; the bundle README says how to read cycles."""
    from hwcomp.targets import load_target

    target = load_target("cortex-m7")
    elf = tmp_path / "profile.elf"
    built = subprocess.run(
        ["arm-none-eabi-gcc", *target.cflags, "-O2", "-std=c99", "-DHWCOMP_PROFILE",
         "-I", str(kws_int8 / "lib"), "-I", str(kws_int8 / "include"), "--specs=rdimon.specs",
         "-nostartfiles", "-T", str(kws_int8 / "board" / "mps2-an500.ld"), "-Wl,--gc-sections",
         str(kws_int8 / "board" / "startup.c"), str(kws_int8 / "example" / "main.c"),
         *map(str, sorted((kws_int8 / "lib").glob("*.c"))), "-o", str(elf), "-lm"],
        capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    done = subprocess.run([target.emulator, *target.emulator_args, "-kernel", str(elf)],
                          capture_output=True, text=True, timeout=120)
    steps = [line.split() for line in done.stdout.splitlines() if line.startswith("hwcomp-step")]
    model_c = (kws_int8 / "lib" / "model.c").read_text()
    assert [int(s[1]) for s in steps] == list(range(model_c.count("/* step ")))
    assert all(s[2] == "hwcomp_kws" and s[5] == "cycles" for s in steps)
    assert "PASS" in done.stdout
    assert "-DHWCOMP_KWS_PROFILE=ON" in (kws_int8 / "README.md").read_text()


def test_build_counts_each_kernel_call_on_the_emulated_board(kws_int8):
    """The verification run on the emulated board counts every kernel call's instructions
    (a qemu TCG plugin marking hwcomp_call and hwcomp_step_end), in the executor's order,
    with each layer kernel's MACs: together the model's MACs."""
    from hwcomp import model as model_io
    from hwcomp.analysis import cost

    manifest = json.loads((kws_int8 / "manifest.json").read_text())
    counts = manifest["layer_counts"]
    assert "qemu TCG plugin" in counts["counted_by"] and "not cycles" in counts["unit"]
    model_c = (kws_int8 / "lib" / "model.c").read_text()
    executed = re.findall(r"/\* step \d+: (\w+)\(", model_c)
    assert [s["kernel"] for s in counts["steps"]] == executed
    assert all(s["instructions"] > 0 for s in counts["steps"])
    assert counts["kernel_instructions"] == sum(s["instructions"] for s in counts["steps"])
    layers = [s for s in counts["steps"] if s["macs"]]
    assert len(layers) == 10  # the stem, 4 depthwise, 4 pointwise, the classifier
    model = model_io.load_model(kws_int8.parent.parent / "kws.onnx")
    assert counts["macs"] == cost.graph_cost(model).total_macs
    # At most two multiply-adds per instruction on the M7 (SMLAD); the whole model's rate
    # is what bench/mcu_size.py reports (0.61 with start-up and printing).
    assert all(s["macs"] / s["instructions"] < 2 for s in layers)
    assert 0.4 < counts["macs_per_instruction"] < 2


def test_analyze_shows_the_bundles_counts_per_layer(kws_int8, tmp_path):
    model = kws_int8.parent.parent / "kws.onnx"
    report = tmp_path / "report.json"
    done = run_cli("analyze", str(model), "-t", "cortex-m7", "--bundle", str(kws_int8),
                   "--json", str(report))
    assert done.returncode == 0, done.stderr
    assert "EMULATED INSTRUCTIONS, NOT CYCLES" in done.stdout
    doc = json.loads(report.read_text())
    counted = doc["counted"]
    assert counted["layers_matched"] and counted["steps"]
    by_kernel = {s["kernel"]: s["instructions"] for s in counted["steps"] if s["macs"]}
    layers = [layer for layer in doc["layers"] if layer["macs"]]
    assert sorted(layer["instructions"] for layer in layers) == sorted(by_kernel.values())
    assert all(layer["instructions"] is None for layer in doc["layers"] if not layer["macs"])
    wrong = run_cli("analyze", str(model), "-t", "cortex-m4", "--bundle", str(kws_int8))
    assert wrong.returncode == 2
    assert wrong.stderr.strip().startswith("hwcomp: error: --bundle") and "cortex-m7" in wrong.stderr


@pytest.mark.parametrize("opt", ["-O2", "-O0"])
def test_generated_c_compiles_warning_free(kws_int8, tmp_path, opt):
    """Every C file of a bundle (TVM's kernels, hwcomp's kernels and runtime, the executor,
    weights, the example) compiles under -Wall -Wextra -Werror for its Cortex-M, for the
    Helium core (the library's MVE paths) and for this machine."""
    from hwcomp.targets import load_target

    sources = [*sorted((kws_int8 / "lib").glob("*.c")), kws_int8 / "example" / "main.c"]
    strict = [opt, "-std=c99", "-Wall", "-Wextra", "-Werror", "-I", str(kws_int8 / "lib"),
              "-I", str(kws_int8 / "include"), "-c"]
    for compiler, flags in [("arm-none-eabi-gcc", load_target("cortex-m7").cflags),
                            ("arm-none-eabi-gcc", load_target("cortex-m55").cflags),
                            ("gcc", ())]:
        for source in sources:
            done = subprocess.run([compiler, *flags, *strict, str(source), "-o",
                                   str(tmp_path / "x.o")], capture_output=True, text=True)
            assert done.returncode == 0, f"{compiler} {flags} {source.name}: {done.stderr[-1500:]}"


def test_two_models_in_one_firmware_run_under_qemu(kws_int8, tmp_path):
    """Two bundles in one CMake firmware (DS-CNN and ResNet-8, int8, cortex-m7): each
    included by its own header, hwcomp's runtime built once for both, every other symbol
    prefixed by model; under qemu both match onnxruntime as their builds did."""
    require_tools("cmake")
    from hwcomp.targets import load_target

    second = _build_int8(tmp_path, model_zoo.resnet8(), "rn8", [1, 3, 32, 32])
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(REPO / "tests" / "mcu_two_models"), "-B", str(build),
         f"-DFIRST={kws_int8}", f"-DSECOND={second}", "-DBOARD=mps2-an500",
         f"-DCMAKE_TOOLCHAIN_FILE={kws_int8 / 'cmake' / 'arm-none-eabi-cortex-m7.cmake'}"],
        capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    done = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    elf = build / "two_models"
    symbols = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                             check=True).stdout.split("\n")
    # One shim for both models; each model's entry points under its own prefix.
    assert sum(line.endswith(" TVMBackendAllocWorkspace") for line in symbols) == 1
    assert any(line.endswith(" hwcomp_kws_run") for line in symbols)
    assert any(line.endswith(" hwcomp_rn8_run") for line in symbols)
    target = load_target("cortex-m7")
    ran = subprocess.run([target.emulator, *target.emulator_args, "-kernel", str(elf)],
                         capture_output=True, text=True, timeout=300)
    worst = {line.split()[1]: float(line.split()[2]) for line in ran.stdout.splitlines()
             if line.startswith("hwcomp-two")}
    for name, bundle in (("first", kws_int8), ("second", second)):
        manifest = json.loads((bundle / "manifest.json").read_text())
        # The firmware prints the float32 error with 9 digits.
        assert worst[name] == pytest.approx(
            manifest["verification"]["outputs"][0]["max_abs_error"], rel=1e-7), ran.stdout


def test_helium_ds_cnn_matches_onnxruntime_on_32_inputs_on_the_board(tmp_path):
    """The Helium kernels on the emulated Cortex-M55 (mps3-an547), not only the host's
    portable C: DS-CNN int8 on 32 seeded inputs, every output bit for bit onnxruntime's."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    from hwcomp.targets import load_target

    bundle = _build_int8(tmp_path, model_zoo.ds_cnn(), "kws", [1, 1, 49, 10], target="cortex-m55")
    samples = np.random.default_rng(11).standard_normal((32, 1, 49, 10)).astype(np.float32)
    rows = ",\n".join("{" + ", ".join(f"{v:.9g}f" for v in s.reshape(-1)) + "}" for s in samples)
    program = tmp_path / "batch.c"
    program.write_text(
        '#include <stdio.h>\n#include "hwcomp_kws.h"\n'
        f"static const float inputs[32][HWCOMP_KWS_IN0_COUNT] = {{\n{rows}\n}};\n"
        "int main(void) {\n  static float out[HWCOMP_KWS_OUT0_COUNT];\n"
        "  for (int s = 0; s < 32; ++s) {\n    if (hwcomp_kws_run(inputs[s], out)) return 1;\n"
        "    for (unsigned i = 0; i < HWCOMP_KWS_OUT0_COUNT; ++i) printf(\"%.9g\\n\", (double)out[i]);\n"
        "  }\n  return 0;\n}\n")
    target = load_target("cortex-m55")
    elf = tmp_path / "batch.elf"
    built = subprocess.run(
        ["arm-none-eabi-gcc", *target.cflags, "-O2", "-std=c99", "-I", str(bundle / "lib"),
         "-I", str(bundle / "include"), "--specs=rdimon.specs", "-nostartfiles", "-T",
         str(bundle / "board" / "mps3-an547.ld"), "-Wl,--gc-sections",
         str(bundle / "board" / "startup.c"), str(program),
         *map(str, sorted((bundle / "lib").glob("*.c"))), "-o", str(elf), "-lm"],
        capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    ran = subprocess.run([target.emulator, *target.emulator_args, "-kernel", str(elf)],
                         capture_output=True, text=True, timeout=300)
    got = np.array([float(v) for v in ran.stdout.split()], np.float32).reshape(32, -1)
    expected = _onnxruntime_batch(bundle, samples)
    _assert_matches_reference(float(np.abs(got - expected).max()), bundle)
    assert len({tuple(row) for row in got}) > 1


def test_a_qemu_that_cannot_load_the_counting_plugin_falls_back(kws_int8, tmp_path,
                                                                 monkeypatch):
    """Counting is extra: where qemu cannot load the plugin, count_firmware says so as a
    toolchain problem (the build then runs the firmware uncounted), not a failed model."""
    from hwcomp.errors import ToolchainError
    from hwcomp.lower.mcu import firmware
    from hwcomp.targets import load_target

    not_a_plugin = tmp_path / "plugin.so"
    not_a_plugin.write_text("not a shared object")
    monkeypatch.setattr(firmware, "plugin_path", lambda: not_a_plugin)
    elf = kws_int8 / "bin" / "firmware.elf"
    with pytest.raises(ToolchainError, match="counting plugin"):
        firmware.count_firmware(elf, load_target("cortex-m7"))
    assert "hwcomp-check" in firmware.run_firmware(elf, load_target("cortex-m7"))
