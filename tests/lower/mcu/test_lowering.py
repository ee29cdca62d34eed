"""Microcontroller bundles: host and qemu-system-arm runs vs onnxruntime, sizes, budgets,
a CMake firmware project consuming the bundle, and bad input."""

import json
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from hwcomp.lower.mcu.firmware import parse_outputs
from tests import model_zoo
from tests.conftest import REPO, require_tools, run_cli
from tests.helpers import make_model

pytestmark = pytest.mark.cross


@pytest.fixture(scope="module")
def kws_bundle(tmp_path_factory):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    folder = tmp_path_factory.mktemp("kws")
    model = model_zoo.save(model_zoo.ds_cnn(), str(folder / "kws.onnx"))
    done = run_cli("build", model, "--target", "cortex-m7", "-o", str(folder / "out"))
    assert done.returncode == 0, done.stderr
    return folder / "out" / "kws-cortex-m7"


def test_cortex_m7_bundle_matches_onnxruntime_on_qemu_and_host(kws_bundle):
    manifest = json.loads((kws_bundle / "manifest.json").read_text())
    verification = manifest["verification"]
    assert verification["status"] == "passed"
    assert verification["outputs"][0]["max_rel_error"] <= 1e-4  # the emulated Cortex-M7
    assert verification["runs"]["host build"][0]["max_rel_error"] <= 1e-4
    for path in ("lib/model.h", "lib/model.c", "lib/kernels.c", "lib/weights.c",
                 "lib/hwcomp_runtime.c", "example/main.c", "CMakeLists.txt", "hwcomp.mk",
                 "cmake/arm-none-eabi-cortex-m7.cmake", "board/mps2-an500.ld", "bin/firmware.elf"):
        assert (kws_bundle / path).is_file(), path
    # The shipped firmware, run the way the bundle's README says, prints outputs that match.
    emulated = subprocess.run(
        ["qemu-system-arm", "-M", "mps2-an500", "-nographic", "-semihosting", "-kernel",
         str(kws_bundle / "bin" / "firmware.elf")], capture_output=True, text=True, timeout=300)
    assert "PASS" in emulated.stdout, emulated.stdout[-500:]
    expected = np.load(kws_bundle / "verify" / "expected_output_00.npy")
    [printed] = parse_outputs(emulated.stdout, [str(expected.dtype)], [expected.shape])
    np.testing.assert_allclose(printed, expected, rtol=0, atol=1e-4 * max(1, np.abs(expected).max()))
    assert np.abs(printed).max() > 0


def test_arena_plan_and_sizes_are_reported(kws_bundle):
    mcu = json.loads((kws_bundle / "manifest.json").read_text())["mcu"]
    arena = mcu["arena"]
    # DS-CNN: every block reads one 25x5x64 fp32 map and writes another: 2 x 32000 bytes live.
    assert arena["largest_two_live_bytes"] == 64000
    assert arena["largest_two_live_bytes"] <= arena["lower_bound_bytes"] <= arena["arena_bytes"]
    assert arena["arena_bytes"] < arena["sum_of_buffers_bytes"] / 3
    library = mcu["library"]
    assert library["rodata"] >= mcu["weights_bytes"]  # the weights are const (flash)
    assert library["bss"] >= arena["arena_bytes"]      # the static arena
    assert library["data"] == 0
    assert 0 < library["flash"] <= mcu["budget"]["flash_bytes"]
    header = (kws_bundle / "lib" / "hwcomp_kws.h").read_text()
    assert '#include "hwcomp_kws.h"' in (kws_bundle / "lib" / "model.h").read_text()
    assert f"#define HWCOMP_KWS_ARENA_BYTES {arena['arena_bytes']}u" in header
    assert "int hwcomp_kws_run(const float* in0, float* out0);" in header
    source = (kws_bundle / "lib" / "model.c").read_text() + (kws_bundle / "lib" / "kernels.c").read_text()
    assert "malloc" not in source and "pthread" not in source and "#pragma omp" not in source


_API_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include "hwcomp_kws.h"
static unsigned char arena[HWCOMP_KWS_ARENA_BYTES + HWCOMP_KWS_ARENA_ALIGNMENT]
    __attribute__((aligned(64)));
