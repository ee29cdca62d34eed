"""Distillation against reconstruction alone; quantization-aware fine-tuning (issue 25).

    .venv/bin/python bench/distillation.py [--epochs 30] [--parts digits,qat,suite]

- digits: the digits CNN (`bench/train_digits.py`) pruned to >= 5x fewer MACs, each run
  through the CLI (`hwcomp compress`, a process of its own, so its peak memory is its own):
  reconstruction only (the 1,437 training images as calibration samples) vs the same plus
  `--distill` on those images, unlabelled. Top-1 on the 360 held-out images.
- qat: the digits CNN in int8 (`--precision int8`, cortex-m7's int8 kernels) without and
  with quantization-aware fine-tuning (`--distill`), and pruned + distilled + QAT; the QDQ
  model (what the bundle computes, verified against it) scored on the 360 images.
- suite: MobileNetV1-0.25 at 96x96 from the public suite (random init, BatchNorm statistics
  from data) pruned 50 %, on 512 seeded synthetic images: the student's KL and output SQNR
  against the teacher on held-out images, reconstruction only vs distilled. A fidelity
  figure, not an accuracy claim (random teacher, synthetic inputs).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.digits import digits_split  # noqa: E402

DIGITS = REPO / "tests" / "data" / "digits_cnn.onnx"
HWCOMP = [sys.executable, "-m", "hwcomp"]


def outputs(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + 1]})[0]
                           for i in range(len(images))])


def top1(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    return float((outputs(path, images).argmax(1) == labels).mean())


def compress(model: Path, out: Path, args: list[str]) -> tuple[str, float]:
    started = time.perf_counter()
    proc = subprocess.run([*HWCOMP, "compress", str(model), "-o", str(out), "--force", *args],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"hwcomp compress failed:\n{proc.stderr}")
    return proc.stdout, time.perf_counter() - started


def digits(folder: Path, epochs: int) -> None:
    (x_train, y_train), (x_test, y_test) = digits_split()
    np.savez(folder / "train.npz", image=x_train)
    base = top1(DIGITS, x_test, y_test)
    print(f"\ndigits CNN: original top-1 {base:.4f} on {len(y_test)} held-out images; "
          f"{len(x_train)} training images (unlabelled) for calibration and distillation\n")
    print("| prune | MACs cut | top-1 reconstruction only | top-1 distilled | change vs original "
          "(recon / distilled) | epochs (best) | s per epoch | peak RSS (MB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for prune in (0.6, 0.7, 0.8):
        common = ["-t", "arm-a72", "--input-shape", "image=1x1x8x8", "--prune", str(prune)]
        recon_out = folder / f"recon_{prune}.onnx"
        text, _ = compress(DIGITS, recon_out, [*common, "--calib", str(folder / "train.npz")])
        macs = re.search(r"MACs: ([\d,]+) -> ([\d,]+)", text)
        assert macs
        cut = int(macs.group(1).replace(",", "")) / int(macs.group(2).replace(",", ""))
        dist_out = folder / f"distilled_{prune}.onnx"
        text, _ = compress(DIGITS, dist_out, [*common, "--distill", str(folder / "train.npz"),
                                              "--epochs", str(epochs)])
        runs = re.search(r"distilled: (\d+) epoch\(s\), (?:best epoch (\d+)|no epoch)", text)
        cost = re.search(r"([\d.]+) s per epoch, peak memory (\d+) MB", text)
        assert runs and cost, text
        recon, dist = top1(recon_out, x_test, y_test), top1(dist_out, x_test, y_test)
        print(f"| {prune} | {cut:.2f}x | {recon:.4f} | {dist:.4f} | {recon - base:+.4f} / "
              f"{dist - base:+.4f} | {runs.group(1)} ({runs.group(2) or 0}) | {cost.group(1)} "
              f"| {cost.group(2)} |", flush=True)


def qat(folder: Path, epochs: int) -> None:
    from hwcomp import api
    from hwcomp.compress.distill import DistillOptions
    from hwcomp.compress.driver import CompressionOptions
    from hwcomp.compress.precision import PrecisionOptions
    from hwcomp.model import to_proto
    from hwcomp.targets import load_target

    (x_train, y_train), (x_test, y_test) = digits_split()
    np.savez(folder / "train.npz", image=x_train)
    np.save(folder / "train_labels.npy", y_train)
    base = top1(DIGITS, x_test, y_test)
    target = load_target("cortex-m7")
    print(f"\ndigits CNN int8 (cortex-m7 plan, per-channel weights, uint8 activations; "
          f"onnxruntime on the QDQ model): fp32 top-1 {base:.4f}\n")
    print("| model | int8 top-1 without QAT | int8 top-1 with QAT | fp32 top-1 of that model "
          "| QAT epochs (best) | kept |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    distill = DistillOptions(data=folder / "train.npz", epochs=epochs)
    precision = PrecisionOptions(precision="int8")

    def int8(source: Path, options: CompressionOptions, name: str) -> tuple[float, dict]:
        model, _, plan, _ = api._transformed_model(source, target, {"image": (1, 1, 8, 8)},
                                                options, precision, folder / "train.npz")
        path = folder / f"{name}.onnx"
        onnx.save(to_proto(model), path)
        return top1(path, x_test, y_test), plan.qat or {}

    # The original: int8 as calibrated, and with QAT (--distill, nothing pruned).
    plain, _ = int8(DIGITS, CompressionOptions(), "int8_plain")
    tuned, record = int8(DIGITS, CompressionOptions(distill=distill), "int8_qat")
    rows = [("original", plain, tuned, base, record)]
    # Pruned 0.6 and distilled (fp32, the CLI), then int8 of that; and the whole product flow
    # (prune, distill, int8 with QAT against the original) in one.
    fp32_path = folder / "fp32_pruned.onnx"
    compress(DIGITS, fp32_path, ["-t", "cortex-m7", "--input-shape", "image=1x1x8x8",
                                 "--prune", "0.6", "--distill", str(folder / "train.npz"),
                                 "--epochs", str(epochs)])
    plain, _ = int8(fp32_path, CompressionOptions(), "pruned_int8")
    tuned, record = int8(DIGITS, CompressionOptions(prune=0.6, distill=distill), "pruned_qat")
    rows.append(("pruned 0.6 + distilled", plain, tuned, top1(fp32_path, x_test, y_test), record))
    for label, without, with_qat, fp32, record in rows:
        report = record.get("distillation", {})
        print(f"| {label} | {without:.4f} | {with_qat:.4f} | {fp32:.4f} | "
              f"{report.get('epochs_run', '-')} ({report.get('best_epoch', '-')}) | "
              f"{record.get('kept', '-')} |", flush=True)


def suite(folder: Path, epochs: int) -> None:
    from bench.public_suite import build

    model = folder / "mobilenet_v1_025_96.onnx"
    onnx.save(build("mobilenet_v1_025_96"), model)
    rng = np.random.default_rng(7)
    images = rng.standard_normal((640, 3, 96, 96)).astype(np.float32)
    np.savez(folder / "synthetic.npz", input=images[:512])
    held = images[512:]
    teacher = outputs(model, held)
    print("\nMobileNetV1-0.25 96x96 (public suite, random init), pruned 50 %, 512 synthetic "
          "images (seeded normal) to fit/distill, 128 others to judge:\n")
    print("| student | KL(teacher || student), T=1 | output SQNR (dB) | top-1 agreement | "
          "s per epoch | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    common = ["-t", "arm-a72", "--prune", "0.5"]
    for label, extra in (("reconstruction only", ["--calib", str(folder / "synthetic.npz")]),
                         ("distilled", ["--distill", str(folder / "synthetic.npz"),
                                        "--epochs", str(epochs)])):
        out = folder / f"suite_{label[:5]}.onnx"
        text, _ = compress(model, out, [*common, *extra])
        got = outputs(out, held)
        t = teacher - teacher.max(1, keepdims=True)
        s = got - got.max(1, keepdims=True)
        log_t = t - np.log(np.exp(t).sum(1, keepdims=True))
        log_s = s - np.log(np.exp(s).sum(1, keepdims=True))
        kl = float((np.exp(log_t) * (log_t - log_s)).sum(1).mean())
        sqnr = 10 * np.log10((teacher ** 2).sum() / ((teacher - got) ** 2).sum())
        agree = float((teacher.argmax(1) == got.argmax(1)).mean())
        cost = re.search(r"([\d.]+) s per epoch, peak memory (\d+) MB", text)
        print(f"| {label} | {kl:.4g} | {sqnr:.1f} | {agree:.3f} | "
              f"{cost.group(1) if cost else '-'} | {cost.group(2) if cost else '-'} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--parts", default="digits,qat,suite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for part in args.parts.split(","):
            {"digits": digits, "qat": qat, "suite": suite}[part](Path(scratch), args.epochs)


if __name__ == "__main__":
    main()
