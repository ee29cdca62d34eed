"""End-to-end builds through the Python API: bundles verified against onnxruntime."""

import json
import os
import subprocess

import numpy as np
import pytest

from hwcomp import api
from hwcomp.errors import OutputExistsError, VerificationError
from hwcomp.threads import THREAD_VARIABLES, physical_cores
from tests.conftest import require_tools

BUNDLE_FILES = ["manifest.json", "model.optimized.onnx", "README.md", "CMakeLists.txt",
                "lib/model.so", "runtime/libtvm_runtime.so", "runtime/libtvm_runtime_extra.so",
                "runtime/libtvm_ffi.so",
                "bin/hwcomp_runner", "runner/runner.cc", "runner/task_pool.h",
                "runner/CMakeLists.txt",
                "include/tvm/ffi/c_api.h", "include/dlpack/dlpack.h"]


def _elf_machine(path) -> str:
    return subprocess.run(["file", "-b", str(path)], capture_output=True, text=True).stdout


def test_transformer_block_builds_for_host(tmp_path):
    import onnx

    from tests import model_zoo

    onnx.save(model_zoo.transformer_block(), tmp_path / "block.onnx")
    result = api.build(tmp_path / "block.onnx", "host", tmp_path / "out")
    assert result.verification.status == "passed"
    assert result.manifest["outputs"][0]["shape"] == [1, 16, 64]


