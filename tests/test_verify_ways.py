"""--verify auto|host|emulator|device|skip: one meaning for every family."""

import dataclasses
import json

import pytest

from hwcomp import api
from hwcomp.lower import lowering_for
from hwcomp.targets import load_target
from hwcomp.verify import NOT_RUN
from tests.conftest import REPO, require_tools, run_cli
from tests.test_cli import _assert_clean_error

EXAMPLE = REPO / "tests" / "data" / "example_cnn.onnx"


def test_skip_builds_without_running(tmp_path):
    proc = run_cli("build", str(EXAMPLE), "-t", "host", "-o", str(tmp_path), "--verify", "skip")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "example_cnn-host" / "manifest.json").read_text())
    assert manifest["verification"]["status"] == NOT_RUN
    assert manifest["verification"]["reason"] == "skipped (--verify skip)"


@pytest.mark.parametrize(("target", "way", "message"), [
    ("host", "emulator", "x86 bundles run natively"),
    ("arm-a72", "host", "aarch64 code runs here only under qemu-aarch64"),
    ("cortex-m7", "device", "C sources for a firmware"),
])
def test_a_way_this_machine_cannot_take_is_refused_before_any_work(tmp_path, target, way,
                                                                   message):
    extra = ["--device", "rpc://127.0.0.1:9"] if way == "device" else []
    proc = run_cli("build", str(EXAMPLE), "-t", target, "-o", str(tmp_path / "out"),
                   "--verify", way, *extra)
    _assert_clean_error(proc, f"--verify {way}" if way != "device" else "--verify device",
                        message)
    assert not (tmp_path / "out").exists()


def test_device_and_verify_device_go_together(tmp_path):
    proc = run_cli("build", str(EXAMPLE), "-t", "host", "-o", str(tmp_path / "out"),
                   "--device", "rpc://127.0.0.1:9")
    _assert_clean_error(proc, "--verify device runs the bundle on --device")


def test_auto_without_the_emulator_is_not_run_and_says_why():
    """A family whose usual way is missing here is "not run" with the reason, as CUDA without
    a GPU is (an Arm build without qemu used to fail instead)."""
    arm = dataclasses.replace(load_target("arm-a72"), emulator="qemu-aarch64-not-installed")
    lowering = lowering_for(arm)
    ways = lowering.verify_ways(arm)
    assert all(ways.values()) and "qemu-aarch64-not-installed is missing" in ways["emulator"]
    verification, run = api._verify(REPO, lowering, arm, None, {}, [], 1e-4, "seeded")
    assert verification.status == NOT_RUN and run is None
    assert "qemu-aarch64-not-installed is missing" in (verification.reason or "")


def test_cortex_m_host_way_runs_the_c_here_only(tmp_path):
    require_tools("arm-none-eabi-gcc")
    proc = run_cli("build", str(EXAMPLE), "-t", "cortex-m7", "-o", str(tmp_path), "--verify",
                   "host")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "example_cnn-cortex-m7" / "manifest.json").read_text())
    verification = manifest["verification"]
    assert verification["status"] == "passed"
    assert verification["ran_on"] == "host build of the C (no board)" and verification["runs"] == {}
    assert "layer_counts" not in manifest  # no emulated board ran
