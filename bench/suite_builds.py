"""Build every public-suite model for targets and record whether each verifies (not pytest).

    .venv/bin/python bench/suite_builds.py [--targets host,arm-a72] [--models a,b]

Each model of ``bench/public_suite.py`` is built untuned with ``hwcomp build`` (its own
process, as a user runs it) for each target; the build verifies the bundle against
onnxruntime (Arm bundles run under qemu-aarch64). Prints a Markdown table: verification
status and largest error, how many convolutions got each kind of kernel, kernels left on
the generic schedule, and build time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import public_suite  # noqa: E402


def kernel_kinds(float_kernels: list[str]) -> str:
    """Count the manifest's ``float_kernels`` entries by the kernel named after the colon."""
    # The kernel's name ends at its first comma outside parentheses ("Winograd F(2x2, 3x3)
    # NHWC kernels, fused epilogue") and before its details ("grouped NHWC kernel (4 groups)").
    kinds = Counter(re.split(r",(?![^(]*\))", entry.split(": ", 1)[1])[0].split(" (")[0]
                    for entry in float_kernels if ": " in entry)
    return ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="host,arm-a72")
    parser.add_argument("--models", default=",".join(public_suite.SUITE))
    args = parser.parse_args()
    print("| model | target | verification | max abs error | kernels | generic-schedule "
          "fallbacks | build (s) |\n| --- | --- | --- | ---: | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            path = Path(scratch) / f"{name}.onnx"
            onnx.save(public_suite.build(name), path)
            for target in args.targets.split(","):
                out = Path(scratch) / target
                started = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", "hwcomp", "build", str(path), "-t", target,
                     "-o", str(out), "--force", "--no-tuning-db"],
                    capture_output=True, text=True, cwd=REPO, check=False)
                seconds = time.perf_counter() - started
                manifest_path = out / f"{name}-{target}" / "manifest.json"
                if proc.returncode != 0 or not manifest_path.is_file():
                    line = (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
                    print(f"| {name} | {target} | failed: {line} | - | - | - | {seconds:.0f} |",
                          flush=True)
                    continue
                manifest = json.loads(manifest_path.read_text())
                check = manifest["verification"]
                error = max((o.get("max_abs_error", 0.0) for o in check.get("outputs", [])),
                            default=float("nan"))
                print(f"| {name} | {target} | {check['status']} | {error:.2e} | "
                      f"{kernel_kinds(manifest.get('float_kernels', []))} | "
                      f"{len(manifest.get('unscheduled_kernels', []))} | {seconds:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