@pytest.mark.parametrize("target", ["host", pytest.param("arm-a72", marks=pytest.mark.cross)])
def test_two_outputs_and_topk_run_in_the_bundle(target, tmp_path):
    """TopK lowers to the runtime's sort (libtvm_runtime_extra.so) and returns a tuple: the
    runner must load the one and unpack the other."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if target == "arm-a72":
        require_tools("aarch64-linux-gnu-g++", "qemu-aarch64")
    graph = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=-1, name="top3")],
        "topk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("indices", TensorProto.INT64, [2, 3])],
        [numpy_helper.from_array(np.array([3], np.int64), "k")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "topk.onnx")
    result = api.build(tmp_path / "topk.onnx", target, tmp_path / "out")
    assert result.verification.status == "passed"
    assert [o.name for o in result.verification.outputs] == ["values", "indices"]
    assert all(o.max_abs_error == 0 for o in result.verification.outputs)


def test_avx512_profile_runs_where_the_cpu_has_it(models_dir, tmp_path):
    from hwcomp.targets import cpu_flags

    result = api.build(models_dir / "mobilenet_like.onnx", "x86-avx512", tmp_path)
    assert result.manifest["target"]["tvm_target"]["mcpu"] == "znver4"
    if {"avx512f", "avx512_vnni"} <= cpu_flags():
        assert result.verification.status == "passed"
    else:
        assert result.verification.status == "not run"


@pytest.mark.parametrize("model", ["resnet_like", "mobilenet_like"])
def test_host_build_is_verified(model, models_dir, tmp_path):
    result = api.build(models_dir / f"{model}.onnx", "host", tmp_path)
    bundle = tmp_path / f"{model}-host"
    assert result.bundle == bundle
    for name in BUNDLE_FILES:
        assert (bundle / name).is_file(), name
    manifest = json.loads((bundle / "manifest.json").read_text())
    check = manifest["verification"]
    assert check["status"] == "passed"
    assert check["outputs"][0]["max_abs_error"] < 1e-4
    assert manifest["inputs"] == [{"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert manifest["target"]["name"] == "host"
    assert manifest["versions"]["apache-tvm"] == "0.27.0.post1"
    assert len(manifest["model"]["sha256"]) == 64
    assert manifest["files"]["lib/model.so"]
    assert not list(tmp_path.glob(".*partial*"))


def test_bundle_runner_reproduces_onnxruntime(models_dir, tmp_path):
    bundle = api.build(models_dir / "resnet_like.onnx", "host", tmp_path).bundle
    out = tmp_path / "run"
    out.mkdir()
    inputs = sorted((bundle / "verify").glob("input_*.npy"))
    command = [bundle / "bin" / "hwcomp_runner", bundle / "lib" / "model.so", "--inputs", *inputs,
               "--out", out, "--repeat", "3"]
    # Left to itself TVM would run half the logical CPUs on x86; the runner takes every core.
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    proc = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    assert "median_ms=" in proc.stdout
    assert f"threads={physical_cores()} " in proc.stdout
    # Parallel loops run on the runner's task pool (threads claim tasks as they come free)
    # unless TVM's own pool is asked for; both give onnxruntime's result.
    assert (" pool=tasks " in proc.stdout) == (physical_cores() > 1), proc.stdout
    want = np.load(bundle / "verify" / "expected_output_00.npy")
    np.testing.assert_allclose(np.load(out / "output_0.npy"), want, rtol=1e-4, atol=1e-5)
    two = {**env, "TVM_NUM_THREADS": "2"}
    tasks = subprocess.run(command, capture_output=True, text=True, check=True, env=two)
    assert " pool=tasks " in tasks.stdout
    np.testing.assert_allclose(np.load(out / "output_0.npy"), want, rtol=1e-4, atol=1e-5)
    tvm_pool = subprocess.run(command, capture_output=True, text=True, check=True,
                              env={**two, "HWCOMP_TVM_POOL": "1"})
    assert " pool=tvm " in tvm_pool.stdout
    np.testing.assert_allclose(np.load(out / "output_0.npy"), want, rtol=1e-4, atol=1e-5)
    pinned = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={**env, "TVM_NUM_THREADS": "1"})
    assert "threads=1 " in pinned.stdout


def test_bundle_cmake_project_builds_the_runner(models_dir, tmp_path):
    require_tools("cmake", "g++")
    bundle = api.build(models_dir / "mobilenet_like.onnx", "host", tmp_path).bundle
    build = tmp_path / "cmake-build"
    subprocess.run(["cmake", "-S", bundle, "-B", build, "-DCMAKE_BUILD_TYPE=Release"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", build, "-j2"], check=True, capture_output=True)
    runner = build / "runner" / "hwcomp_runner"
    inputs = sorted((bundle / "verify").glob("input_*.npy"))
    subprocess.run([runner, bundle / "lib" / "model.so", "--inputs", *inputs, "--out", tmp_path],
                   check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "output_0.npy"),
                               np.load(bundle / "verify" / "expected_output_00.npy"),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.cross
@pytest.mark.parametrize("model", ["resnet_like", "mobilenet_like"])
def test_arm_a72_build_is_verified_under_qemu(model, models_dir, tmp_path):
    require_tools("aarch64-linux-gnu-g++", "qemu-aarch64")
    result = api.build(models_dir / f"{model}.onnx", "arm-a72", tmp_path)
    assert result.verification.status == "passed"
    assert result.verification.outputs[0].max_rel_error < 1e-4
    bundle = result.bundle
    for path in ["lib/model.so", "bin/hwcomp_runner", "runtime/libtvm_runtime.so"]:
        assert "aarch64" in _elf_machine(bundle / path), path


def test_cuda_build_produces_a_library(models_dir, tmp_path):
    require_tools("nvcc")
    result = api.build(models_dir / "mobilenet_like.onnx", "cuda-sm80", tmp_path)
    library = result.bundle / "lib" / "model.so"
    assert library.stat().st_size > 10_000
    assert "x86-64" in _elf_machine(library)
    import tvm

    if tvm.cuda(0).exist:
        assert result.verification.status == "passed"
    else:
        assert result.verification.status == "not run"
        assert "no CUDA device" in result.verification.reason


def test_failed_verification_leaves_nothing(models_dir, tmp_path):
    with pytest.raises(VerificationError, match="nothing was written"):
        api.build(models_dir / "resnet_like.onnx", "host", tmp_path, tolerance=0.0)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_unless_forced(models_dir, tmp_path):
    bundle = tmp_path / "resnet_like-host"
    bundle.mkdir()
    (bundle / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        api.build(models_dir / "resnet_like.onnx", "host", tmp_path)
    assert (bundle / "keep.txt").read_text() == "mine"
    api.build(models_dir / "resnet_like.onnx", "host", tmp_path, force=True)
    assert not (bundle / "keep.txt").exists() and (bundle / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet_like-host"]


def test_calibration_data_drives_verification(models_dir, tmp_path):
    data = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=data)
    result = api.build(models_dir / "resnet_like.onnx", "host", tmp_path / "out",
                       calib=tmp_path / "calib.npz")
    assert result.verification.status == "passed"
    assert "calib.npz" in result.verification.inputs
    used = np.load(next((result.bundle / "verify").glob("input_*.npy")))
    np.testing.assert_array_equal(used, data[:1])


def test_dynamic_batch_bound_on_the_command_line(models_dir, tmp_path):
    result = api.build(models_dir / "resnet_dynamic.onnx", "host", tmp_path,
                       input_shapes={"input": (2, 3, 32, 32)})
    assert result.manifest["inputs"][0]["shape"] == [2, 3, 32, 32]
    assert result.verification.status == "passed"
