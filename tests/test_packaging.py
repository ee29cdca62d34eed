"""A non-editable install carries targets/ and kernels/ inside the wheel."""

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_wheel_carries_profiles_and_kernels(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path), str(REPO)], capture_output=True, text=True)
    if proc.returncode != 0 and "hatchling" in proc.stderr and not os.environ.get("CI"):
        pytest.skip("hatchling is not installed (pip install -e .[dev])")
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("hwcomp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hwcomp/_data/targets/arm-a72.toml" in names
    assert "hwcomp/_data/kernels/runner/runner.cc" in names
    assert "hwcomp/_data/kernels/runner/task_pool.h" in names
    assert "hwcomp/_data/kernels/bundle/CMakeLists.txt.in" in names
    # Installed on its own, the package finds its data inside itself.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    probe = ("from hwcomp.targets import targets_dir, load_target; "
             "print(targets_dir()); print(load_target('arm-a72').cores)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(target)), cwd=tmp_path, check=True)
    assert str(target) in out.stdout and "_data" in out.stdout
    assert out.stdout.strip().endswith("4")
