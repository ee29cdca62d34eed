"""How long per-layer sensitivity takes on a ResNet-50-sized graph.

Seeded ResNet-50 (the graph shipped in the onnx package), N calibration samples, all six
actions on all 54 Conv/Gemm layers (324 layer-actions), with 1 and 2 worker processes.

    .venv/bin/python bench/sensitivity_time.py [--samples 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hwcomp import api  # noqa: E402
from tests import model_zoo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "resnet50.onnx"
        onnx.save(model_zoo.light_model("resnet50"), path)
        print("| jobs | samples | layers x actions | seconds | ms per layer-action-sample |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for jobs in args.jobs:
            started = time.perf_counter()
            result = api.analyze(path, "arm-a72", calib_random=args.samples, jobs=jobs)
            seconds = time.perf_counter() - started
            sens = result.sensitivity
            runs = len(sens.results)
            print(f"| {jobs} | {sens.samples} | {len(sens.layers)} x {len(sens.actions)} = {runs} "
                  f"| {seconds:.1f} | {1e3 * sens.seconds / (runs * sens.samples):.1f} |", flush=True)


if __name__ == "__main__":
    main()
