"""The benchmark suite: hwcomp untuned and tuned against onnxruntime, same machine, same run.

For each model: build a host bundle with hwcomp's default schedules only (no tuning
database), optionally tune it with MetaSchedule at a fixed trial budget into a fresh database
and build again with it, time each bundle with its own C++ runner, and time onnxruntime at
1 and 2 intra-op threads on the same inputs. Prints a Markdown table: median latencies,
ratios (hwcomp / onnxruntime; below 1 is faster), achieved GFLOP/s against this CPU's peak,
tuning wall time, and the geometric mean of the ratios against onnxruntime at 2 threads.

    .venv/bin/python bench/compare_ort.py [--repeat 50] [--tune-trials 64] [--models a,b]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hwcomp import api, bench, tuning  # noqa: E402
from hwcomp import model as model_io  # noqa: E402
from hwcomp.analysis.cost import graph_cost  # noqa: E402
from hwcomp.threads import thread_env  # noqa: E402
from tests import model_zoo  # noqa: E402

MODELS = {
    "resnet_like": ("ResNet-style, 1x3x64x64, width 32",
                    lambda: model_zoo.resnet_like(size=64, width=32)),
    "mobilenet_like": ("MobileNetV2-style, 1x3x96x96", lambda: model_zoo.mobilenet_like(size=96)),
    "transformer_block": ("transformer block, 16 tokens x 64", model_zoo.transformer_block),
    "resnet50": ("ResNet-50 (onnx light model, seeded), 1x3x224x224",
                 lambda: model_zoo.light_model("resnet50")),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--tune-trials", type=int, default=0,
                        help="MetaSchedule trials per model (0: untuned only)")
    parser.add_argument("--models", default="resnet_like,mobilenet_like,transformer_block")
    args = parser.parse_args()
    target = api.load_target("host")
    peak = target.peak_macs_per_s("fp32") * 2 / 1e9
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for key in args.models.split(","):
            label, make = MODELS[key]
            proto = make()
            proto.ir_version = min(proto.ir_version, 10)
            path = Path(scratch) / f"{key}.onnx"
            onnx.save(proto, path)
            flops = graph_cost(model_io.load_model(path)).total_flops
            untuned = api.build(path, "host", Path(scratch) / "untuned", use_tuning_db=False)
            feeds = bench.verify_inputs(untuned.bundle)
            hw = bench.bench(untuned.bundle, warmup=5, repeat=args.repeat).hwcomp.median_ms
            tuned_ms = tune_s = None
            if args.tune_trials:
                db = Path(scratch) / f"db-{key}"
                started = time.perf_counter()
                tuning.tune(path, "host", args.tune_trials, database=db)
                tune_s = time.perf_counter() - started
                tuned = api.build(path, "host", Path(scratch) / "tuned", tuning_db=db)
                tuned_ms = bench.bench(tuned.bundle, warmup=5, repeat=args.repeat).hwcomp.median_ms
            ort1 = bench.time_onnxruntime(path, feeds, 5, args.repeat, 1, 1).median_ms
            ort2 = bench.time_onnxruntime(path, feeds, 5, args.repeat, 1, 2).median_ms
            rows.append((label, flops, hw, tuned_ms, ort1, ort2, tune_s))
            print(rows[-1], file=sys.stderr)
    print(f"Machine: {platform.processor() or platform.machine()}, target `host` "
          f"({target.tvm_target['mcpu']}, fp32 peak {peak:.0f} GFLOP/s on {target.cores} cores), "
          f"hwcomp on {thread_env().get('TVM_NUM_THREADS', 'OMP_NUM_THREADS')} threads, "
          f"onnxruntime {ort.__version__}. Median of {args.repeat} runs each; tuned = "
          f"{args.tune_trials} MetaSchedule trials per model.\n")
    print("| model | GFLOP | hwcomp untuned (ms) | hwcomp tuned (ms) | ORT 1t (ms) | ORT 2t (ms) "
          "| untuned / ORT-2t | tuned / ORT-2t | best GFLOP/s (% peak) | tuning (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    untuned_ratios, tuned_ratios = [], []
    for label, flops, hw, tuned_ms, ort1, ort2, tune_s in rows:
        best = min(x for x in (hw, tuned_ms) if x is not None)
        gflops = flops / (best / 1e3) / 1e9
        untuned_ratios.append(hw / ort2)
        if tuned_ms is not None:
            tuned_ratios.append(tuned_ms / ort2)
        print(f"| {label} | {flops / 1e9:.3f} | {hw:.3f} | "
              f"{'-' if tuned_ms is None else f'{tuned_ms:.3f}'} | {ort1:.3f} | {ort2:.3f} | "
              f"{hw / ort2:.2f}x | {'-' if tuned_ms is None else f'{tuned_ms / ort2:.2f}x'} | "
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
