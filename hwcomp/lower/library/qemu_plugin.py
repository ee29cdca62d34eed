"""The qemu TCG plugin that counts executed instructions (``kernels/qemu/insn_count.c``).

Built with this machine's gcc on first use and cached by its source's hash: ``hwcomp bench
--count-instructions`` loads it into qemu-user, the Cortex-M build into qemu-system-arm to
count each kernel call of the verification run.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from hwcomp.errors import ToolchainError
from hwcomp.lower.library.runner import require_tool
from hwcomp.lower.library.runtime_libs import cache_dir
from hwcomp.resources import kernels_path

PLUGIN_SOURCE = ("qemu", "insn_count.c")


def plugin_path() -> Path:
    """Return the counting plugin, compiled with the host's gcc on first use."""
    compiler = require_tool("gcc", "gcc", "to build the instruction-counting qemu plugin")
    source = kernels_path(*PLUGIN_SOURCE)
    key = hashlib.sha256(source.read_bytes() + compiler.encode()).hexdigest()[:16]
    plugin = cache_dir() / "qemu-plugin" / f"insn_count-{key}.so"
    if plugin.is_file():
        return plugin
    plugin.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hwcomp-plugin-", dir=plugin.parent) as scratch:
        partial = Path(scratch) / plugin.name
        result = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-fvisibility=hidden",
                                 str(source), "-o", str(partial)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ToolchainError(f"gcc could not build the qemu counting plugin: {tail}")
        partial.replace(plugin)
    return plugin
