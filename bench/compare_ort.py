"""The benchmark suite: hwcomp untuned and tuned against onnxruntime, same machine, same run.

For each model: build a host bundle with hwcomp's default schedules only (no tuning
database), optionally tune it with MetaSchedule at a fixed trial budget into a fresh database
and build again with it, time each bundle with its own C++ runner, and time onnxruntime at
1 and 2 intra-op threads on the same inputs. The four alternate in rounds (untuned, tuned,
onnxruntime 1 thread, 2 threads, then again): the load of this shared machine moves within
seconds, and each ratio is the median over rounds of that round's ratio of medians. Prints a
Markdown table: median latencies, ratios (hwcomp / onnxruntime; below 1 is faster), achieved
GFLOP/s against this CPU's fp32 FMA peak (nominal, from the target profile, and measured by
bench/peak_fma.c), tuning wall time, and the geometric mean of the ratios against
onnxruntime at 2 threads.

    .venv/bin/python bench/compare_ort.py [--repeat 50] [--tune-trials 64] [--models a,b]
    .venv/bin/python bench/compare_ort.py --suite public [--models resnet18,...]

``--suite public`` times the 16 architectures of ``bench/public_suite.py`` instead of the
original four-model suite.
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
from hwcomp.threads import thread_env  # noqa: E402
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


def runner(bundle: Path) -> bench.Timer:
    """A timer of ``bundle``'s runner (5 warm-up runs in each round, all threads)."""
    return lambda n: bench.runner_samples(bundle, 5, n, 1, 0)


def onnxruntime(path: Path, feeds: dict, threads: int) -> bench.Timer:
    """A timer of onnxruntime on ``threads`` intra-op threads (5 warm-up runs each round)."""
    session = bench.OnnxruntimeTimer(path, feeds, threads)
    return lambda n: session.samples(n, warmup=5)


def paired(ours: list[list[float]], theirs: list[list[float]]) -> float:
    """The median over rounds of the ratio of the rounds' medians."""
    return bench.paired_ratio(list(zip(bench.round_medians(ours), bench.round_medians(theirs),
                                       strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--tune-trials", type=int, default=0,
                        help="MetaSchedule trials per model (0: untuned only)")
    parser.add_argument("--suite", choices=("original", "public"), default="original")
    parser.add_argument("--models", default=None,
                        help="comma-separated names (default: the whole suite; the original "
                             "suite's default leaves out resnet50)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds the --repeat measurements alternate in")
    args = parser.parse_args()
    suite = MODELS
    if args.suite == "public":
        suite = {name: (label, lambda name=name: public_suite.build(name))
                 for name, (label, _) in public_suite.SUITE.items()}
    names = (args.models.split(",") if args.models else list(suite) if args.suite == "public"
             else ["resnet_like", "mobilenet_like", "transformer_block"])
    target = api.load_target("host")
    nominal = target.peak_macs_per_s("fp32") * 2 / 1e9
    # Measured before and after the models (the best of both): another tenant's load lowers
    # one measurement (193 GFLOP/s in one run, 255-266 alone).
    peaks = [measured_peak(target.vector_bits, target.cores)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for key in names:
            label, make = suite[key]
            proto = make()
            proto.ir_version = min(proto.ir_version, 10)
            path = Path(scratch) / f"{key}.onnx"
            onnx.save(proto, path)
            flops = graph_cost(model_io.load_model(path)).total_flops
            untuned = api.build(path, "host", Path(scratch) / "untuned", use_tuning_db=False)
            feeds = bench.verify_inputs(untuned.bundle)
            timers = {"untuned": runner(untuned.bundle)}
            tune_s = None
            if args.tune_trials:
                db = Path(scratch) / f"db-{key}"
                started = time.perf_counter()
                tuning.tune(path, "host", args.tune_trials, database=db)
                tune_s = time.perf_counter() - started
                tuned = api.build(path, "host", Path(scratch) / "tuned", tuning_db=db)
                timers["tuned"] = runner(tuned.bundle)
            for threads in (1, 2):
                timers[f"ort{threads}"] = onnxruntime(path, feeds, threads)
            samples = bench.alternate(timers, args.repeat, args.rounds)
            medians = {name: float(np.median(sum(rounds, []))) for name, rounds in samples.items()}
            rows.append((label, flops, medians["untuned"], medians.get("tuned"), medians["ort1"],
                         medians["ort2"], tune_s, paired(samples["untuned"], samples["ort2"]),
                         paired(samples["tuned"], samples["ort2"]) if "tuned" in samples else None))
            print(rows[-1], file=sys.stderr)
    peaks.append(measured_peak(target.vector_bits, target.cores))
    peak = max((p for p in peaks if p is not None), default=nominal)
    print(f"Machine: {platform.processor() or platform.machine()}, target `host` "
          f"({target.tvm_target['mcpu']}, {target.cores} cores; fp32 FMA peak measured by "
          f"bench/peak_fma.c {peak:.0f} GFLOP/s, nominal {nominal:.0f}), "
          f"hwcomp on {thread_env().get('TVM_NUM_THREADS', 'OMP_NUM_THREADS')} threads, "
          f"onnxruntime {ort.__version__}. Median of {args.repeat} runs each, alternating in "
          f"{args.rounds} rounds; ratios: median over rounds; tuned = "
          f"{args.tune_trials} MetaSchedule trials per model.\n")
    print("| model | GFLOP | hwcomp untuned (ms) | hwcomp tuned (ms) | ORT 1t (ms) | ORT 2t (ms) "
          "| untuned / ORT-2t | tuned / ORT-2t | best GFLOP/s (% peak) | tuning (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    untuned_ratios, tuned_ratios = [], []
    for label, flops, hw, tuned_ms, ort1, ort2, tune_s, untuned_ratio, tuned_ratio in rows:
        best = min(x for x in (hw, tuned_ms) if x is not None)
        gflops = flops / (best / 1e3) / 1e9
        untuned_ratios.append(untuned_ratio)
        if tuned_ratio is not None:
            tuned_ratios.append(tuned_ratio)
        print(f"| {label} | {flops / 1e9:.3f} | {hw:.3f} | "
              f"{'-' if tuned_ms is None else f'{tuned_ms:.3f}'} | {ort1:.3f} | {ort2:.3f} | "
              f"{untuned_ratio:.2f}x | {'-' if tuned_ratio is None else f'{tuned_ratio:.2f}x'} | "
              f"{gflops:.1f} ({100 * gflops / peak:.0f} %) | "
              f"{'-' if tune_s is None else f'{tune_s:.0f}'} |")
    geo = math.exp(sum(math.log(r) for r in untuned_ratios) / len(untuned_ratios))
    line = f"\nGeometric mean, hwcomp / onnxruntime (2 threads): untuned {geo:.2f}x"
    if tuned_ratios:
        geo_t = math.exp(sum(math.log(r) for r in tuned_ratios) / len(tuned_ratios))
        line += f", tuned {geo_t:.2f}x"
    print(line)


if __name__ == "__main__":
    main()
