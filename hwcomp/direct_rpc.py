"""MetaSchedule measurements on one RPC device server addressed directly, without a tracker.

MetaSchedule's RPC runner opens a session in each measurement worker with its
``f_create_session`` hook; the default goes through a tracker, which hands out servers by
device key. A single board on the desk (``hwcomp device-server`` on a Raspberry Pi) needs
no tracker: :func:`create_direct_session` connects to the server itself, whose address rides
in the configuration's tracker fields. It lives in its own small module because the runner
pickles the hook into worker processes, which import it by name.
"""

from __future__ import annotations

from typing import Any

# RPCConfig's checks want a tracker key; a direct session has none.
DIRECT_KEY = "direct"


def direct_config(host: str, port: int, timeout_s: int) -> Any:
    """Return the runner configuration naming the server at ``host:port``."""
    from tvm.s_tir.meta_schedule.runner import RPCConfig

    return RPCConfig(tracker_host=host, tracker_port=port, tracker_key=DIRECT_KEY,
                     session_timeout_sec=timeout_s)


def create_direct_session(rpc_config: Any) -> Any:
    """Open a session straight to the server ``rpc_config`` names (the runner's hook)."""
    from tvm import rpc

    return rpc.connect(rpc_config.tracker_host, int(rpc_config.tracker_port),
                       session_timeout=rpc_config.session_timeout_sec)
