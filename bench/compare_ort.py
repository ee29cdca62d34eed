"""hwcomp (untuned) against onnxruntime on the same machine, same inputs, same run.

For each model: build a host bundle with hwcomp, time it with the bundle's own C++
runner, and time onnxruntime at 1 and 2 intra-op threads on the same inputs. Prints a
Markdown table of median latencies and ratios (hwcomp / onnxruntime; below 1 is faster).

    .venv/bin/python bench/compare_ort.py [--repeat 50] [--markdown bench/results_untuned.md]
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
from tests import model_zoo  # noqa: E402

MODELS = {
    "resnet_like (1x3x64x64, w32)": lambda: model_zoo.resnet_like(size=64, width=32),
    "mobilenet_like (1x3x96x96)": lambda: model_zoo.mobilenet_like(size=96),
    "transformer_block (16x64)": lambda: model_zoo.transformer_block(),
}


def time_ort(path: Path, feeds: dict, threads: int, repeat: int) -> float:
    """Median onnxruntime latency (ms), 5 warm-up runs."""
    return bench.time_onnxruntime(path, feeds, 5, repeat, 1, threads).median_ms


def time_bundle(bundle: Path, repeat: int) -> float:
    """Median latency (ms) of the bundle's own runner, 5 warm-up runs."""
    return bench.bench(bundle, warmup=5, repeat=repeat).hwcomp.median_ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, make in MODELS.items():
            path = Path(scratch) / f"{label.split()[0]}.onnx"
            onnx.save(make(), path)
            built = api.build(path, "host", Path(scratch) / "out")
            feeds = {p.stem.split("_", 2)[2]: np.load(p)
                     for p in sorted((built.bundle / "verify").glob("input_*.npy"))}
            hw = time_bundle(built.bundle, args.repeat)
            ort1 = time_ort(path, feeds, 1, args.repeat)
            ort2 = time_ort(path, feeds, 2, args.repeat)
            rows.append((label, hw, ort1, ort2, built.seconds))
            print(f"{label}: hwcomp {hw:.3f} ms, ort(1t) {ort1:.3f} ms, ort(2t) {ort2:.3f} ms",
                  file=sys.stderr)
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, "
        f"target `host` ({api.load_target('host').tvm_target['mcpu']}), "
        f"onnxruntime {ort.__version__}. Median of {args.repeat} runs each.",
        "",
        "| model | hwcomp untuned (ms) | ORT 1 thread (ms) | ORT 2 threads (ms) "
        "| hwcomp / ORT-1t | hwcomp / ORT-2t | build (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, hw, ort1, ort2, seconds in rows:
        lines.append(f"| {label} | {hw:.3f} | {ort1:.3f} | {ort2:.3f} | {hw / ort1:.1f}x "
                     f"| {hw / ort2:.1f}x | {seconds:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
