"""The host bundle's C API (include/hwcomp_model.h): a C program built with the bundle's CMake
loads the model, runs it and matches onnxruntime; a wrong output shape is refused."""

import subprocess

import numpy as np

from hwcomp import api
from tests.conftest import REPO, require_tools

EXAMPLE = REPO / "tests" / "data" / "example_cnn.onnx"


def test_c_program_runs_two_models_through_the_c_api(tmp_path):
    """Two host bundles add_subdirectory()'d into one project (CMake targets named by model:
    hwcomp::example_cnn_c, hwcomp::resnet_c; they were both hwcomp::host), each model run
    through the C API and matching onnxruntime."""
    import onnx

    from tests import model_zoo

    require_tools("cmake", "gcc", "g++")
    onnx.save(model_zoo.resnet_like(size=16, width=8), tmp_path / "resnet.onnx")
    bundles = [api.build(EXAMPLE, "host", tmp_path / "out").bundle,
               api.build(tmp_path / "resnet.onnx", "host", tmp_path / "out").bundle]
    assert (bundles[0] / "include" / "hwcomp_model.h").is_file()
    assert "add_library(hwcomp::resnet_c ALIAS hwcomp_resnet_c)" in \
        (bundles[1] / "CMakeLists.txt").read_text()
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(REPO / "tests" / "host_consumer"), "-B", str(build),
         f"-DBUNDLES={bundles[0]};{bundles[1]}", "-DMODEL_IDS=example_cnn;resnet"],
        capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    done = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for bundle in bundles:
        name = bundle.name.removesuffix("-host")
        assert not (build / f"bundle_{name}" / "runner" / "hwcomp_runner").exists()  # off
        inputs = sorted((bundle / "verify").glob("input_*.npy"))
        expected = sorted((bundle / "verify").glob("expected_*.npy"))
        x, want = np.load(inputs[0]), np.load(expected[0])
        x.astype(np.float32).tofile(tmp_path / "in.bin")
        ran = subprocess.run(
            [str(build / "consumer"), str(bundle / "lib" / "model.so"), str(tmp_path / "in.bin"),
             "x".join(map(str, x.shape)), str(tmp_path / "out.bin"),
             "x".join(map(str, want.shape))], capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert ran.stdout.startswith("refused -1: output 0: shape or dtype differs")
        got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
