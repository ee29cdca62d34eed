"""int8 vs fp32, hwcomp vs onnxruntime: same machine, same run, same calibration data.

For each model: build a host bundle in fp32 and one with ``--precision int8`` (onnxruntime's
min-max calibrator on 32 seeded samples), time both with the bundles' own C++ runner, and time
onnxruntime on the fp32 model and on the very QDQ model the int8 bundle was compiled from
(``model.optimized.onnx``, which onnxruntime turns into QLinearConv/QLinearMatMul), all at
2 intra-op threads. Prints a Markdown table of medians and ratios.

    .venv/bin/python bench/int8_speed.py [--repeat 50] [--target host]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hwcomp import api, bench  # noqa: E402
from hwcomp import model as model_io  # noqa: E402
from hwcomp.compress import precision as quantize  # noqa: E402
from tests import model_zoo  # noqa: E402

MODELS = {
    "resnet_like (1x3x64x64, w32)": lambda: model_zoo.resnet_like(size=64, width=32),
    "resnet_like (1x3x112x112, w64)": lambda: model_zoo.resnet_like(size=112, width=64),
    "mobilenet_like (1x3x96x96)": lambda: model_zoo.mobilenet_like(size=96),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--target", default="host")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, make in MODELS.items():
            path = Path(scratch) / f"{label.split()[0]}_{len(rows)}.onnx"
            proto = make()
            proto.ir_version = 10
            onnx.save(proto, path)
            specs = model_io.graph_inputs(model_io.load_model(path))
            calib = Path(scratch) / "calib.npz"
            samples = [model_io.seeded_inputs(specs, seed) for seed in range(32)]
            np.savez(calib, **{s.name: np.concatenate([x[s.name] for x in samples]) for s in specs})
            fp32 = api.build(path, args.target, Path(scratch) / "fp32", calib=calib)
            int8 = api.build(path, args.target, Path(scratch) / "int8", calib=calib,
                             precision_options=quantize.PrecisionOptions(precision="int8",
                                                                         min_sqnr_db=0))
            feeds = bench.verify_inputs(int8.bundle)
            t_fp32 = bench.bench(fp32.bundle, warmup=5, repeat=args.repeat).hwcomp.median_ms
            t_int8 = bench.bench(int8.bundle, warmup=5, repeat=args.repeat).hwcomp.median_ms
            qdq = int8.bundle / "model.optimized.onnx"
            o_fp32 = bench.time_onnxruntime(path, feeds, 5, args.repeat, 1, 2).median_ms
            o_int8 = bench.time_onnxruntime(qdq, feeds, 5, args.repeat, 1, 2).median_ms
            plan = int8.manifest["precision"]
            rows.append((label, t_fp32, t_int8, o_fp32, o_int8, plan["counts"]["int8"],
                         len(plan["layers"]), plan["sqnr_db"]))
            print(rows[-1], file=sys.stderr)
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, target `{args.target}`, "
        f"onnxruntime {ort.__version__} at 2 threads. Median of {args.repeat} runs each. "
        "hwcomp fp32 is the untuned default lowering.",
        "",
        "| model | int8 layers | hwcomp fp32 (ms) | hwcomp int8 (ms) | ORT fp32 (ms) "
        "| ORT QDQ (ms) | hwcomp int8 / fp32 | hwcomp int8 / ORT QDQ | int8 SQNR (dB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, hf, hi, of, oi, n8, n, sqnr in rows:
        lines.append(f"| {label} | {n8}/{n} | {hf:.3f} | {hi:.3f} | {of:.3f} | {oi:.3f} "
                     f"| {hi / hf:.2f}x | {hi / oi:.2f}x | {sqnr:.1f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
