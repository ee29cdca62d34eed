"""TVM's thread count: hwcomp's default is one thread per physical core, the user's choice wins."""

import os
import subprocess
import sys
from pathlib import Path

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


def test_threads_are_left_unpinned_unless_the_user_pins_them():
    assert thread_env(base={})["TVM_BIND_THREADS"] == "0"
    assert thread_env(2, base={"TVM_BIND_THREADS": "1"})["TVM_BIND_THREADS"] == "1"


def test_a_model_run_leaves_every_thread_free_to_move():
    """TVM's pool pins its worker threads to one core each unless TVM_BIND_THREADS is 0: a
    pinned thread that shares its core with another process stalls every parallel region.
    After the CLI's setup, running a parallel function leaves every thread of the process
    free to run on any core (with TVM_BIND_THREADS=1 a worker is pinned: the probe tells)."""
    probe = ("import glob, os, sys; from hwcomp.cli import cli; "
             "cli.main(['targets'], standalone_mode=False); import numpy as np, tvm; "
             "from tvm import te; a = te.placeholder((4096,), name='a'); "
             "b = te.compute((4096,), lambda i: a[i] * 2, name='b'); "
             "s = tvm.s_tir.Schedule(te.create_prim_func([a, b])); "
             "s.parallel(s.get_loops(s.get_sblock('b'))[0]); f = tvm.compile(s.mod, 'llvm'); "
             "x = tvm.runtime.tensor(np.ones(4096, 'float32')); "
             "y = tvm.runtime.tensor(np.zeros(4096, 'float32')); f(x, y); "
             "print(sorted({open(t + '/status').read().split('Cpus_allowed_list:')[1].split()[0] "
             "for t in glob.glob('/proc/self/task/*')}), file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    allowed = Path("/proc/self/status").read_text().split("Cpus_allowed_list:")[1].split()[0]
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, check=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == str([allowed])
