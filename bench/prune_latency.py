"""Fewer MACs is not the same as faster: pruning's MAC cut against measured latency.

For each model and ratio: compress with hwcomp (BN fold + channel pruning), then time
the original and the pruned model compiled by hwcomp for `host` (bundle runner) and run
by onnxruntime (1 thread), all in this run.

    .venv/bin/python bench/prune_latency.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hwcomp import api, bench  # noqa: E402
from hwcomp.compress.driver import CompressionOptions  # noqa: E402
from tests import model_zoo  # noqa: E402

MODELS = {
    "resnet_like (1x3x64x64, w32)": lambda: model_zoo.resnet_like(size=64, width=32),
    "mobilenet_like (1x3x96x96)": lambda: model_zoo.mobilenet_like(size=96),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    args = parser.parse_args()
    print("| model | prune | MACs | MAC cut | hwcomp ms | hwcomp speed-up | ORT-1t ms "
          "| ORT speed-up | output SQNR (dB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for label, make in MODELS.items():
            base = root / f"{label.split()[0]}.onnx"
            onnx.save(make(), base)
            variants = [(0.0, base, None)]
            for ratio in args.ratios:
                path = root / f"{base.stem}_p{int(ratio * 100)}.onnx"
                outcome = api.compress(base, path, "host", CompressionOptions(prune=ratio))
                variants.append((ratio, path, outcome))
            reference = None
            for ratio, path, outcome in variants:
                built = api.build(path, "host", root / "out", force=True)
                feeds = bench.verify_inputs(built.bundle)
                hw = bench.bench(built.bundle, warmup=5, repeat=args.repeat).hwcomp.median_ms
                ort1 = bench.time_onnxruntime(path, feeds, 5, args.repeat, 1, 1).median_ms
                macs = outcome.macs_after if outcome else api.cost.graph_cost(
                    api.model_io.load_model(path)).total_macs
                if reference is None:
                    reference = (macs, hw, ort1)
                sqnr = "-" if outcome is None else (
                    "exact" if outcome.sqnr_db is None else f"{outcome.sqnr_db:.1f}")
                print(f"| {label} | {ratio:.0%} | {macs / 1e6:.1f} M | {1 - macs / reference[0]:.0%} "
                      f"| {hw:.3f} | {reference[1] / hw:.2f}x | {ort1:.3f} | {reference[2] / ort1:.2f}x "
                      f"| {sqnr} |", flush=True)


if __name__ == "__main__":
    main()
