"""Accuracy of the compressed digits CNN, with and without least-squares reconstruction.

    .venv/bin/python bench/digits_compression.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hwcomp import api  # noqa: E402
from hwcomp.compress.driver import CompressionOptions  # noqa: E402
from tests.digits import digits_split  # noqa: E402

MODEL = REPO / "tests" / "data" / "digits_cnn.onnx"
SETTINGS = [  # (target, prune, lowrank energy)
    ("arm-a72", 0.4, 0.9),
    ("arm-a72", 0.5, None),
    ("arm-a72", None, 0.8),
    ("x86-avx512", 0.5, None),
]


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hits = [int(session.run(None, {"image": images[i:i + 1]})[0].argmax()) == labels[i]
            for i in range(len(images))]
    return float(np.mean(hits))


def main() -> None:
    (x_train, _), (x_test, y_test) = digits_split()
    base = accuracy(MODEL, x_test, y_test)
    print(f"original: top-1 {base:.4f} on {len(y_test)} held-out images\n")
    print("| target | prune | low-rank energy | MACs cut | top-1 without reconstruction "
          "| top-1 with reconstruction | change vs original |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        np.savez(folder / "calib.npz", image=x_train[:512])
        for target, prune, lowrank in SETTINGS:
            scores = {}
            for reconstruct in (False, True):
                out = folder / "small.onnx"
                options = CompressionOptions(prune=prune, lowrank=lowrank, reconstruct=reconstruct,
                                             calib=folder / "calib.npz")
                outcome = api.compress(MODEL, out, target, options,
                                       input_shapes={"image": (1, 1, 8, 8)}, force=True)
                scores[reconstruct] = accuracy(out, x_test, y_test)
            cut = outcome.macs_before / outcome.macs_after
            print(f"| {target} | {prune or '-'} | {lowrank or '-'} | {cut:.2f}x | {scores[False]:.4f} "
                  f"| {scores[True]:.4f} | {scores[True] - base:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
