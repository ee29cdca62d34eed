"""Instructions per inference of hwcomp bundles against onnxruntime, counted under qemu.

    .venv/bin/python bench/count_instructions.py [--targets arm-a72,arm-a76] [--models a,b]
    .venv/bin/python bench/count_instructions.py --targets arm-a76 --precision int8
    .venv/bin/python bench/count_instructions.py --targets host --time [--models a,b]

Each model of ``bench/public_suite.py`` is built untuned (``hwcomp build --no-tuning-db``,
which verifies it: Arm bundles under qemu-aarch64) and counted with ``hwcomp bench
--count-instructions --compare-ort`` (each in a process of its own): the bundle's runner and
onnxruntime (its aarch64 build for Arm targets) run the same model and inputs under the same
qemu CPU model, one thread, and only their marked runs count. Prints a Markdown table:
instructions per inference of each, their ratio, MACs per instruction (the model's MACs from
hwcomp's analysis), the kernels the build left on TVM's generic schedule (slow; named in the
bundle's manifest), and the geometric mean of the ratios.

Counts are instructions executed under emulation, not times. ``--time`` (host targets only)
also times both natively (``hwcomp bench --compare-ort --threads 1``, alternating rounds) and
prints the time ratio beside the instruction ratio: how far a count ratio can be read as a
time ratio on this x86 CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import public_suite  # noqa: E402
from hwcomp import model as model_io  # noqa: E402
from hwcomp.analysis.cost import graph_cost  # noqa: E402


def hwcomp(*args: str) -> subprocess.CompletedProcess:
    """Run the hwcomp CLI in a process of its own."""
    return subprocess.run([sys.executable, "-m", "hwcomp", *args], capture_output=True,
                          text=True, cwd=REPO, check=False)


def last_line(proc: subprocess.CompletedProcess) -> str:
    return ((proc.stderr or proc.stdout).strip().splitlines() or ["?"])[-1][:120]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="arm-a72")
    parser.add_argument("--models", default=",".join(public_suite.SUITE))
    parser.add_argument("--time", action="store_true",
                        help="host targets: also time both natively, 1 thread")
    parser.add_argument("--precision", default="fp32",
                        help="int8: build QDQ int8 bundles (calibrated on 16 seeded random "
                        "samples, no SQNR floor); onnxruntime runs the same QDQ model")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()
    timed = " time ratio (1 thread) |" if args.time else ""
    print(f"| model | target | hwcomp instructions | onnxruntime instructions | ratio |"
          f" MACs / instruction (hwcomp, ort) | generic-schedule kernels |{timed} "
          f"build + count (s) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if args.time else "")
          + " ---: |")
    rows, ratios = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            path = Path(scratch) / f"{name}.onnx"
            onnx.save(public_suite.build(name), path)
            macs = graph_cost(model_io.load_model(path)).total_macs
            for target in args.targets.split(","):
                started = time.perf_counter()
                out = Path(scratch) / target
                # A speed measurement: every layer at the asked precision, whatever the
                # SQNR on random calibration samples (--min-sqnr 0).
                precision = ([] if args.precision == "fp32" else
                             ["--precision", args.precision, "--calib-random", "16",
                              "--min-sqnr", "0"])
                built = hwcomp("build", str(path), "-t", target, "-o", str(out), "--force",
                               "--no-tuning-db", *precision)
                bundle = out / f"{name}-{target}"
                if built.returncode != 0:
                    print(f"| {name} | {target} | build failed: {last_line(built)} | | | | | |",
                          flush=True)
                    continue
                result = Path(scratch) / f"{name}-{target}.json"
                counted = hwcomp("bench", str(bundle), "--count-instructions", "--compare-ort",
                                 "--json", str(result))
                if counted.returncode != 0:
                    print(f"| {name} | {target} | count failed: {last_line(counted)} | | | | | |",
                          flush=True)
                    continue
                data = json.loads(result.read_text())
                manifest = json.loads((bundle / "manifest.json").read_text())
                generic = len(manifest.get("unscheduled_kernels", []))
                ours = data["hwcomp"]["per_inference"]
                theirs = data["onnxruntime"]["per_inference"]
                row = {"model": name, "target": target, "macs": macs, "hwcomp": ours,
                       "onnxruntime": theirs, "ratio": ours / theirs, "generic": generic}
                time_cell = ""
                if args.time:
                    timing = hwcomp("bench", str(bundle), "--compare-ort", "--threads", "1",
                                    "--repeat", "30")
                    match = re.search(r"rounds\): ([0-9.]+)x", timing.stdout)
                    row["time_ratio"] = float(match.group(1)) if match else None
                    time_cell = f" {row['time_ratio']:.2f}x |" if match else " ? |"
                seconds = time.perf_counter() - started
                ratios.setdefault(target, []).append(ours / theirs)
                rows.append(row)
                print(f"| {name} | {target} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |"
                      f" {macs / ours:.2f}, {macs / theirs:.2f} | {generic} |{time_cell} "
                      f"{seconds:.0f} |",
                      flush=True)
    for target, values in ratios.items():
        geomean = math.exp(sum(map(math.log, values)) / len(values))
        print(f"\n{target}: geometric mean of hwcomp / onnxruntime instructions "
              f"{geomean:.2f}x over {len(values)} models; above 1.1x: "
              f"{sum(v > 1.1 for v in values)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
