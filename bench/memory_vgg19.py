"""Peak memory and time of compress and analyze on VGG-19 (575 MB of weights).

The onnx package's graph-only VGG-19 with seeded weights (``tests/model_zoo.light_model``),
each command in its own process under ``/usr/bin/time -v`` (peak resident set size, wall
time). Resident size counts the weight pages onnxruntime maps from a file, so it is an
upper bound of what the process needed.

    .venv/bin/python bench/memory_vgg19.py [--prune 0.3]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import model_zoo  # noqa: E402


def measured(command: list[str]) -> tuple[float, float, str]:
    """Run ``command`` under /usr/bin/time -v: (peak RSS in GB, wall seconds, last stdout line)."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True,
                          check=True)
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr)
    parts = [float(p) for p in clock.group(1).split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return peak / 1e6 * 1.024, seconds, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prune", default="0.3")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "vgg19.onnx"
        onnx.save(model_zoo.light_model("vgg19"), model)
        hwcomp = [sys.executable, "-m", "hwcomp"]
        rows = [
            (f"compress --prune {args.prune}",
             measured([*hwcomp, "compress", str(model), "--target", "host", "--prune",
                       args.prune, "-o", str(Path(folder) / "pruned.onnx")])),
            ("analyze", measured([*hwcomp, "analyze", str(model), "--target", "host"])),
        ]
    print(f"VGG-19: {model_zoo.light_model.__name__}('vgg19'), "
          f"{sum(t.ByteSize() for t in model_zoo.light_model('vgg19').graph.initializer) / 1e6:.0f}"
          " MB of weights")
    print("| command | peak RSS (GB) | wall (s) | last line |")
    print("| --- | ---: | ---: | --- |")
    for name, (peak, seconds, last) in rows:
        print(f"| `hwcomp {name}` | {peak:.2f} | {seconds:.0f} | {last[:90]} |")


if __name__ == "__main__":
    main()
