"""The command line as a user meets it, bad input included (exit 2, one line, no traceback)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import REPO, run_cli
from tests.helpers import make_model


def _assert_clean_error(proc, *fragments: str, code: int = 2) -> None:
    """One ``hwcomp: error:`` line naming ``fragments``, no traceback, exit ``code``."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hwcomp: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_targets_table_and_show():
    proc = run_cli("targets")
    assert proc.returncode == 0
    for name in ["host", "x86-avx512", "arm-a72", "cuda-sm90", "cortex-m55"]:
        assert name in proc.stdout
    # Microcontrollers' peaks in millions, not "0" billions.
    m4 = next(line for line in proc.stdout.splitlines() if line.startswith("cortex-m4 "))
    assert "360 M" in m4 and " 0 " not in m4
    listed = json.loads(run_cli("targets", "--json").stdout)
    assert listed["schema"] == "hwcomp.targets/1"
    m7 = next(t for t in listed["targets"] if t["name"] == "cortex-m7")
    assert m7["peak_macs_per_s"]["int8"] == 4 * 480e6 and m7["flash_bytes"] == 2097152
    show = run_cli("targets", "show", "arm-a72")
    assert show.returncode == 0
    assert "cortex-a72" in show.stdout and "Raspberry Pi 4" in show.stdout
    assert "SDOT/UDOT are Armv8.2" in show.stdout


