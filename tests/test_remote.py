"""Remote devices: a real TVM tracker and RPC server on loopback (subprocesses, bounded time)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from hwcomp import api
from hwcomp.bench import bench
from hwcomp.remote import DeviceError, connect, parse_device
from tests.conftest import REPO, run_cli
from tests.test_cli import _assert_clean_error

EXAMPLE = REPO / "tests" / "data" / "example_cnn.onnx"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"nothing listened on port {port} within {deadline_s} s")


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def devices():
    """A tracker, a server registered with it under key 'loop', and a direct server."""
    tracker_port, server_port, direct_port = _free_port(), _free_port(), _free_port()
    tracker = _start([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                      "--port", str(tracker_port), "--port-end", str(tracker_port + 1)])
    _wait_for_port(tracker_port)
    registered = _start([sys.executable, "-m", "hwcomp", "device-server", "--port",
                         str(server_port), "--port-end", str(server_port + 1), "--tracker",
                         f"127.0.0.1:{tracker_port}", "--key", "loop"])
    direct = _start([sys.executable, "-m", "hwcomp", "device-server", "--port",
                     str(direct_port), "--port-end", str(direct_port + 1)])
    try:
        _wait_for_port(server_port)
        _wait_for_port(direct_port)
        time.sleep(2)  # the registered server announces itself to the tracker
        yield {"tracker": tracker_port, "direct": direct_port}
    finally:
        for proc in (registered, direct, tracker):
            _stop(proc)


@pytest.fixture(scope="module")
def host_bundle(tmp_path_factory):
    return api.build(EXAMPLE, "host", tmp_path_factory.mktemp("remote")).bundle


def test_bench_through_a_direct_rpc_server(devices, host_bundle):
    result = bench(host_bundle, device=f"rpc://127.0.0.1:{devices['direct']}", repeat=4, warmup=1)
    assert result.hwcomp.runs == 4 and result.hwcomp.min_ms > 0
    assert result.device.startswith("rpc://127.0.0.1")


def test_bench_through_the_tracker_cli(devices, host_bundle, tmp_path):
    proc = run_cli("bench", str(host_bundle), "--device",
                   f"tracker://127.0.0.1:{devices['tracker']}/loop", "--repeat", "3",
                   "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    assert f"tracker://127.0.0.1:{devices['tracker']}/loop" in proc.stdout
    assert (tmp_path / "b.json").is_file()


def test_wrong_key_and_unreachable_devices_fail_fast(devices, host_bundle):
    started = time.monotonic()
    proc = run_cli("bench", str(host_bundle), "--device",
                   f"tracker://127.0.0.1:{devices['tracker']}/nope")
    _assert_clean_error(proc, "no device with key 'nope'", "loop", code=8)
    with pytest.raises(DeviceError, match="unreachable"):
        connect(parse_device(f"rpc://127.0.0.1:{_free_port()}"), timeout=2)
    assert time.monotonic() - started < 60


def test_device_addresses():
    assert parse_device("tracker://farm:9190/pi4").key == "pi4"
    for bad in ["rpc://nohost", "tracker://farm:9190", "ssh://pi:22"]:
        with pytest.raises(DeviceError):
            parse_device(bad)


@pytest.fixture
def silent_server():
    """A loopback server that accepts connections and never answers (closed by the test)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def accept_loop() -> None:
        listener.settimeout(0.2)
        deadline = time.monotonic() + 60  # stops by itself
        while time.monotonic() < deadline:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                if listener.fileno() == -1:
                    return

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    for conn in accepted:
        conn.close()


@pytest.mark.parametrize("address", ["rpc://127.0.0.1:{port}", "tracker://127.0.0.1:{port}/pi4"])
def test_a_peer_that_accepts_and_never_answers_fails_within_the_deadline(
        silent_server, monkeypatch, address):
    """Such a server used to hold bench and tune until killed (> 150 s)."""
    from hwcomp import remote

    monkeypatch.setattr(remote, "HANDSHAKE_TIMEOUT_S", 2.0)
    started = time.monotonic()
    with pytest.raises(DeviceError, match="did not answer within 2 s"):
        connect(parse_device(address.format(port=silent_server)))
    assert time.monotonic() - started < 15


def test_bounded_returns_and_raises_what_the_call_does():
    """Negative case: a call that finishes in time is untouched, its errors pass through."""
    from hwcomp.remote import bounded

    assert bounded(lambda: 42, 5, "a quick call") == 42
    with pytest.raises(ZeroDivisionError):
        bounded(lambda: 1 // 0, 5, "a failing call")


def test_device_server_ports_default_to_a_range_from_the_first_port():
    """--port 9311 with the old fixed --port-end 9199 was an internal error in TVM's server."""
    from hwcomp.errors import OptionError
    from hwcomp.remote import last_port, server_command

    assert last_port(9311, None) == 9410 and last_port(65500, None) == 65535
    assert last_port(9090, 9095) == 9095
    command = server_command("127.0.0.1", 9311, last_port(9311, None), None, "")
    assert command[command.index("--port-end") + 1] == "9410"
    with pytest.raises(OptionError, match="--port-end 9199 is below --port 9311"):
        last_port(9311, 9199)
    done = run_cli("device-server", "--port", "9311", "--port-end", "9199")
    _assert_clean_error(done, "--port-end 9199")


def test_build_verifies_on_a_device(devices, tmp_path):
    """--verify device: the bundle's library runs on the device server, compared there."""
    proc = run_cli("build", str(EXAMPLE), "-t", "host", "-o", str(tmp_path), "--verify",
                   "device", "--device", f"rpc://127.0.0.1:{devices['direct']}")
    assert proc.returncode == 0, proc.stderr
    assert "verification: passed" in proc.stdout
    import json

    manifest = json.loads((tmp_path / "example_cnn-host" / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed"
    unreachable = run_cli("build", str(EXAMPLE), "-t", "host", "-o", str(tmp_path / "x"),
                          "--verify", "device", "--device", f"rpc://127.0.0.1:{_free_port()}")
    assert unreachable.returncode == 8 and "unreachable" in unreachable.stderr
    assert not (tmp_path / "x").exists()
