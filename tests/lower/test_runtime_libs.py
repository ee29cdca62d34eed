"""Where an Arm bundle's TVM runtime comes from: PyPI once (said on the output), or the
wheels in $HWCOMP_AARCH64_RUNTIME on a machine that cannot reach PyPI."""

import importlib.metadata
import logging
import zipfile

import pytest

from hwcomp.errors import ToolchainError
from hwcomp.lower.library import runtime_libs


def _wheel(folder, name, member_dir, libs):
    version = importlib.metadata.version(name)
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-manylinux_2_28_aarch64.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for lib in libs:
            archive.writestr(f"{member_dir}/{lib}", f"aarch64 {lib}")
    return path


def test_offline_wheels_are_used_without_pip(tmp_path, monkeypatch, caplog):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "apache-tvm", "tvm/lib", ["libtvm_runtime.so", "libtvm_runtime_extra.so"])
    _wheel(wheels, "apache-tvm-ffi", "tvm_ffi/lib", ["libtvm_ffi.so"])
    monkeypatch.setenv("HWCOMP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(runtime_libs.OFFLINE_ENV, str(wheels))
    monkeypatch.setattr(runtime_libs, "_download_wheels",
                        lambda *a: pytest.fail("pip was asked while offline wheels were given"))
    with caplog.at_level(logging.WARNING):
        libs = runtime_libs.aarch64_runtime_libs()
    assert [p.name for p in libs] == list(runtime_libs.RUNTIME_LIBS)
    assert libs[2].read_text() == "aarch64 libtvm_ffi.so"
    assert "fetching" not in caplog.text


def test_offline_folder_without_the_wheels_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HWCOMP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(runtime_libs.OFFLINE_ENV, str(tmp_path))
    with pytest.raises(ToolchainError, match="pip download apache-tvm=="):
        runtime_libs.aarch64_runtime_libs()


def test_the_download_is_said_on_the_output(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HWCOMP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(runtime_libs.OFFLINE_ENV, raising=False)

    def no_network(versions, dest):
        raise ToolchainError("no network here")

    monkeypatch.setattr(runtime_libs, "_download_wheels", no_network)
    with caplog.at_level(logging.WARNING), pytest.raises(ToolchainError):
        runtime_libs.aarch64_runtime_libs()
    assert "fetching the aarch64 TVM runtime" in caplog.text
    assert runtime_libs.OFFLINE_ENV in caplog.text
