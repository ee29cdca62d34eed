"""The TVM runtime libraries a bundle ships, for the bundle's architecture.

For the host they are the installed ``apache-tvm`` / ``apache-tvm-ffi`` wheels' own
``libtvm_runtime.so``, ``libtvm_runtime_extra.so`` (the runtime's contrib functions, such as the
sort behind TopK) and ``libtvm_ffi.so``. For aarch64 they come from the same versions'
aarch64 wheels on PyPI (downloaded once with pip into the user cache, then reused; said
on the output; or taken from the folder ``$HWCOMP_AARCH64_RUNTIME`` offline), so a bundle
runs on a Raspberry Pi and under ``qemu-aarch64`` without building TVM.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from hwcomp.errors import ToolchainError

logger = logging.getLogger(__name__)

# A folder holding the aarch64 apache-tvm and apache-tvm-ffi wheels, for machines that
# cannot reach PyPI.
OFFLINE_ENV = "HWCOMP_AARCH64_RUNTIME"
RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_runtime_extra.so", "libtvm_ffi.so")
_WHEEL_MEMBERS = {"libtvm_runtime.so": "tvm/lib/", "libtvm_runtime_extra.so": "tvm/lib/",
                  "libtvm_ffi.so": "tvm_ffi/lib/"}
_AARCH64_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")


def cache_dir() -> Path:
    """Return hwcomp's cache root (``$HWCOMP_CACHE_DIR`` or ``~/.cache/hwcomp``)."""
    root = os.environ.get("HWCOMP_CACHE_DIR") or Path.home() / ".cache" / "hwcomp"
    return Path(root)


def ffi_include_dir() -> Path:
    """Return the TVM FFI headers (with dlpack) the bundle runner compiles against."""
    import tvm_ffi

    return Path(tvm_ffi.__file__).parent / "include"


def tvm_include_dir() -> Path:
    """Return TVM's C headers (``tvm/runtime/c_backend_api.h``, which C kernels include)."""
    import tvm

    return Path(tvm.__file__).parent / "include"


def host_runtime_libs() -> list[Path]:
    """Return the installed x86-64 runtime libraries."""
    import tvm
    import tvm_ffi

    return [
        Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so",
        Path(tvm.__file__).parent / "lib" / "libtvm_runtime_extra.so",
        Path(tvm_ffi.__file__).parent / "lib" / "libtvm_ffi.so",
    ]


def aarch64_runtime_libs() -> list[Path]:
    """Return aarch64 runtime libraries matching the installed TVM, fetching them once."""
    versions = {
        "apache-tvm": importlib.metadata.version("apache-tvm"),
        "apache-tvm-ffi": importlib.metadata.version("apache-tvm-ffi"),
    }
    folder = cache_dir() / "runtime" / "aarch64" / f"tvm-{versions['apache-tvm']}"
    libs = [folder / name for name in RUNTIME_LIBS]
    if all(lib.is_file() for lib in libs):
        return libs
    folder.mkdir(parents=True, exist_ok=True)
    offline = os.environ.get(OFFLINE_ENV)
    if offline:
        wheels = _offline_wheels(Path(offline), versions)
        for wheel in wheels:
            _extract_libs(wheel, folder)
    else:
        requirements = " ".join(f"{name}=={version}" for name, version in versions.items())
        logger.warning("fetching the aarch64 TVM runtime (%s) from PyPI into %s, once; "
                       "offline, set %s to a folder with those aarch64 wheels",
                       requirements, folder, OFFLINE_ENV)
        with tempfile.TemporaryDirectory(prefix="hwcomp-wheels-") as scratch:
            _download_wheels(versions, Path(scratch))
            for wheel in Path(scratch).glob("*.whl"):
                _extract_libs(wheel, folder)
    missing = [lib.name for lib in libs if not lib.is_file()]
    if missing:
        raise ToolchainError(
            f"the aarch64 wheels of apache-tvm {versions['apache-tvm']} lack {', '.join(missing)}; "
            f"put aarch64 builds of them in {folder}"
        )
    return libs


def _offline_wheels(where: Path, versions: dict[str, str]) -> list[Path]:
    """Return the aarch64 wheels of ``versions`` in ``where`` (a folder or one wheel)."""
    folder = where if where.is_dir() else where.parent
    found = []
    for name, version in versions.items():
        stem = f"{name.replace('-', '_')}-{version}-"
        matches = [w for w in folder.glob(f"{stem}*.whl") if "aarch64" in w.name]
        if not matches:
            raise ToolchainError(
                f"{OFFLINE_ENV}={where}: no aarch64 wheel of {name} {version} there "
                f"({stem}*aarch64*.whl); download it with: pip download {name}=={version} "
                "--no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 "
                f"--python-version {sys.version_info.major}.{sys.version_info.minor}")
        found.append(sorted(matches)[-1])
    return found


def _download_wheels(versions: dict[str, str], dest: Path) -> None:
    requirements = [f"{name}=={version}" for name, version in versions.items()]
    platforms = [arg for p in _AARCH64_PLATFORMS for arg in ("--platform", p)]
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
        *platforms, "--dest", str(dest), *requirements,
    ]
    logger.info("fetching the aarch64 TVM runtime: %s", " ".join(requirements))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolchainError(
            f"could not download the aarch64 TVM runtime wheels ({tail}); run the README's "
            f"setup command with network access, or copy {', '.join(RUNTIME_LIBS)} "
            f"built for aarch64 into {cache_dir() / 'runtime' / 'aarch64'}"
        )


def _extract_libs(wheel: Path, folder: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            name = member.rsplit("/", 1)[-1]
            if name in _WHEEL_MEMBERS and member.endswith(_WHEEL_MEMBERS[name] + name):
                partial = folder / f".{name}.partial"
                partial.write_bytes(archive.read(member))
                partial.chmod(0o755)
                partial.replace(folder / name)
