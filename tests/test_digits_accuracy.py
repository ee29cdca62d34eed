"""A real accuracy check: the trained digits CNN compressed 3x keeps its top-1 accuracy.

The CNN (tests/data/digits_cnn.onnx, trained by bench/train_digits.py on scikit-learn's
bundled load_digits) scores 99.7 % on the 360 held-out images.
"""

import numpy as np
import onnxruntime as ort
import pytest

from hwcomp import api
from hwcomp.compress.driver import CompressionOptions
from tests.conftest import REPO
from tests.digits import digits_split

MODEL = REPO / "tests" / "data" / "digits_cnn.onnx"


def _accuracy(path, images, labels) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predictions = [int(session.run(None, {"image": images[i:i + 1]})[0].argmax())
                   for i in range(len(images))]
    return float((np.array(predictions) == labels).mean())


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    (x_train, _), (x_test, y_test) = digits_split()
    folder = tmp_path_factory.mktemp("digits")
    np.savez(folder / "calib.npz", image=x_train[:512])
    return folder, x_test, y_test


def test_pruning_and_low_rank_keep_accuracy_with_reconstruction(split):
    folder, x_test, y_test = split
    baseline = _accuracy(MODEL, x_test, y_test)
    assert baseline > 0.99
    results = {}
    for reconstruct in (True, False):
        out = folder / f"small_{reconstruct}.onnx"
        options = CompressionOptions(prune=0.4, lowrank=0.9, reconstruct=reconstruct,
                                     calib=folder / "calib.npz")
        outcome = api.compress(MODEL, out, "arm-a72", options, input_shapes={"image": (1, 1, 8, 8)},
                               force=True)
        assert outcome.macs_before / outcome.macs_after >= 2.0
        assert outcome.result.lowrank.split and outcome.result.pruning.groups
        results[reconstruct] = _accuracy(out, x_test, y_test)
    # With reconstruction: within 1 % of the original; without it the network breaks.
    assert results[True] >= baseline - 0.01, results
    assert results[False] < results[True], results
