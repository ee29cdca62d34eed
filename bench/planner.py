"""The joint planner (issue 22 item 3): --optimize latency against fp32, --prune auto and
--precision auto on the same budget, with each bundle's time next to the plan's prediction.

Part 1, the digits CNN (``tests/data/digits_cnn.onnx``, trained by ``bench/train_digits.py``):
planned on 512 training images with labels (the last 128 held out by the planner), budget
``--accuracy-budget 1%``; top-1 then measured by onnxruntime on the bundle's
``model.optimized.onnx`` over the 360 held-out images no step has seen.

Part 2, the MLPerf Tiny-shaped CNNs of ``tests/model_zoo`` (seeded weights, BatchNorm
statistics from data): budget output SQNR >= 30 dB against the original (``--min-sqnr 30``),
planned on 64 seeded random samples (``--calib-random 64``: there are no real samples).

With ``--profile``, each fp32 and ``--precision auto`` bundle is profiled (``hwcomp
profile``) before ``--optimize`` plans, so the plan predicts from the target's latency table
(measured / counted layers and a fit on them) instead of the roofline: the workflow issue 22
describes. The table lives in a scratch cache (``HWCOMP_CACHE_DIR``; the rest of the user's
cache linked in), so earlier tables do not leak into the figures.

Times: ``x86-avx2`` bundles MEASURED here (the bundle's runner, its own process, median of
``--repeat`` runs); ``cortex-m7`` bundles COUNTED (instructions the emulated board executed
per inference during the build's verification: counts, not cycles). Predicted = the plan's
estimate (``hwcomp analyze``'s: the target's latency table where profiled, else roofline).

    .venv/bin/python bench/planner.py [--part 1|2|all] [--repeat 50] [--profile]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hwcomp import api, bench  # noqa: E402
from hwcomp.compress.driver import CompressionOptions  # noqa: E402
from hwcomp.compress.pipeline import parse_budget  # noqa: E402
from hwcomp.compress.precision import PrecisionOptions  # noqa: E402
from tests import model_zoo  # noqa: E402
from tests.digits import digits_split  # noqa: E402

DIGITS = REPO / "tests" / "data" / "digits_cnn.onnx"
TINY = {"ds_cnn_kws": model_zoo.ds_cnn, "resnet8": model_zoo.resnet8,
        "mobilenet_v1_vww": model_zoo.mobilenet_v1_vww}


def _time(result: api.BuildResult, repeat: int) -> tuple[float, str]:
    counts = result.manifest.get("layer_counts")
    if counts:
        return float(counts["kernel_instructions"]), "instr."
    stats = bench.bench(result.bundle, warmup=5, repeat=repeat).hwcomp
    return stats.median_ms, "ms"


def _top1(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return float(np.mean([session.run(None, {name: images[i:i + 1]})[0].argmax() == labels[i]
                          for i in range(len(labels))]))


def _sqnr(original: Path, optimized: Path, samples: int = 32) -> float | None:
    """Output SQNR of ``optimized`` vs ``original`` on seeded samples the planner never saw."""
    rng = np.random.default_rng(1234)
    ours = ort.InferenceSession(str(optimized), providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    spec = theirs.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    noise = signal = 0.0
    for _ in range(samples):
        x = rng.standard_normal(shape).astype(np.float32)
        a = theirs.run(None, {spec.name: x})[0].astype(np.float64)
        b = ours.run(None, {ours.get_inputs()[0].name: x})[0].astype(np.float64)
        noise += float(((a - b) ** 2).sum())
        signal += float((a**2).sum())
    return None if noise == 0 else 10 * float(np.log10(signal / noise))


def _row(label: str, target: str, variant: str, result: api.BuildResult, base: float,
         unit: str, measured: float, extra: str) -> str:
    plan = result.manifest.get("plan")
    predicted = f"{plan['predicted']['latency_s'] * 1e3:.4f} ms" if plan else "-"
    compression = result.manifest.get("compression") or {}
    precision = result.manifest.get("precision") or {}
    macs = compression.get("macs_after")
    counts = precision.get("counts") or {}
    narrow = ", ".join(f"{n} {p}" for p, n in counts.items() if n and p != "fp32") or "fp32"
    value = f"{measured:,.0f}" if unit == "instr." else f"{measured:.4f}"
    return (f"| {label} | {target} | {variant} | {'-' if macs is None else f'{macs:,}'} | "
            f"{narrow} | {value} {unit} | **{base / measured:.2f}x** | {predicted} | {extra} |")


def part1(root: Path, repeat: int, profile: bool) -> None:
    (x_train, y_train), (x_test, y_test) = digits_split()
    np.savez(root / "calib.npz", image=x_train[:512])
    np.save(root / "labels.npy", y_train[:512])
    calib, labels = root / "calib.npz", root / "labels.npy"
    reference = _top1(DIGITS, x_test, y_test)
    print(f"\ndigits CNN: original top-1 on the 360 held-out images {reference:.2%}\n")
    print("| model | target | build | MACs | precision | time (median or count) | vs fp32 "
          "| predicted (plan) | top-1 on 360 held-out (drop) |")
    print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | --- |")
    shape = {"image": (1, 1, 8, 8)}
    for target in ("x86-avx2", "cortex-m7"):
        variants = {
            "fp32": (None, None),
            "--prune auto": (CompressionOptions(prune="auto", accuracy_budget="1%", calib=calib,
                                                labels=labels), None),
            "--precision auto": (None, PrecisionOptions(
                precision="auto", labels=labels, accuracy_budget=parse_budget("1%"))),
            "--optimize latency": (CompressionOptions(optimize="latency", accuracy_budget="1%",
                                                      calib=calib, labels=labels), None),
        }
        base = 0.0
        for variant, (compression, precision) in variants.items():
            result = api.build(DIGITS, target, root / variant.strip("-").replace(" ", "_"),
                               input_shapes=shape, calib=calib, force=True,
                               compression_options=compression, precision_options=precision)
            measured, unit = _time(result, repeat)
            base = base or measured
            if profile and variant != "--optimize latency":
                api.profile(result.bundle, runs=20)
            top1 = _top1(result.bundle / "model.optimized.onnx", x_test, y_test)
            print(_row("digits CNN", target, variant, result, base, unit, measured,
                       f"{top1:.2%} ({reference - top1:+.2%})"), flush=True)


def part2(root: Path, repeat: int, profile: bool) -> None:
    print("\nMLPerf Tiny-shaped CNNs, seeded weights, budget output SQNR >= 30 dB vs the "
          "original (64 seeded random samples)\n")
    print("| model | target | build | MACs | precision | time (median or count) | vs fp32 "
          "| predicted (plan) | output SQNR (dB) |")
    print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | --- |")
    for name, make in TINY.items():
        path = root / f"{name}.onnx"
        onnx.save(make(), path)
        for target in ("cortex-m7",):
            variants = {
                "fp32": (None, None),
                "--precision auto": (None, PrecisionOptions(
                    precision="auto", min_sqnr_db=30.0, calib_random=64)),
                "--optimize latency": (CompressionOptions(
                    optimize="latency", calib_random=64, min_sqnr_db=30.0), None),
            }
            base = 0.0
            for variant, (compression, precision) in variants.items():
                result = api.build(path, target, root / variant.strip("-").replace(" ", "_"),
                                   force=True, compression_options=compression,
                                   precision_options=precision)
                measured, unit = _time(result, repeat)
                base = base or measured
                if profile and variant != "--optimize latency":
                    api.profile(result.bundle, runs=20)
                sqnr = _sqnr(path, result.bundle / "model.optimized.onnx")
                print(_row(name, target, variant, result, base, unit, measured,
                           "exact" if sqnr is None else f"{sqnr:.1f}"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["1", "2", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--profile", action="store_true",
                        help="profile the fp32 / precision-auto bundles first (latency table)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hwcomp-planner-") as scratch:
        if args.profile:
            _scratch_table(Path(scratch) / "cache")
        if args.part in ("1", "all"):
            part1(Path(scratch), args.repeat, args.profile)
        if args.part in ("2", "all"):
            part2(Path(scratch), args.repeat, args.profile)


def _scratch_table(cache: Path) -> None:
    """Point hwcomp's cache at ``cache``: the user's entries linked in, the latency table new."""
    from hwcomp.lower.library.runtime_libs import cache_dir

    real = cache_dir()
    cache.mkdir(parents=True)
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name != "latency":
                (cache / entry.name).symlink_to(entry)
    os.environ["HWCOMP_CACHE_DIR"] = str(cache)


if __name__ == "__main__":
    main()
