"""TVM's thread count: hwcomp's default is one thread per physical core, the user's choice wins."""

import os
import subprocess
import sys

from hwcomp.threads import physical_cores, thread_env


def test_default_is_one_thread_per_physical_core():
    assert thread_env(base={})["TVM_NUM_THREADS"] == str(physical_cores())
    assert thread_env(base={"TVM_NUM_THREADS": ""})["TVM_NUM_THREADS"] == str(physical_cores())


def test_the_users_setting_and_an_explicit_count_win():
    assert thread_env(base={"TVM_NUM_THREADS": "3"})["TVM_NUM_THREADS"] == "3"
    assert "TVM_NUM_THREADS" not in thread_env(base={"OMP_NUM_THREADS": "3"})
    assert thread_env(5, base={"TVM_NUM_THREADS": "3"})["TVM_NUM_THREADS"] == "5"


def test_the_cli_gives_tvm_every_core():
    """Through the CLI entry point, TVM's pool (read once, at its first use) has every core;
    without hwcomp's setting TVM 0.27 takes half the logical CPUs on x86."""
    probe = ("import sys; from hwcomp.cli import cli; "
             "cli.main(['targets'], standalone_mode=False); import tvm; "
             "print(tvm.get_global_func('runtime.NumThreads')(), file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, check=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == str(physical_cores())
