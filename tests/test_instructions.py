"""hwcomp bench --count-instructions: instructions per inference under qemu, beside onnxruntime."""

import json
import os
import shutil

import onnx
import pytest

from hwcomp import api
from hwcomp.bench import count_instructions
from hwcomp.errors import EXIT_TOOLCHAIN
from tests.conftest import require_tools, run_cli
from tests.model_zoo import _Builder
from tests.test_cli import _assert_clean_error


def _convs(layers: int) -> onnx.ModelProto:
    """``layers`` identical 3x3 convs (16 -> 16 channels, 24x24) with ReLU: work in proportion."""
    b = _Builder(seed=3)
    x = "input"
    for _ in range(layers):
        x = b.node("Relu", [b.conv(x, 16, 16, 3)])
    return b.model(f"convs{layers}", [1, 16, 24, 24], x, [1, 16, 24, 24])


@pytest.fixture(scope="module")
def host_bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("count")
    bundles = {}
    for layers in (1, 2):
        path = folder / f"convs{layers}.onnx"
        onnx.save(_convs(layers), path)
        # AVX2 code: qemu-x86_64 does not emulate AVX-512 (what `host` compiles for on an
        # AVX-512 machine).
        bundles[layers] = api.build(path, "x86-avx2", folder / "out").bundle
    return bundles


def test_counts_follow_the_work_and_stay_put(host_bundles):
    require_tools("qemu-x86_64", "gcc")
    one = count_instructions(host_bundles[1], runs=1)
    two = count_instructions(host_bundles[2], runs=1)
    # Twice the convolutions: close to twice the instructions (the runner's own are few).
    assert 1.8 < two.hwcomp.per_inference / one.hwcomp.per_inference < 2.2
    # Per inference, the count does not depend on how many runs were counted.
    again = count_instructions(host_bundles[1], runs=3)
    assert again.hwcomp.runs == 3
    assert again.hwcomp.per_inference == pytest.approx(one.hwcomp.per_inference, rel=0.01)
    # The marked runs exclude start-up (loading TVM's runtime, the warm-up runs).
    assert one.hwcomp.process_total > 2 * one.hwcomp.per_inference
    # Most instructions are in the model's own conv function, named.
    top = one.hwcomp.places[0]
    assert top.name.startswith("model.so:") and top.instructions > 0.5 * one.hwcomp.per_inference
    assert one.onnxruntime is None and one.ratio is None


def test_host_onnxruntime_is_counted_beside_the_bundle(host_bundles, tmp_path):
    require_tools("qemu-x86_64", "gcc")
    proc = run_cli("bench", str(host_bundles[2]), "--count-instructions", "--compare-ort",
                   "--json", str(tmp_path / "c.json"))
    assert proc.returncode == 0, proc.stderr
    assert "counted under qemu-x86_64 -cpu max, 1 thread" in proc.stdout
    assert "INSTRUCTIONS EXECUTED, NOT TIMES" in proc.stdout
    doc = json.loads((tmp_path / "c.json").read_text())
    ours, theirs = doc["hwcomp"]["per_inference"], doc["onnxruntime"]["per_inference"]
    assert doc["ratio"] == pytest.approx(ours / theirs)
    # 2 x 16 x 16 x 9 x 576 = 2.65 M MACs: each runtime executes some hundred thousand
    # instructions or more (at most 16 MACs per AVX-512 FMA) and not wildly more than MACs.
    for count in (ours, theirs):
        assert 2.65e6 / 16 < count < 4 * 2.65e6
    assert any("onnxruntime" in place["name"] for place in doc["onnxruntime"]["places"])


@pytest.mark.cross
def test_arm_bundle_beside_onnxruntimes_aarch64_build(tmp_path):
    require_tools("aarch64-linux-gnu-g++", "qemu-aarch64", "gcc", "apt-get")
    path = tmp_path / "convs1.onnx"
    onnx.save(_convs(1), path)
    bundle = api.build(path, "arm-a72", tmp_path / "out").bundle
    proc = run_cli("bench", str(bundle), "--count-instructions", "--compare-ort", "--json",
                   str(tmp_path / "c.json"))
    assert proc.returncode == 0, proc.stderr
    assert "counted under qemu-aarch64 -cpu cortex-a72, 1 thread" in proc.stdout
    doc = json.loads((tmp_path / "c.json").read_text())
    places = [place["name"] for place in doc["onnxruntime"]["places"]]
    # onnxruntime's own aarch64 build ran it, in the arm64 Python.
    assert any(name.endswith("aarch64-linux-gnu.so") and "onnxruntime" in name for name in places)
    assert 1.32e6 / 4 < doc["onnxruntime"]["per_inference"] < 4 * 1.32e6
    assert doc["hwcomp"]["places"][0]["name"].startswith("model.so:")


def _path_without(tmp_path, keep: list[str]) -> dict[str, str]:
    """An environment whose PATH holds only ``keep`` (links to the real tools)."""
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    for name in keep:
        (tools / name).symlink_to(shutil.which(name))
    return {**os.environ, "PATH": str(tools)}


def test_missing_tools_fail_with_one_line(host_bundles, tmp_path):
    env = _path_without(tmp_path, ["gcc"])
    _assert_clean_error(run_cli("bench", str(host_bundles[1]), "--count-instructions", env=env),
                        "qemu-x86_64", "apt-get install qemu-user", code=EXIT_TOOLCHAIN)
    _assert_clean_error(run_cli("bench", str(host_bundles[1]), "--count-instructions",
                                "--threads", "2"), "--count-instructions counts one thread")
    _assert_clean_error(run_cli("bench", str(host_bundles[1]), "--count-instructions",
                                "--device", "rpc://pi:9090"), "drop --device")


@pytest.mark.cross
def test_missing_arm64_python_fails_with_one_line(tmp_path):
    """No apt here and nothing cached: the onnxruntime side says what it needs."""
    require_tools("aarch64-linux-gnu-g++", "qemu-aarch64", "gcc")
    path = tmp_path / "convs1.onnx"
    onnx.save(_convs(1), path)
    bundle = api.build(path, "arm-a72", tmp_path / "out").bundle
    env = _path_without(tmp_path, ["gcc", "as", "ld", "nm", "qemu-aarch64"])
    env["HWCOMP_CACHE_DIR"] = str(tmp_path / "empty-cache")
    _assert_clean_error(run_cli("bench", str(bundle), "--count-instructions", "--compare-ort",
                                env=env),
                        "Debian's arm64 python3", "this machine has no apt", code=EXIT_TOOLCHAIN)


def test_avx512_bundles_are_refused_before_qemu_runs_them():
    """qemu-x86_64 does not emulate AVX-512: counting such a bundle is refused with the fix,
    not left to die of an illegal instruction under qemu."""
    from hwcomp.instructions import CountError, emulation
    from hwcomp.targets import load_target

    with pytest.raises(CountError, match="x86-avx512") as raised:
        emulation(load_target("x86-avx512"))
    assert "AVX-512" in str(raised.value)
