"""hwcomp bench: latency statistics of a bundle, beside onnxruntime, native or emulated."""

import json

import numpy as np
import pytest

from hwcomp import api
from hwcomp.bench import BenchError, LatencyStats, bench, split_rounds
from tests.conftest import REPO, require_tools, run_cli
from tests.test_cli import _assert_clean_error

EXAMPLE = REPO / "tests" / "data" / "example_cnn.onnx"


@pytest.fixture(scope="module")
def host_bundle(tmp_path_factory):
    return api.build(EXAMPLE, "host", tmp_path_factory.mktemp("bench")).bundle


def test_local_bench_with_onnxruntime(host_bundle, tmp_path):
    result = bench(host_bundle, repeat=7, number=2, warmup=1, compare_ort=True)
    stats = result.hwcomp
    assert stats.runs == 7 and not result.emulated
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms
    assert result.onnxruntime is not None and result.onnxruntime.runs == 7
    # 7 measurements alternate in 5 rounds (2+2+1+1+1); the ratio is the rounds' median.
    assert len(result.rounds) == 5
    assert result.ratio == pytest.approx(float(np.median([a / b for a, b in result.rounds])))
    assert stats.min_ms <= min(a for a, _ in result.rounds) <= stats.p99_ms
    proc = run_cli("bench", str(host_bundle), "--repeat", "5", "--compare-ort", "--json",
                   str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    assert "hwcomp / onnxruntime (median of 5 alternating rounds)" in proc.stdout
    assert "EMULATED" not in proc.stdout
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["hwcomp"]["runs"] == 5 and doc["ratio"] > 0


@pytest.mark.cross
def test_arm_bundle_is_labelled_emulated(tmp_path):
    require_tools("aarch64-linux-gnu-g++", "qemu-aarch64")
    bundle = api.build(EXAMPLE, "arm-a72", tmp_path).bundle
    proc = run_cli("bench", str(bundle), "--repeat", "2", "--warmup", "0")
    assert proc.returncode == 0, proc.stderr
    assert "emulated: qemu-aarch64" in proc.stdout
    assert "EMULATED: these times measure qemu, not the device's latency" in proc.stdout


def test_bad_devices_and_non_bundles_fail_clearly(host_bundle, tmp_path):
    _assert_clean_error(run_cli("bench", str(host_bundle), "--device", "rpc://no-such-host.invalid:9090"),
                        "unreachable", "hwcomp device-server", code=8)
    _assert_clean_error(run_cli("bench", str(host_bundle), "--device", "ssh://pi:22"),
                        "rpc://HOST:PORT")  # a typo in the flag: usage, 2
    _assert_clean_error(run_cli("bench", str(host_bundle), "--device", "rpc://pi:9090",
                                "--compare-ort"), "--compare-ort", "on the device")
    _assert_clean_error(run_cli("bench", str(tmp_path)), "not an hwcomp bundle")
    with pytest.raises(BenchError, match="not an hwcomp bundle"):
        bench(tmp_path)


def test_statistics():
    stats = LatencyStats.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats.min_ms == 1.0 and stats.median_ms == 3.0 and stats.mean_ms == 22.0
    assert stats.p99_ms > stats.p90_ms > stats.median_ms


def test_rounds_split_the_measurements():
    assert split_rounds(7) == [2, 2, 1, 1, 1]
    assert split_rounds(50) == [10] * 5
    assert split_rounds(2) == [1, 1]
    assert sum(split_rounds(101)) == 101


def test_bench_refuses_a_repeat_count_below_one(tmp_path):
    """--repeat 0 used to time one run anyway; it is a usage error naming the option."""
    done = run_cli("bench", str(tmp_path), "--repeat", "0")
    assert done.returncode == 2
    assert "--repeat" in done.stderr and "Traceback" not in done.stderr
