"""How many CPU threads TVM's runtime uses: one per physical core unless the user chose.

TVM sizes its thread pool from ``TVM_NUM_THREADS``, else ``OMP_NUM_THREADS``, else, on x86,
half the logical CPUs: it assumes two hyper-threads per core. On a machine without SMT (most
cloud VMs, this project's 2-core runners) that is half the cores, so every parallel kernel ran on
one core of two. hwcomp sets ``TVM_NUM_THREADS`` to the physical core count where neither
variable is set: in its own process (tuning measures in child processes, which inherit it), in
the device server it starts, and in the bundle runner it launches (the runner applies the same
rule itself when run by hand). It also leaves threads unpinned (``TVM_BIND_THREADS=0``, see
:data:`BIND_VARIABLE`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# The variables TVM's runtime reads for its thread count, in its order of precedence.
THREAD_VARIABLES = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")


# TVM pins each of its pool's worker threads to a core of its own unless this is "0". With
# another process busy on one of those cores, a pinned thread gets half of it in scheduler
# time slices and every parallel region waits for it at a barrier: MnasNet on 2 cores with
# one busy ran 620 ms (median) pinned, 14 ms unpinned, where onnxruntime (it does not pin)
# took 19 ms. hwcomp sets it to "0" unless the user set it.
BIND_VARIABLE = "TVM_BIND_THREADS"


def physical_cores() -> int:
    """Return this machine's physical core count (logical CPUs where unknown)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def thread_env(threads: int = 0, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``base`` (default: this process's environment) with TVM's thread count set.

    ``threads`` > 0 sets it; 0 keeps the user's ``TVM_NUM_THREADS``/``OMP_NUM_THREADS`` and
    otherwise sets one thread per physical core.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault(BIND_VARIABLE, "0")
    if threads > 0:
        env["TVM_NUM_THREADS"] = str(threads)
    elif not any(env.get(name) for name in THREAD_VARIABLES):
        env["TVM_NUM_THREADS"] = str(physical_cores())
    return env


def use_physical_cores() -> None:
    """Set TVM's thread count for this process and its children (see :func:`thread_env`).

    Call before the process first runs a parallel TVM function: the pool reads it once.
    """
    env = thread_env()
    for variable in (THREAD_VARIABLES[0], BIND_VARIABLE):
        if variable in env:
            os.environ[variable] = env[variable]
