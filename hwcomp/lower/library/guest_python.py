"""An arm64 Python with onnxruntime's aarch64 build, to run under ``qemu-aarch64``.

``hwcomp bench --count-instructions --compare-ort`` counts onnxruntime's instructions on an
Arm bundle's model with the runtime a Raspberry Pi user would install: the aarch64
onnxruntime and numpy wheels from PyPI (the versions installed here), run by Debian's arm64
``python3`` under the same emulator and CPU model as the bundle. The root is assembled once
into the user cache from Debian's arm64 packages (``apt-get download``; the machine needs
the arm64 architecture added, which the README's setup command does) and the wheels
(``pip download``), and reused.

qemu-user does not emulate ``/proc/cpuinfo`` for aarch64 guests: the guest reads the host's,
and onnxruntime's CPU detection (pytorch's cpuinfo) crashes on an x86 one. Each emulated CPU
gets a view of the root (links to it) with a ``proc/cpuinfo`` of that core, which qemu's
``-L`` prefix serves in place of the host's.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hwcomp.errors import ToolchainError
from hwcomp.lower.library.runtime_libs import cache_dir

logger = logging.getLogger(__name__)

# The packages onnxruntime needs in the guest; numpy's and onnxruntime's own dependencies
# (protobuf, sympy, ...) are not imported by an inference session.
WHEELS = ("onnxruntime", "numpy")
_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64",
              "manylinux_2_17_aarch64")
# Debian packages besides the interpreter's (whose dependencies are added): the C++ runtime
# onnxruntime links.
_EXTRA_PACKAGES = ("libstdc++6", "libgcc-s1")
APT_TIMEOUT_S = 600

# MIDR part numbers (Arm's technical reference manuals) and /proc/cpuinfo feature names of the
# cores qemu models, for the cpuinfo each CPU's view shows (_V82: Armv8.2 cores, with fp16
# arithmetic and the dot product).
_V82 = "fp asimd evtstrm crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
_CORES = {
    "cortex-a53": ("0xd03", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a55": ("0xd05", _V82),
    "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": ("0xd0b", _V82),
    "neoverse-n1": ("0xd0c", _V82),
}


@dataclass(frozen=True)
class GuestPython:
    """A Python to run under the emulator: ``-L root`` and ``env`` (qemu ``-E``) for ``python``."""

    root: Path
    python: Path
    env: dict[str, str]


def aarch64_python(cpu: str) -> GuestPython:
    """Return the arm64 Python root for the emulated ``cpu`` (qemu's ``-cpu`` name)."""
    versions = {name: importlib.metadata.version(name) for name in WHEELS}
    base = cache_dir() / "guest-python" / "aarch64"
    wheels = "-".join(f"{name}{version}" for name, version in versions.items())
    # A root assembled before is used as it is: apt is asked only to assemble one.
    done = sorted(base.glob(f"python3.*-{wheels}/.complete"))
    if done:
        root = done[-1].parent
        minor = int(root.name.split("-")[0].removeprefix("python3."))
    else:
        minor = _debian_python_minor()
        root = base / f"python3.{minor}-{wheels}"
        _assemble(root, minor, versions)
    view = base / f"{root.name}-{cpu}"
    if not (view / "proc" / "cpuinfo").is_file():
        _make_view(root, view, cpu)
    python = view / "usr" / "bin" / f"python3.{minor}"
    env = {"PYTHONHOME": "/usr", "PYTHONPATH": str(view / "site"), "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}
    return GuestPython(root=view, python=python, env=env)


def _debian_python_minor() -> int:
    """Return the minor version of Debian's arm64 python3 (``python3.11-minimal`` on bookworm)."""
    _require_arm64_packages()
    text = _apt(["apt-cache", "depends", "python3-minimal:arm64"], "look up Debian's arm64 python3")
    match = re.search(r"python3\.(\d+)-minimal:arm64", text)
    if match is None:
        raise ToolchainError("apt-cache does not know python3-minimal:arm64; run "
                             "`sudo dpkg --add-architecture arm64 && sudo apt-get update`")
    return int(match.group(1))


def _require_arm64_packages() -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ToolchainError("counting onnxruntime's aarch64 instructions needs Debian's arm64 "
                             "python3 (apt-get and dpkg-deb); this machine has no apt")
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                             text=True, check=False).stdout.split()
    if "arm64" not in foreign:
        raise ToolchainError("counting onnxruntime's aarch64 instructions needs Debian's arm64 "
                             "packages: run `sudo dpkg --add-architecture arm64 && sudo apt-get "
                             "update` (the README's setup command does)")


def _apt(command: list[str], purpose: str, cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd,
                                timeout=APT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{command[0]} did not finish within {APT_TIMEOUT_S} s "
                             f"(trying to {purpose})") from None
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolchainError(f"{' '.join(command[:2])} failed to {purpose}: {tail}")
    return result.stdout


def _packages(minor: int) -> list[str]:
    """Return the interpreter's arm64 packages and their direct dependencies."""
    python = [f"python3.{minor}-minimal", f"libpython3.{minor}-minimal", f"libpython3.{minor}-stdlib"]
    wanted = [f"{name}:arm64" for name in (*python, *_EXTRA_PACKAGES)]
    text = _apt(["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
                 "--no-breaks", "--no-replaces", "--no-enhances", *wanted],
                "list the arm64 python3's dependencies")
    # "Depends: libc6:arm64"; virtual packages are <in brackets>, satisfied by others here.
    found = re.findall(r"Depends: ([a-z0-9][a-z0-9.+-]*:arm64)$", text, flags=re.MULTILINE)
    return sorted(set(wanted) | set(found))


def _assemble(root: Path, minor: int, versions: dict[str, str]) -> None:
    logger.warning("assembling an arm64 Python with onnxruntime %s for qemu-aarch64 in %s (once: "
                   "~50 MB of Debian packages and PyPI wheels, ~170 MB unpacked)",
                   versions["onnxruntime"], root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hwcomp-guest-", dir=root.parent) as scratch:
        work = Path(scratch)
        debs, partial = work / "debs", work / "root"
        debs.mkdir()
        _apt(["apt-get", "download", "-q", *_packages(minor)],
             "download Debian's arm64 python3", cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            _apt(["dpkg-deb", "-x", str(deb), str(partial)], f"unpack {deb.name}")
        wheels = work / "wheels"
        platforms = [arg for p in _PLATFORMS for arg in ("--platform", p)]
        _apt([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
              "--only-binary=:all:", "--implementation", "cp", "--python-version", f"3.{minor}",
              *platforms, "--dest", str(wheels),
              *(f"{name}=={version}" for name, version in versions.items())],
             "download the aarch64 onnxruntime and numpy wheels")
        for wheel in wheels.glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(partial / "site")
        for library in (partial / "site").rglob("*.so*"):
            library.chmod(0o755)
        (partial / ".complete").write_text(" ".join(f"{k}=={v}" for k, v in versions.items()))
        if root.exists():
            shutil.rmtree(root)
        partial.rename(root)


def _make_view(root: Path, view: Path, cpu: str) -> None:
    part, features = _CORES.get(cpu, _CORES["cortex-a72"])
    partial = view.with_name(view.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "proc").mkdir(parents=True)
    for entry in root.iterdir():
        if entry.name not in ("proc", ".complete"):
            (partial / entry.name).symlink_to(entry)
    lines = []
    for index in range(os.cpu_count() or 1):  # as many as /sys says the host has
        lines += [f"processor\t: {index}", "BogoMIPS\t: 108.00", f"Features\t: {features}",
                  "CPU implementer\t: 0x41", "CPU architecture: 8", "CPU variant\t: 0x0",
                  f"CPU part\t: {part}", "CPU revision\t: 0", ""]
    (partial / "proc" / "cpuinfo").write_text("\n".join(lines))
    if view.exists():
        shutil.rmtree(view)
    partial.rename(view)
