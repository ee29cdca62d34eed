"""The benchmark suite: hwcomp untuned and tuned against onnxruntime, same machine, same run.

For each model: build a host bundle with hwcomp's default schedules only (no tuning
database), optionally tune it with MetaSchedule at a fixed trial budget into a fresh database
and build again with it, time each bundle with its own C++ runner (a process of its own) at
1 thread and at the profile's cores, and time onnxruntime at 1 thread and the profile's
cores on the same inputs. They alternate in rounds (hwcomp 1t, Nt, tuned, onnxruntime 1t,
Nt, then again): the load of this shared machine moves within seconds, and each ratio is the
median over rounds of that round's ratio of medians. Prints a Markdown table: median
latencies, ratios at each thread count (hwcomp / onnxruntime; below 1 is faster), p99
latencies, achieved GFLOP/s against this CPU's fp32 FMA peak (nominal, from the target
profile, and measured by bench/peak_fma.c), tuning wall time, and geometric means.
``--load`` keeps one core busy with another process for the whole run (an edge device's
capture or networking beside the model).

    .venv/bin/python bench/compare_ort.py [--repeat 50] [--tune-trials 64] [--models a,b]
    .venv/bin/python bench/compare_ort.py --suite public [--models resnet18,...] [--load]

``--suite public`` times the 16 architectures of ``bench/public_suite.py`` instead of the
original four-model suite; ``--onnx a.onnx b.onnx`` times your own models (named by their
file stems), e.g. architectures outside both suites.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import public_suite  # noqa: E402
from hwcomp import api, bench  # noqa: E402
from hwcomp import model as model_io  # noqa: E402
from hwcomp.analysis.cost import graph_cost  # noqa: E402
from hwcomp.tune import search as tuning  # noqa: E402
from tests import model_zoo  # noqa: E402

MODELS: dict[str, tuple[str, Callable[[], onnx.ModelProto]]] = {
    "resnet_like": ("ResNet-style, 1x3x64x64, width 32",
                    lambda: model_zoo.resnet_like(size=64, width=32)),
    "mobilenet_like": ("MobileNetV2-style, 1x3x96x96", lambda: model_zoo.mobilenet_like(size=96)),
    "transformer_block": ("transformer block, 16 tokens x 64", model_zoo.transformer_block),
    "resnet50": ("ResNet-50 (onnx light model, seeded), 1x3x224x224",
                 lambda: model_zoo.light_model("resnet50")),
}


def measured_peak(vector_bits: int, threads: int) -> float | None:
    """fp32 GFLOP/s of register-only FMA chains on ``threads`` threads (bench/peak_fma.c)."""
    with tempfile.TemporaryDirectory() as scratch:
        binary = Path(scratch) / "peak"
        build = subprocess.run(["cc", "-O2", "-march=native", "-fopenmp",
                                f"-DVBYTES={vector_bits // 8}", str(REPO / "bench" / "peak_fma.c"),
                                "-o", str(binary)], capture_output=True, text=True, check=False)
        if build.returncode != 0:
            print(f"peak_fma.c did not build: {build.stderr[-300:]}", file=sys.stderr)
            return None
        run = subprocess.run([str(binary)], capture_output=True, text=True, check=True,
                             env={"OMP_NUM_THREADS": str(threads)})
        return float(run.stdout.strip())


def runner(bundle: Path, threads: int = 0) -> bench.Timer:
    """A timer of ``bundle``'s runner (5 warm-up runs in each round; 0 threads: all cores)."""
    return lambda n: bench.runner_samples(bundle, 5, n, 1, threads)


def onnxruntime(path: Path, feeds: dict, threads: int) -> bench.Timer:
    """A timer of onnxruntime on ``threads`` intra-op threads (5 warm-up runs each round)."""
    session = bench.OnnxruntimeTimer(path, feeds, threads)
    return lambda n: session.samples(n, warmup=5)


def paired(ours: list[list[float]], theirs: list[list[float]]) -> float:
    """The median over rounds of the ratio of the rounds' medians."""
    return bench.paired_ratio(list(zip(bench.round_medians(ours), bench.round_medians(theirs),
                                       strict=True)))


def p99(samples: list[list[float]]) -> float:
    """The 99th percentile of all rounds' samples."""
    return float(np.percentile(sum(samples, []), 99))


