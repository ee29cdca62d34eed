"""The host bundle's C API (include/hwcomp_model.h): a C program built with the bundle's CMake
loads the model, runs it and matches onnxruntime; a wrong output shape is refused."""

import subprocess

import numpy as np

from hwcomp import api
from tests.conftest import REPO, require_tools

EXAMPLE = REPO / "tests" / "data" / "example_cnn.onnx"


def test_c_program_runs_the_model_through_the_c_api(tmp_path):
    require_tools("cmake", "gcc", "g++")
    bundle = api.build(EXAMPLE, "host", tmp_path / "out").bundle
    assert (bundle / "include" / "hwcomp_model.h").is_file()
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(REPO / "tests" / "host_consumer"), "-B", str(build),
         f"-DBUNDLE={bundle}", "-DTARGET_ID=host"], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    done = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (build / "bundle" / "runner" / "hwcomp_runner").exists()  # option off
    inputs = sorted((bundle / "verify").glob("input_*.npy"))
    expected = sorted((bundle / "verify").glob("expected_*.npy"))
    x, want = np.load(inputs[0]), np.load(expected[0])
    x.astype(np.float32).tofile(tmp_path / "in.bin")
    ran = subprocess.run(
        [str(build / "consumer"), str(bundle / "lib" / "model.so"), str(tmp_path / "in.bin"),
         "x".join(map(str, x.shape)), str(tmp_path / "out.bin"), "x".join(map(str, want.shape))],
        capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.startswith("refused -1: output 0: shape or dtype differs")
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