def test_build_example_for_host(tmp_path):
    proc = run_cli("build", str(REPO / "tests" / "data" / "example_cnn.onnx"), "--target", "host",
                   "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "verification: passed" in proc.stdout
    assert (tmp_path / "example_cnn-host" / "lib" / "model.so").is_file()


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("hello, I am text\n" * 10)
    proc = run_cli("build", str(path), "--target", "host", "-o", str(tmp_path / "out"))
    _assert_clean_error(proc, "model.onnx", code=3)
    assert not (tmp_path / "out").exists()


def test_truncated_file(tmp_path):
    data = (REPO / "tests" / "data" / "example_cnn.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 3])
    proc = run_cli("build", str(path), "--target", "host", "-o", str(tmp_path / "out"))
    _assert_clean_error(proc, "cut.onnx", code=3)
    assert not (tmp_path / "out").exists()


def test_unknown_target(tmp_path):
    proc = run_cli("build", str(REPO / "tests" / "data" / "example_cnn.onnx"), "--target",
                   "arm-a99", "-o", str(tmp_path / "out"))
    _assert_clean_error(proc, "unknown target 'arm-a99'", "arm-a72")
    assert not (tmp_path / "out").exists()


def test_unsupported_op_names_the_node(tmp_path):
    model = make_model([helper.make_node("Det", ["x"], ["y"], name="determinant_7")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(model, tmp_path / "det.onnx")
    proc = run_cli("build", str(tmp_path / "det.onnx"), "--target", "host", "-o",
                   str(tmp_path / "out"))
    _assert_clean_error(proc, "determinant_7", "Det", code=4)
    assert not (tmp_path / "out").exists()


def test_dynamic_dim_without_input_shape(tmp_path):
    from tests import model_zoo

    onnx.save(model_zoo.resnet_like(batch="N", size="S"), tmp_path / "dyn.onnx")
    proc = run_cli("build", str(tmp_path / "dyn.onnx"), "--target", "host", "-o",
                   str(tmp_path / "out"))
    # The hint shows the input's real rank and known sizes, not a generic 1x3x224x224.
    _assert_clean_error(proc, "'input'", "[N, 3, S, S]", "--input-shape input=1x3x<S>x<S>")
    assert not (tmp_path / "out").exists()


def test_a_dynamic_batch_alone_defaults_to_one_with_a_note(tmp_path):
    from tests import model_zoo

    onnx.save(model_zoo.resnet_like(batch="N"), tmp_path / "dyn.onnx")
    proc = run_cli("analyze", str(tmp_path / "dyn.onnx"), "--target", "host")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.strip()]
    assert notes == ["hwcomp: input 'input' has a dynamic batch dimension 'N'; using 1 "
                     "(set it with --input-shape input=1x3x32x32)"]


def test_existing_output_dir(tmp_path):
    existing = tmp_path / "example_cnn-host"
    existing.mkdir()
    proc = run_cli("build", str(REPO / "tests" / "data" / "example_cnn.onnx"), "--target",
                   "host", "-o", str(tmp_path))
    _assert_clean_error(proc, "exists", "--force")
    assert list(existing.iterdir()) == []


def test_missing_cross_compiler_names_the_package(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A PATH with Python's folder only: no aarch64 cross compiler on it.
    python_dir = Path(os.sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}:{python_dir}")
    if shutil.which("aarch64-linux-gnu-g++", path=env["PATH"]):
        pytest.skip("the Python folder holds a cross compiler")
    proc = run_cli("build", str(REPO / "tests" / "data" / "example_cnn.onnx"), "--target",
                   "arm-a72", "-o", str(tmp_path / "out"), env=env)
    _assert_clean_error(proc, "aarch64-linux-gnu-g++", "apt-get install g++-aarch64-linux-gnu",
                        code=7)
    assert not (tmp_path / "out").exists()


def test_bad_input_shape_syntax(tmp_path):
    proc = run_cli("build", str(REPO / "tests" / "data" / "example_cnn.onnx"), "--target",
                   "host", "--input-shape", "input=1x3xbig", "-o", str(tmp_path / "out"))
    _assert_clean_error(proc, "input=1x3xbig")


def test_bad_calibration_file(tmp_path):
    np.savez(tmp_path / "calib.npz", image=np.zeros((1, 3, 32, 32), np.float32))
    proc = run_cli("build", str(REPO / "tests" / "data" / "example_cnn.onnx"), "--target",
                   "host", "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "out"))
    _assert_clean_error(proc, "calib.npz", "'input'", code=3)
    assert not (tmp_path / "out").exists()


def test_ctrl_c_leaves_nothing_behind(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    # Background jobs (CI) inherit SIGINT ignored; a user's terminal delivers it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwcomp", "build", str(REPO / "tests" / "data" / "example_cnn.onnx"),
         "--target", "host", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Interrupt once the staging folder exists: the bundle is being written.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and any(p.name.endswith(".partial") for p in out.iterdir()):
            break
        time.sleep(0.02)
    else:
        pytest.fail("the build ended before a staging folder appeared")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted; nothing was written" in stderr and "Traceback" not in stderr
    assert not out.exists()  # the -o folder this build created is removed too


def test_build_with_compression_records_it(tmp_path):
    import json

    proc = run_cli("build", str(REPO / "tests" / "data" / "example_cnn.onnx"), "--target", "host",
                   "-o", str(tmp_path), "--prune", "0.5", "--lowrank", "0.9")
    assert proc.returncode == 0, proc.stderr
    assert "compressed: MACs 8,831,296 ->" in proc.stdout and "verification: passed" in proc.stdout
    manifest = json.loads((tmp_path / "example_cnn-host" / "manifest.json").read_text())
    summary = manifest["compression"]
    assert summary["macs_after"] < 0.9 * summary["macs_before"]  # host aligns to 16 channels
    assert "prune-channels" in summary["steps"] and "reconstruct" in summary["steps"]
    assert manifest["verification"]["status"] == "passed"


def test_sigterm_also_leaves_nothing_behind(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwcomp", "build", str(REPO / "tests" / "data" / "example_cnn.onnx"),
         "--target", "host", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and any(p.name.endswith(".partial") for p in out.iterdir()):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr  # terminated, told apart from Ctrl-C
    assert not out.exists()  # the -o folder this build created is removed too


def test_an_empty_calibration_file_is_bad_data_not_an_interrupt(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    proc = run_cli("analyze", str(REPO / "tests" / "data" / "example_cnn.onnx"), "--target",
                   "host", "--calib", str(tmp_path / "empty.npz"))
    _assert_clean_error(proc, "empty.npz", code=3)


def test_library_warnings_go_to_the_log_not_the_error_line():
    """numpy's RuntimeWarnings printed extra lines around one-line errors; -v shows them."""
    script = (
        "import sys, warnings, click\n"
        "from hwcomp import cli\n"
        "from hwcomp.errors import CalibrationDataError\n"
        "@click.command('warn-then-fail')\n"
        "def warn_then_fail():\n"
        "    warnings.warn('overflow encountered in cast', RuntimeWarning, stacklevel=1)\n"
        "    raise CalibrationDataError('calib.npz: bad values')\n"
        "cli.cli.add_command(warn_then_fail)\n"
        "sys.argv = ['hwcomp', *sys.argv[1:]]\n"
        "cli.main()\n")
    for args, shown in ((["warn-then-fail"], False), (["-v", "warn-then-fail"], True)):
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              text=True, timeout=120, cwd=REPO)
        assert done.returncode == 3
        assert ("overflow encountered in cast" in done.stderr) == shown, done.stderr
        if not shown:
            _assert_clean_error(done, "calib.npz: bad values", code=3)


def test_native_library_output_goes_to_a_log_named_in_the_error(tmp_path):
    """TVM and onnxruntime write to descriptor 2 from C++ (BlockBuilder warnings, log blocks)."""
    script = (
        "import os, sys, click\n"
        "from hwcomp import cli\n"
        "from hwcomp.errors import UnsupportedOpError\n"
        "@click.command('chatter')\n"
        "@click.option('--fail', is_flag=True)\n"
        "def chatter(fail):\n"
        "    os.write(2, b'[18:22:36] block_builder.cc:67: Warning: BlockBuilder destroyed\\n')\n"
        "    if fail:\n"
        "        raise UnsupportedOpError(\"node 'rs' could not be imported\")\n"
        "    click.echo('done', err=True)\n"
        "cli.cli.add_command(chatter)\n"
        "sys.argv = ['hwcomp', *sys.argv[1:]]\n"
        "cli.main()\n")
    env = {**os.environ, "HWCOMP_CACHE_DIR": str(tmp_path)}
    failed = subprocess.run([sys.executable, "-c", script, "chatter", "--fail"],
                            capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    _assert_clean_error(failed, "node 'rs' could not be imported", code=4)
    assert "BlockBuilder" not in failed.stderr
    log = Path(failed.stderr.split("library messages: ")[1].rstrip(")\n"))
    assert log.parent == tmp_path / "logs"
    assert "BlockBuilder destroyed" in log.read_text()

    worked = subprocess.run([sys.executable, "-c", script, "chatter"], capture_output=True,
                            text=True, timeout=120, cwd=REPO, env=env)
    assert worked.returncode == 0 and worked.stderr == "done\n"
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [log.name]  # its own gone

    verbose = subprocess.run([sys.executable, "-c", script, "-v", "chatter", "--fail"],
                             capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert verbose.returncode == 4 and "BlockBuilder destroyed" in verbose.stderr


@pytest.mark.parametrize(("signum", "code", "word"), [(2, 130, "interrupted"),
                                                      (15, 143, "terminated")])
def test_a_signal_while_hwcomp_starts_is_one_line_and_its_exit_code(tmp_path, signum, code, word):
    """Importing TVM takes seconds; a signal then printed a traceback from inside an import."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "hwcomp", "build", str(REPO / "tests" / "data" / "example_cnn.onnx"),
         "--target", "host", "-o", str(tmp_path / "out")], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.4)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stderr == f"hwcomp: {word}; nothing was written\n"
    assert not (tmp_path / "out").exists()


def test_a_signal_inside_an_import_waits_for_the_import_to_end(tmp_path):
    """tvm_ffi imports torch, whose pybind11 start-up calls back into Python: a
    KeyboardInterrupt raised there ended in std::terminate (exit -6, no message; CI saw it
    once in a fuzz case). The handler leaves imports whole and stops right after."""
    (tmp_path / "slow_module.py").write_text(
        "import os, signal\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "total = sum(i * i for i in range(3_000_000))  # bytecode: the handler runs here\n"
        "finished = True\n")
    script = (
        "import signal, sys, time\n"
        "from hwcomp import stop\n"
        "signal.signal(signal.SIGINT, stop.handle)\n"
        "try:\n"  # the stop may land on any bytecode after the import: all inside the try
        "    import slow_module\n"
        "    time.sleep(10)\n"
        "except KeyboardInterrupt:\n"
        "    whole = getattr(sys.modules.get('slow_module'), 'finished', False)\n"
        "    print('imported', whole, stop.requested(), flush=True)\n"
        "    print('stopped after the import', flush=True)\n"
        "stop._REQUESTED.clear()\n"
        "with stop.deferred():\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    print('deferred block ran to its end', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.stdout.splitlines() == ["imported True True", "stopped after the import",
                                        "deferred block ran to its end"], done.stderr
    # ... and the deferred block's stop is raised as it ends
    assert done.returncode == -2, done.stderr
    assert "in raise_if_requested" in done.stderr
    assert done.stderr.rstrip().endswith("KeyboardInterrupt"), done.stderr


def test_a_stop_a_library_swallowed_still_stops_the_bundle(tmp_path):
    """TVM turns a KeyboardInterrupt in a callback into its own error; a fallback ate it."""
    import signal

    from hwcomp import stop
    from hwcomp.lower.cpu.rules.base import SafeRule
    from hwcomp.package import staged_output

    class Failing(SafeRule):
        def schedule(self, func):
            raise RuntimeError("KeyboardInterrupt raised inside a TVM callback")

    assert Failing().apply(None, None, False) is None  # no stop asked: the rule falls back
    stop.request(signal.SIGTERM)
    try:
        with pytest.raises(stop.Terminated):
            Failing().apply(None, None, False)
        destination = tmp_path / "new" / "folder" / "bundle"
        with pytest.raises(stop.Terminated), staged_output(destination, force=False) as staging:
            (staging / "manifest.json").write_text("{}")
        assert not (tmp_path / "new").exists()  # the -o folders this run created went too
    finally:
        stop._REQUESTED.clear()


def test_worker_processes_die_with_their_parent(tmp_path):
    """Tuning's builder/runner workers: a SIGKILLed tune must not leave them running."""
    import time

    import psutil

    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'from hwcomp import stop; "
        "stop.die_with_parent(); import time; time.sleep(120)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    worker = psutil.Process(int(parent.stdout.readline()))
    time.sleep(1.0)  # the worker has made its prctl call
    parent.kill()
    parent.wait(timeout=30)
    gone, _ = psutil.wait_procs([worker], timeout=10)
    assert gone, "the worker outlived its parent"


def test_log_flags_work_after_the_command():
    """-v / -q before or after the command name; -q silences warnings, -v shows steps."""
    after = run_cli("targets", "show", "cortex-m7", "-v")
    before = run_cli("-v", "targets", "show", "cortex-m7")
    assert after.returncode == before.returncode == 0 and after.stdout == before.stdout
    quiet = run_cli("targets", "--json", "-q")
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["targets"]
    assert "-q, --quiet" in run_cli("--help").stdout


@pytest.mark.cross
def test_another_toolchain_by_prefix_builds_and_a_wrong_one_is_refused(tmp_path):
    """--cross-prefix: the bundle is compiled by the named toolchain (here the system's
    aarch64 gcc behind a wrapper that logs each call, as ccache or a vendor's wrapper would
    sit), verified under qemu; a toolchain for another machine or a missing one: exit 7."""
    from tests.conftest import require_tools

    require_tools("aarch64-linux-gnu-g++", "qemu-aarch64")
    tools = tmp_path / "toolchain" / "bin"
    tools.mkdir(parents=True)
    calls = tmp_path / "calls.log"
    for tool in ("g++", "gcc"):
        wrapper = tools / f"acme-aarch64-{tool}"
        wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n'
                           f'exec aarch64-linux-gnu-{tool} "$@"\n')
        wrapper.chmod(0o755)
    model = REPO / "tests" / "data" / "example_cnn.onnx"
    built = run_cli("build", str(model), "-t", "arm-a72", "-o", str(tmp_path / "out"),
                    "--cross-prefix", f"{tools}/acme-aarch64-")
    assert built.returncode == 0, built.stderr
    manifest = json.loads((tmp_path / "out" / "example_cnn-arm-a72" / "manifest.json").read_text())
    assert manifest["target"]["cross_compiler"] == f"{tools}/acme-aarch64-g++"
    assert manifest["verification"]["status"] == "passed"
    logged = calls.read_text()
    # the library and the runner (its cache key holds the compiler: built afresh)
    assert "model.so" in logged and "runner.cc" in logged

    wrong = run_cli("build", str(model), "-t", "arm-a72", "-o", str(tmp_path / "out2"),
                    "--cross-prefix", "x86_64-linux-gnu-")
    _assert_clean_error(wrong, "builds for x86_64", "not aarch64 (arm-a72)", code=7)
    missing = run_cli("build", str(model), "-t", "arm-a72", "-o", str(tmp_path / "out2"),
                      env={**os.environ, "HWCOMP_CROSS_PREFIX": str(tmp_path / "nothing-")})
    _assert_clean_error(missing, "nothing-g++", "does not exist", code=7)
    assert not (tmp_path / "out2").exists()


def test_shell_completion_offers_commands_options_and_target_names():
    """The README's completion line: click's protocol, with profile names for --target."""
    def complete(words: str) -> list[str]:
        env = {**os.environ, "_HWCOMP_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - 1)}
        done = subprocess.run([sys.executable, "-m", "hwcomp"], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return [line.split(",", 1)[1] for line in done.stdout.splitlines()]

    assert complete("hwcomp bu") == ["build"]
    assert "--cross-prefix" in complete("hwcomp build m.onnx --cro")
    assert complete("hwcomp build m.onnx -t arm-a7") == ["arm-a72", "arm-a76"]
    script = subprocess.run([sys.executable, "-m", "hwcomp"], capture_output=True, text=True,
                            env={**os.environ, "_HWCOMP_COMPLETE": "bash_source"}, timeout=120)
    assert "complete -o nosort -F _hwcomp_completion hwcomp" in script.stdout


@pytest.mark.parametrize("command", ["build", "analyze", "profile", "validate", "compress",
                                     "tune", "bench", "device-server"])
def test_every_commands_help_shows_its_examples_as_written(command):
    """click keeps an "Examples:" block's lines only after a backspace line; a raw docstring
    printed "\\b Examples: hwcomp build ..." as one run-on paragraph."""
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("Examples"))
    assert "\\b" not in proc.stdout
    assert lines[at + 1].strip().startswith(f"hwcomp {command} ")
    # every flag an example shows is one the command takes
    from hwcomp.cli import cli

    known = {opt for param in cli.commands[command].params for opt in param.opts}
    block = lines[at + 1:lines.index("", at)]  # the example lines, up to the blank one
    shown = {word.strip("[]") for line in block for word in line.split()
             if word.strip("[]").startswith("--")}
    assert shown and shown <= known, shown - known