def busy_core() -> subprocess.Popen:
    """Start a process that keeps one core busy (another tenant's work) until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def geomean(values: list[float]) -> float:
    """Geometric mean."""
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--tune-trials", type=int, default=0,
                        help="MetaSchedule trials per model (0: untuned only)")
    parser.add_argument("--suite", choices=("original", "public"), default="original")
    parser.add_argument("--onnx", nargs="+", type=Path, default=None, metavar="MODEL",
                        help="time these ONNX files instead of a suite")
    parser.add_argument("--models", default=None,
                        help="comma-separated names (default: the whole suite; the original "
                             "suite's default leaves out resnet50)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds the --repeat measurements alternate in")
    parser.add_argument("--load", action="store_true",
                        help="keep one core busy with another process for the whole run")
    args = parser.parse_args()
    suite = MODELS
    if args.suite == "public":
        suite = {name: (label, lambda name=name: public_suite.build(name))
                 for name, (label, _) in public_suite.SUITE.items()}
    if args.onnx:
        suite = {path.stem: (path.stem, lambda path=path: onnx.load(path)) for path in args.onnx}
    names = (args.models.split(",") if args.models
             else list(suite) if args.suite == "public" or args.onnx
             else ["resnet_like", "mobilenet_like", "transformer_block"])
    target = api.load_target("host")
    cores = target.cores
    nominal = target.peak_macs_per_s("fp32") * 2 / 1e9
    # Measured before and after the models (the best of both): another tenant's load lowers
    # one measurement (193 GFLOP/s in one run, 255-266 alone).
    peaks = [measured_peak(target.vector_bits, cores)]
    load = busy_core() if args.load else None
    rows = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for key in names:
                rows.append(measure(key, suite[key], Path(scratch), args, cores))
                print(rows[-1], file=sys.stderr)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    peaks.append(measured_peak(target.vector_bits, cores))
    peak = max((p for p in peaks if p is not None), default=nominal)
    print(f"Machine: {platform.processor() or platform.machine()}, target `host` "
          f"({target.tvm_target['mcpu']}, {cores} cores; fp32 FMA peak measured by "
          f"bench/peak_fma.c {peak:.0f} GFLOP/s, nominal {nominal:.0f}), onnxruntime "
          f"{ort.__version__}; each runtime in its own process. Median of {args.repeat} runs "
          f"each, the runtimes alternating in {args.rounds} rounds; ratios (hwcomp / "
          f"onnxruntime, below 1 is faster): median over rounds of the rounds' ratios; p99 over "
          f"all runs; tuned = {args.tune_trials} MetaSchedule trials per model"
          + ("; **one core busy with another process for the whole run**" if args.load else "")
          + ".\n")
    tuned = any(row["tuned"] is not None for row in rows)
    print(f"| model | GFLOP | hwcomp 1t (ms) | ORT 1t (ms) | 1t ratio | hwcomp {cores}t (ms) "
          f"| ORT {cores}t (ms) | {cores}t ratio | p99 hwcomp / ORT ({cores}t, ms) | p99 ratio "
          + (f"| tuned {cores}t (ms) | tuned ratio | tuning (s) " if tuned else "")
          + "| best GFLOP/s (% peak) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
          + (" ---: | ---: | ---: |" if tuned else "") + " ---: |")
    for row in rows:
        best = min(x for x in (row["hw2"], row["hw1"], row["tuned"]) if x is not None)
        gflops = row["flops"] / (best / 1e3) / 1e9
        tuned_cells = ""
        if tuned:
            tuned_cells = (f" {row['tuned']:.3f} | {row['tuned_ratio']:.2f}x | "
                           f"{row['tune_s']:.0f} |" if row["tuned"] is not None else " - | - | - |")
        print(f"| {row['label']} | {row['flops'] / 1e9:.3f} | {row['hw1']:.3f} | "
              f"{row['ort1']:.3f} | {row['ratio1']:.2f}x | {row['hw2']:.3f} | {row['ort2']:.3f} | "
              f"{row['ratio2']:.2f}x | {row['p99_hw']:.2f} / {row['p99_ort']:.2f} | "
              f"{row['p99_hw'] / row['p99_ort']:.2f}x |{tuned_cells} "
              f"{gflops:.1f} ({100 * gflops / peak:.0f} %) |")
    line = (f"\nGeometric mean, hwcomp / onnxruntime: 1 thread {geomean([r['ratio1'] for r in rows]):.2f}x, "
            f"{cores} threads {geomean([r['ratio2'] for r in rows]):.2f}x; p99 at {cores} threads "
            f"{geomean([r['p99_hw'] / r['p99_ort'] for r in rows]):.2f}x")
    if tuned:
        line += f"; tuned {geomean([r['tuned_ratio'] for r in rows if r['tuned']]):.2f}x"
    print(line)


def measure(key: str, entry: tuple[str, Callable[[], onnx.ModelProto]], scratch: Path,
            args: argparse.Namespace, cores: int) -> dict:
    """Build ``key`` (and tune it with ``--tune-trials``) and time every runtime, alternating."""
    label, make = entry
    proto = make()
    proto.ir_version = min(proto.ir_version, 10)
    path = scratch / f"{key}.onnx"
    onnx.save(proto, path)
    flops = graph_cost(model_io.load_model(path)).total_flops
    untuned = api.build(path, "host", scratch / "untuned", use_tuning_db=False)
    feeds = bench.verify_inputs(untuned.bundle)
    timers = {"hw1": runner(untuned.bundle, 1), "hw2": runner(untuned.bundle, cores)}
    tune_s = None
    if args.tune_trials:
        db = scratch / f"db-{key}"
        started = time.perf_counter()
        tuning.tune(path, "host", args.tune_trials, database=db)
        tune_s = time.perf_counter() - started
        tuned = api.build(path, "host", scratch / "tuned", tuning_db=db)
        timers["tuned"] = runner(tuned.bundle, cores)
    timers["ort1"] = onnxruntime(path, feeds, 1)
    timers["ort2"] = onnxruntime(path, feeds, cores)
    samples = bench.alternate(timers, args.repeat, args.rounds)
    medians = {name: float(np.median(sum(rounds, []))) for name, rounds in samples.items()}
    return {"label": label, "flops": flops, "hw1": medians["hw1"], "hw2": medians["hw2"],
            "ort1": medians["ort1"], "ort2": medians["ort2"],
            "ratio1": paired(samples["hw1"], samples["ort1"]),
            "ratio2": paired(samples["hw2"], samples["ort2"]),
            "p99_hw": p99(samples["hw2"]), "p99_ort": p99(samples["ort2"]),
            "tuned": medians.get("tuned"), "tune_s": tune_s,
            "tuned_ratio": paired(samples["tuned"], samples["ort2"]) if "tuned" in samples
            else None}


if __name__ == "__main__":
    main()
