"""Bundle staging: nothing half-written at the output path, and killed runs' leftovers go."""

import os
import subprocess
import sys

import pytest

from hwcomp.package import remove_stale_staging, staged_output


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_of_killed_runs_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "model-host"
    dead = tmp_path / f".model-host.{_dead_pid()}.abc123.partial"
    replaced = tmp_path / f".model-host.{_dead_pid()}.def456.old"
    legacy = tmp_path / ".model-host.x1y2z3.partial"  # no pid: judged by its age
    live = tmp_path / f".model-host.{os.getppid()}.ghi789.partial"  # a concurrent build
    other = tmp_path / f".other-host.{_dead_pid()}.jkl012.partial"  # another output's
    for folder in (dead, replaced, legacy, live, other):
        folder.mkdir()
        (folder / "manifest.json").write_text("{}")
    os.utime(legacy, (0, 0))
    with staged_output(out, force=False) as staging:
        (staging / "manifest.json").write_text("{}")
        assert staging.name.startswith(f".model-host.{os.getpid()}.")
    assert not dead.exists() and not replaced.exists() and not legacy.exists()
    assert live.exists() and other.exists()  # negative cases: not this output's, or alive
    assert (out / "manifest.json").is_file()
    assert remove_stale_staging(out) == []


def test_a_failed_run_leaves_nothing_at_the_output_path(tmp_path):
    out = tmp_path / "model-host"
    with pytest.raises(RuntimeError), staged_output(out, force=False) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
