"""Shared fixtures: seeded models on disk, a CLI runner, toolchain requirements."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests import model_zoo

REPO = Path(__file__).resolve().parent.parent


def require_tools(*programs: str) -> None:
    """Skip when a tool is missing locally; fail in CI, which installs every tool."""
    missing = [p for p in programs if shutil.which(p) is None]
    if not missing:
        return
    message = f"needs {', '.join(missing)} (the README's setup command installs them)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def hwcomp_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the user's cache (runner binaries, aarch64 runtime) unless CI isolates it."""
    return Path(os.environ.get("HWCOMP_CACHE_DIR", Path.home() / ".cache" / "hwcomp"))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    onnx.save(model_zoo.resnet_like(), folder / "resnet_like.onnx")
    onnx.save(model_zoo.mobilenet_like(), folder / "mobilenet_like.onnx")
    onnx.save(model_zoo.resnet_like(batch="N"), folder / "resnet_dynamic.onnx")
    onnx.save(model_zoo.resnet_like(batch="N", size="S"), folder / "resnet_dynamic_hw.onnx")
    return folder


def run_cli(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``hwcomp`` as a user would, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "hwcomp", *args], capture_output=True, text=True,
        env=env, cwd=cwd, timeout=timeout, check=False,
    )
