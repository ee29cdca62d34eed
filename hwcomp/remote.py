"""Remote devices over TVM RPC, directly or through a tracker.

A device is a server (``rpc://host:port``) or one of the devices a tracker hands out by key
(``tracker://host:port/key``), the scale-out path for a farm.

Every failure a user can cause is bounded in time and named: an unreachable address
fails after ``timeout`` seconds, a key the tracker does not know lists the keys it does.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hwcomp.errors import EXIT_DEVICE, EXIT_USAGE, HwcompError, OptionError

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0
# A server or tracker that accepts the connection must answer the handshake within this.
HANDSHAKE_TIMEOUT_S = 20.0
SESSION_TIMEOUT_S = 600.0


class DeviceError(HwcompError):
    """A remote device is unreachable, unknown to the tracker, or did not answer in time."""

    exit_code = EXIT_DEVICE


class DeviceAddressError(DeviceError):
    """A ``--device`` value is not a device address (a usage error)."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class DeviceAddress:
    """Where a device is: ``rpc`` (a server) or ``tracker`` (with the device key)."""

    kind: str
    host: str
    port: int
    key: str = ""

    def __str__(self) -> str:
        return f"{self.kind}://{self.host}:{self.port}" + (f"/{self.key}" if self.key else "")


def parse_device(text: str) -> DeviceAddress:
    """Parse ``rpc://host:port`` or ``tracker://host:port/key``.

    Raises:
        DeviceError: Any other form.
    """
    kind, sep, rest = text.partition("://")
    address, _, key = rest.partition("/")
    host, _, port = address.rpartition(":")
    if not sep or kind not in ("rpc", "tracker") or not host or not port.isdigit():
        raise DeviceAddressError(f"--device {text}: use local, rpc://HOST:PORT or tracker://HOST:PORT/KEY")
    if kind == "tracker" and not key:
        raise DeviceAddressError(f"--device {text}: a tracker address needs the device key: tracker://{address}/KEY")
    return DeviceAddress(kind=kind, host=host, port=int(port), key=key)


def _reachable(host: str, port: int, timeout: float, what: str) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise DeviceError(
            f"{what} at {host}:{port} is unreachable ({exc.strerror or exc}); start it there "
            f"(hwcomp device-server) and check the address and firewall"
        ) from None


def connect(device: DeviceAddress, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """Open an RPC session on ``device`` (a ``tvm.rpc.RPCSession``)."""
    from tvm import rpc

    if device.kind == "rpc":
        _reachable(device.host, device.port, timeout, "the RPC server")
        return _ask(lambda: rpc.connect(device.host, device.port,
                                        session_timeout=SESSION_TIMEOUT_S),
                    HANDSHAKE_TIMEOUT_S, f"{device}: the RPC handshake",
                    f"{device}: the RPC handshake failed")
    _reachable(device.host, device.port, timeout, "the RPC tracker")
    tracker = _ask(lambda: rpc.connect_tracker(device.host, device.port), HANDSHAKE_TIMEOUT_S,
                   f"{device}: the tracker handshake", f"{device}: the tracker did not answer")
    summary = _ask(tracker.summary, HANDSHAKE_TIMEOUT_S, f"{device}: the tracker summary",
                   f"{device}: the tracker did not answer")
    keys = sorted({key for key in summary.get("queue_info", {})} |
                  {s.get("key", "").split(":")[-1] for s in summary.get("server_info", [])} - {""})
    if device.key not in keys:
        raise DeviceError(f"{device}: the tracker has no device with key '{device.key}'; "
                          f"keys it knows: {', '.join(keys) or 'none'}")
    return _ask(lambda: tracker.request(device.key, session_timeout=SESSION_TIMEOUT_S,
                                        max_retry=2),
                HANDSHAKE_TIMEOUT_S * 3, f"{device}: the tracker's device request",
                f"{device}: no device was handed out")


def _ask(call: Callable[[], T], seconds: float, what: str, failed: str) -> T:
    """:func:`bounded`, with any error of TVM's raised as a :class:`DeviceError` ``failed: ...``."""
    try:
        return bounded(call, seconds, what)
    except DeviceError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
        raise DeviceError(f"{failed}: {str(exc).splitlines()[-1]}") from None


def bounded(call: Callable[[], T], seconds: float, what: str) -> T:
    """Return ``call()``, or raise :class:`DeviceError` naming ``what`` after ``seconds``.

    TVM's RPC client blocks without a deadline on a peer that accepts a connection and never
    answers; the call runs in a daemon thread, which is abandoned (and ends with the
    process) when the deadline passes. Exceptions of ``call`` are raised here.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="hwcomp-remote", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise DeviceError(f"{what} did not answer within {seconds:.0f} s: check that the "
                          "address is a TVM RPC server/tracker (hwcomp device-server) and alive")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def last_port(port: int, port_end: int | None) -> int:
    """Return the last port ``device-server`` tries: ``port_end``, or ``port + 99`` (capped)."""
    if port_end is None:
        return min(port + 99, 65535)
    if port_end < port:
        raise OptionError(f"--port-end {port_end} is below --port {port}: give a range "
                          f"that starts at --port (e.g. --port-end {min(port + 99, 65535)})")
    return port_end


def server_command(host: str, port: int, port_end: int, tracker: str | None, key: str) -> list[str]:
    """Return the TVM RPC server command ``hwcomp device-server`` runs."""
    command = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port),
               "--port-end", str(port_end)]
    if tracker:
        command += ["--tracker", tracker, "--key", key]
    return command


TRUST_NOTE = (
    "hwcomp device-server runs code that clients upload, with this user's rights: serve only "
    "networks you trust (it binds {host}; --host 0.0.0.0 exposes it to the network)."
)
