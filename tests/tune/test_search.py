"""MetaSchedule tuning: real trials into a database that builds reuse with zero new trials.

The model is a depthwise conv + ReLU (the part of a MobileNet block hwcomp's own kernels do
not cover, so MetaSchedule has a real conv to tune); trial counts stay tiny (2 cores).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.tune import search as tuning
from tests.conftest import REPO, run_cli
from tests.test_remote import devices  # noqa: F401 - the loopback tracker fixture


@pytest.fixture(scope="module")
def depthwise(tmp_path_factory):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], group=16, pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 24, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 24, 24])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path_factory.mktemp("tune") / "dw.onnx"
    onnx.save(model, path)
    return path


def _records(db) -> list[dict]:
    path = db / tuning.RECORDS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _measured(db) -> bool:
    """Whether the database holds records and every one carries a real run time.

    MetaSchedule records a failed measurement (no session, a crash) as 1e10 seconds.
    """
    records = _records(db)
    return bool(records) and all(0 < min(r[1][1]) < 1.0 for r in records)


def test_tune_fills_the_database_and_build_reuses_it_with_zero_trials(depthwise, tmp_path):
    db = tmp_path / "db"
    result = run_cli("tune", str(depthwise), "--target", "host", "--trials", "4", "--per-task",
                     "4", "--db", str(db), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "task 1/" in result.stderr and "trials" in result.stderr  # progress lines
    measured = _records(db)
    assert measured, result.stdout
    assert any(r[1][1] and r[1][1][0] < 1e9 for r in measured)  # a real latency was recorded

    built = run_cli("build", str(depthwise), "--target", "host", "--db", str(db), "-o",
                    str(tmp_path / "out"), timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "dw-host" / "manifest.json").read_text())
    assert manifest["tuning"]["functions_tuned"] >= 1
    assert manifest["verification"]["status"] == "passed"
    assert len(_records(db)) == len(measured)  # the rebuild ran zero trials

    # A second tuning run starts from what the first found. Each run also measures hwcomp's
    # default schedule and records it, so a tuned build cannot be slower than an untuned one.
    again = tuning.tune(depthwise, "host", 2, database=db)
    assert again.defaults == [task.name for task in again.tasks]
    assert again.records_before == len(measured)
    assert again.records_after >= again.records_before


def test_tune_through_a_tracker_measures_on_the_device(depthwise, devices, tmp_path):  # noqa: F811
    db = tmp_path / "db"
    result = run_cli("tune", str(depthwise), "--target", "host", "--trials", "2", "--db",
                     str(db), "--device", f"tracker://127.0.0.1:{devices['tracker']}/loop",
                     timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _measured(db)


def test_tune_through_a_direct_rpc_server(depthwise, devices, tmp_path):  # noqa: F811
    """--rpc HOST:PORT: MetaSchedule's runner talks to the device server itself, no tracker."""
    db = tmp_path / "db"
    result = run_cli("tune", str(depthwise), "--target", "host", "--trials", "2", "--db",
                     str(db), "--rpc", f"127.0.0.1:{devices['direct']}", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _measured(db)
    result = run_cli("tune", str(depthwise), "--target", "host", "--trials", "2", "--db",
                     str(db), "--rpc", f"127.0.0.1:{devices['direct']}", "--tracker", "x:1",
                     "--key", "k")
    assert result.returncode == 2 and "one of --device, --rpc and --tracker" in result.stderr


def test_tune_rejects_an_unknown_device_key_fast(depthwise, devices, tmp_path):  # noqa: F811
    started = time.monotonic()
    result = run_cli("tune", str(depthwise), "--target", "host", "--trials", "2", "--db",
                     str(tmp_path / "db"), "--device",
                     f"tracker://127.0.0.1:{devices['tracker']}/nosuchkey", timeout=120)
    assert result.returncode == 8 and "nosuchkey" in result.stderr
    assert "Traceback" not in result.stderr and time.monotonic() - started < 60


def test_interrupted_tuning_leaves_a_database_the_next_run_continues_from(depthwise, tmp_path):
    db = tmp_path / "db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwcomp", "tune", str(depthwise), "--target", "host",
         "--trials", "500", "--per-task", "500", "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        if (db / tuning.RECORDS).is_file() and _records(db):
            break
        time.sleep(1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in out
    kept = _records(db)  # every line parses
    assert kept

    # A torn last line (a kill -9 mid-write) is dropped, not fatal.
    with (db / tuning.RECORDS).open("a") as handle:
        handle.write('[0, [[1.0')
    assert tuning.repair_database(db) == 1
    assert len(_records(db)) == len(kept)
    again = tuning.tune(depthwise, "host", 1, database=db)
    assert again.records_before == len(kept)


def test_tuning_errors_are_clear(depthwise, tmp_path):
    result = run_cli("tune", str(depthwise), "--target", "arm-a72", "--trials", "2", "--db",
                     str(tmp_path / "db"))
    assert result.returncode == 2 and "tracker" in result.stderr
    result = run_cli("tune", str(depthwise), "--target", "cuda-sm80", "--trials", "2")
    assert result.returncode == 2 and "CPU targets" in result.stderr
