"""Judging a changed model against the original on held-out samples (the planners' loss).

Shared by ``--optimize`` (:mod:`hwcomp.compress.planner`) and ``--prune auto``
(:mod:`hwcomp.compress.prune_plan`), so one budget means the same in both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from hwcomp.verify import first_outputs

Feeds = Sequence[Mapping[str, np.ndarray]]


class Judge:
    """Loss of a compressed / quantized model against the original on held-out samples.

    Class outputs are judged by the larger of two drops: top-1 (counted) and the mean
    probability given to the right class (the softmax of logits; probabilities as they
    are). Counting alone resolves one sample in N, and a search that keeps the fastest plan
    within the budget picks plans that happen to miss few of *these* samples: on the digits
    CNN, plans within a 1 % top-1 budget on 128 held-out samples lost 2.5 % on 360 unseen
    ones. The probability drop moves with every sample's margin, not only the flipped ones,
    and both must hold two standard errors (over the samples) below the budget: with that,
    the same plans lost 0.83 % there (``bench/planner.py``). An SQNR floor is judged the
    same way: the mean noise per sample plus two standard errors (a plan at 30.0 dB on 16
    held-out samples measured 29.3 dB on others).
    """

    def __init__(self, model: ir.Model, check: Feeds, labels: np.ndarray | None,
                 accuracy_budget: float | None, min_sqnr_db: float) -> None:
        self.check, self.labels = check, labels
        self.reference = first_outputs(model, check)
        flat = np.concatenate([r.reshape(r.shape[0], -1) for r in self.reference])
        # Class scores are [batch, classes]; a [batch, tokens, features] hidden state or a
        # feature map flattened is not a choice among classes (top-1 of it means nothing).
        classes = self.reference[0].ndim == 2 and flat.shape[1] > 1
        self.flat = flat
        if accuracy_budget is None:
            self.mode, self.budget = "sqnr", 0.0
            self.min_sqnr = min_sqnr_db
            self.metric = (f"output SQNR vs the original below {min_sqnr_db:g} dB (dB short; "
                           "noise plus two standard errors)")
            return
        self.budget = accuracy_budget
        if labels is not None and classes:
            self.mode, self.truth = "accuracy", labels[: len(flat)]
            self.metric = ("top-1 accuracy drop (counted or by probability, the larger, plus two "
                           "standard errors)")
        elif classes:
            self.mode, self.truth = "agreement", flat.argmax(1)
            self.metric = ("top-1 disagreement with the original (counted or by probability, "
                           "the larger, plus two standard errors)")
        else:
            self.mode = "error"
            self.metric = "relative output error"
            return
        self.hits = (flat.argmax(1) == self.truth).astype(np.float64)
        self.confidence = _true_class_probability(flat, self.truth)

    def loss(self, outputs: list[np.ndarray]) -> float:
        """Return the loss of ``outputs`` (one array per held-out batch)."""
        got = np.concatenate([o.reshape(o.shape[0], -1) for o in outputs])
        if self.mode in ("accuracy", "agreement"):
            counted = self.hits - (got.argmax(1) == self.truth)
            soft = self.confidence - _true_class_probability(got, self.truth)
            return max(_upper(counted), _upper(soft))
        if self.mode == "error":
            return float(np.linalg.norm(got - self.flat)) / max(float(np.linalg.norm(self.flat)),
                                                                 1e-30)
        noise = ((got.astype(np.float64) - self.flat) ** 2).sum(1)
        if not noise.any():
            return 0.0
        signal = float((self.flat.astype(np.float64) ** 2).sum(1).mean())
        sqnr = 10 * math.log10(max(signal, 1e-30) / max(_upper(noise), 1e-30))
        return max(0.0, self.min_sqnr - sqnr)


def _true_class_probability(rows: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Probability each row gives ``truth``: rows that are distributions as they are, else softmax."""
    rows = rows.astype(np.float64)
    if not (np.all(rows >= 0) and np.allclose(rows.sum(1), 1.0, atol=1e-3)):
        shifted = np.exp(rows - rows.max(1, keepdims=True))
        rows = shifted / shifted.sum(1, keepdims=True)
    return np.asarray(rows[np.arange(len(rows)), truth])


def _upper(drops: np.ndarray) -> float:
    """Mean per-sample drop plus two standard errors: the budget must hold beyond the noise."""
    if len(drops) < 2:
        return float(drops.mean()) if len(drops) else 0.0
    return float(drops.mean() + 2 * drops.std(ddof=1) / math.sqrt(len(drops)))