static float in0[HWCOMP_KWS_IN0_COUNT], out0[HWCOMP_KWS_OUT0_COUNT];
int main(void) {
  const hwcomp_tensor_info* i = &hwcomp_kws_inputs[0];
  const hwcomp_tensor_info* o = &hwcomp_kws_outputs[0];
  printf("%s %s %d %lld %lld %lld %lld %u %u\n", i->name, i->dtype, i->ndim,
         (long long)i->shape[0], (long long)i->shape[1], (long long)i->shape[2],
         (long long)i->shape[3], i->count, i->bytes);
  printf("%s %s %d %u\n", o->name, o->dtype, o->ndim, o->count);
  printf("%s %s\n", HWCOMP_KWS_HWCOMP_VERSION, HWCOMP_KWS_MODEL_SHA256);
  printf("%d %d\n", hwcomp_kws_run_with_arena(in0, out0, arena + 1),
         hwcomp_kws_run_with_arena(in0, out0, arena));
  const hwcomp_report* r = &hwcomp_kws_report;
  unsigned long long step_macs = 0;
  for (uint32_t s = 0; s < r->step_count; ++s) step_macs += r->steps[s].macs;
  printf("%s %s %s %llu %u %u %u %s %llu\n", r->model_file, r->target, r->hwcomp_version,
         (unsigned long long)r->macs, r->arena_bytes, r->weight_bytes, r->step_count,
         r->steps[0].kernel, step_macs);
  return 0;
}
"""


def test_the_api_header_describes_the_model_and_checks_the_arena(kws_bundle, tmp_path):
    """The header's run-time descriptors, version and model hash; a misaligned arena is
    refused with HWCOMP_ERR_ARENA_ALIGNMENT before any kernel runs, an aligned one runs."""
    import hwcomp
    from hwcomp.model import file_sha256

    source = tmp_path / "api.c"
    source.write_text(_API_PROGRAM)
    program = tmp_path / "api"
    built = subprocess.run(
        ["gcc", "-O1", "-std=c99", "-Wall", "-Wextra", "-Werror", "-I", str(kws_bundle / "lib"),
         "-I", str(kws_bundle / "include"), str(source),
         *map(str, sorted((kws_bundle / "lib").glob("*.c"))), "-o", str(program), "-lm"],
        capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    lines = subprocess.run([str(program)], capture_output=True, text=True, check=True,
                           timeout=60).stdout.splitlines()
    assert lines[0] == "input float32 4 1 1 49 10 490 1960"
    assert lines[1] == "logits float32 2 12"
    model_sha = file_sha256(kws_bundle.parent.parent / "kws.onnx")
    assert lines[2] == f"{hwcomp.__version__} {model_sha}"
    assert lines[3] == "-3 0"
    # The report struct: what was built, as the manifest says it.
    manifest = json.loads((kws_bundle / "manifest.json").read_text())
    model_file, target, version, macs, arena, weights, steps, first, step_macs = lines[4].split()
    assert (model_file, target, version) == ("kws.onnx", "cortex-m7", hwcomp.__version__)
    assert int(arena) == manifest["mcu"]["arena"]["arena_bytes"]
    assert int(steps) == len(manifest["layer_counts"]["steps"])
    assert first == manifest["layer_counts"]["steps"][0]["kernel"]
    assert int(step_macs) == manifest["layer_counts"]["macs"] > 0
    assert int(macs) >= int(step_macs) and int(weights) > 0


def test_cmake_firmware_project_consumes_the_bundle(kws_bundle, tmp_path):
    require_tools("cmake", "arm-none-eabi-gcc")
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(REPO / "tests" / "mcu_consumer"), "-B", str(build),
         f"-DHWCOMP_BUNDLE={kws_bundle}",
         f"-DCMAKE_TOOLCHAIN_FILE={kws_bundle / 'cmake' / 'arm-none-eabi-cortex-m7.cmake'}"],
        capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    done = subprocess.run(["cmake", "--build", str(build), "--verbose"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # No build type set: the model still compiles at -O2, as its flash was measured.
    kernels_line = next(line for line in done.stdout.splitlines() if "kernels.c" in line and " -c " in line)
    assert "-O2" in kernels_line
    # CMake compiles C99 as gnu99, where GCC would fuse the float steps' a * b + c.
    assert "-ffp-contract=off" in kernels_line
    elf = build / "consumer"
    header = subprocess.run(["arm-none-eabi-readelf", "-h", "-A", str(elf)], capture_output=True,
                            text=True, check=True).stdout
    assert "v7E-M" in header and "FPv5" in header
    symbols = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                             check=True).stdout
    assert "hwcomp_kws_run_with_arena" in symbols and "__tvm_ffi_hwcomp_kws_" in symbols


@pytest.mark.parametrize("target,board", [("cortex-m4", "mps2-an386"), ("cortex-m55", "mps3-an547")])
def test_other_cortex_m_profiles(target, board, tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    model = model_zoo.save(model_zoo.resnet_like(size=16, width=8), str(tmp_path / "tiny.onnx"))
    done = run_cli("build", model, "--target", target, "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    bundle = tmp_path / "out" / f"tiny-{target}"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed"
    assert manifest["mcu"]["library"]["flash"] > manifest["mcu"]["weights_bytes"]
    # Emulated: the firmware ran on the board qemu models for this core, and so did the host build.
    assert manifest["mcu"]["firmware"]["board"] == board
    assert manifest["verification"]["runs"]["host build"][0]["passed"]
    flags = {"cortex-m4": "fpv4-sp-d16", "cortex-m55": "cortex-m55"}[target]
    assert flags in (bundle / "hwcomp.mk").read_text()


def test_model_over_the_flash_budget_fails_with_the_figures(tmp_path):
    require_tools("arm-none-eabi-gcc")
    # 600 x 600 fp32 weights = 1.44 MB > the Cortex-M4's 512 KiB flash.
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((600, 600)).astype(np.float32), "w")
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="big_fc")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 600])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 600])], [weight])
    path = tmp_path / "big.onnx"
    onnx.save(model, path)
    done = run_cli("build", str(path), "--target", "cortex-m4", "-o", str(tmp_path / "out"))
    assert done.returncode == 5  # budget not met
    message = done.stderr
    assert "does not fit cortex-m4" in message and "flash" in message and "524288" in message
    # Refused from the weights' size, before any C was generated or compiled.
    assert "1440000 bytes" in message and "before generating any code" in message
    assert "--precision int8" in message and "Traceback" not in message
    assert not (tmp_path / "out" / "big-cortex-m4").exists()
    assert not any((tmp_path / "out").glob(".*partial*"))


def test_op_the_mcu_path_cannot_lower_names_the_node(tmp_path):
    k = onnx.numpy_helper.from_array(np.array([3], dtype=np.int64), "k")
    model = make_model([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="pick_top3")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                       [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 3]),
                        helper.make_tensor_value_info("i", TensorProto.INT64, [1, 3])], [k])
    path = tmp_path / "topk.onnx"
    onnx.save(model, path)
    done = run_cli("build", str(path), "--target", "cortex-m7", "-o", str(tmp_path / "out"))
    assert done.returncode == 4  # unsupported model
    assert "pick_top3" in done.stderr and "TopK" in done.stderr and "microcontroller" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_zephyr_module_builds_and_runs_the_model(kws_bundle, tmp_path):
    """The bundle's Zephyr module, consumed as Zephyr would (without its SDK, out of reach
    here: tests/mcu_zephyr/ stands in for Zephyr's library API), builds and its example
    matches onnxruntime on the host."""
    require_tools("cmake", "gcc")
    module = kws_bundle / "zephyr"
    assert "cmake: zephyr" in (module / "module.yml").read_text()
    kconfig = (module / "Kconfig").read_text()
    assert "config HWCOMP_KWS\n" in kconfig and "select HWCOMP_RUNTIME" in kconfig
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(REPO / "tests" / "mcu_zephyr"), "-B", str(build),
         f"-DMODULE={kws_bundle}", "-DCONFIG=CONFIG_HWCOMP_KWS"], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    done = subprocess.run(["cmake", "--build", str(build), "--verbose"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "-ffp-contract=off" in done.stdout and "-O2" in done.stdout
    ran = subprocess.run([str(build / "app")], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout[-2000:]


def test_platformio_manifest_builds_the_model(kws_bundle, tmp_path):
    """library.json, read as PlatformIO's library builder reads it (PlatformIO's platforms
    cannot be fetched here): its sources, include paths and flags build the library, and the
    example linked against it matches onnxruntime on the host."""
    import shlex

    require_tools("gcc")
    manifest = json.loads((kws_bundle / "library.json").read_text())
    assert manifest["name"] == "hwcomp_kws" and manifest["version"]
    build = manifest["build"]
    assert build["srcFilter"] == ["+<*.c>"]
    sources = sorted((kws_bundle / build["srcDir"]).glob("*.c"))
    flags = [part for flag in build["flags"] for part in shlex.split(flag)]
    # PlatformIO resolves a library's relative -I paths against the library's root.
    flags = [str(kws_bundle / f) if prev == "-I" else f
             for prev, f in zip(["", *flags[:-1]], flags, strict=True)]
    program = tmp_path / "app"
    done = subprocess.run(
        ["gcc", *flags, "-I", str(kws_bundle / build["includeDir"]), "-I",
         str(kws_bundle / "example"), str(kws_bundle / "example" / "main.c"),
         *map(str, sources), "-o", str(program), "-lm"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ran = subprocess.run([str(program)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout[-2000:]
