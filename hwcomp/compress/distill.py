"""Knowledge distillation: fine-tune a compressed student against the original teacher.

After pruning / low-rank splitting (and least-squares reconstruction, the starting point),
:func:`distill` trains the student's weights to match the teacher's outputs on the user's
own samples, which need no labels:

- the teacher's outputs come from onnxruntime running the original model, once;
- the student is the compressed ONNX graph run by PyTorch (:mod:`hwcomp.compress.torch_graph`),
  its weights the trainable parameters; the trained weights are written back into the same
  graph and the result is checked against the PyTorch module in onnxruntime;
- the loss of a classifier's logits is Hinton's: ``T^2 * KL(softmax(t / T) || softmax(s / T))``,
  plus ``(1 - alpha) * cross-entropy`` on labels where given; other outputs (features,
  regressions) match by mean squared error over the teacher's variance;
- a fifth of the samples (at least two) is held out; the epoch with the lowest held-out
  distillation loss is the one kept (the reconstruction's weights if none improves), and
  training stops after ``patience`` epochs without improvement.

Quantization-aware fine-tuning passes ``fake_quant``: the layers the precision plan puts in
int8 then see their weights and activations rounded as the QDQ model will round them
(straight-through estimator), with the ranges the calibration measured.

Deterministic for a given ``seed`` on one machine (PyTorch's CPU kernels, one thread count).
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hwcomp import model as model_io
from hwcomp.analysis.sensitivity import metrics
from hwcomp.compress.torch_graph import graph_module, import_torch, write_weights
from hwcomp.errors import CalibrationDataError, HwcompError, OptionError, VerificationError
from hwcomp.verify import run_onnxruntime_batches

logger = logging.getLogger(__name__)

MIN_SAMPLES = 10
HELD_OUT_FRACTION = 0.2
# The trained student and its PyTorch module must agree in onnxruntime within this
# (relative to max(1, |output|)): float32 kernels reassociate, nothing more.
EXPORT_TOLERANCE = 1e-4


class DistillationError(HwcompError):
    """Distillation cannot run on the samples given (too few to hold some out)."""

    exit_code = 3


class ExportMismatchError(VerificationError):
    """The distilled graph in onnxruntime disagrees with the trained PyTorch module."""


@dataclass(frozen=True)
class DistillOptions:
    """What ``--distill`` and its companions ask for.

    Attributes:
        data: ``.npz`` (or folder of ``.npy``) of samples keyed by input name.
        labels: Optional class labels of those samples (adds cross-entropy).
        epochs: Most epochs (early stopping may end sooner).
        temperature: Softening of the logits (T); the KL term is scaled by T².
        alpha: Weight of the distillation term against cross-entropy on labels;
            ``None``: 0.9 with labels, 1.0 without.
        lr: Adam's learning rate (cosine decay over the epochs); ``None``: 1e-3, and 1e-4
            for quantization-aware fine-tuning (the weights only move to rounding points).
        batch: Samples per step.
        seed: Seeds the held-out split, the order of samples and PyTorch.
        patience: Epochs without a better held-out loss before training stops.
    """

    data: Path
    labels: Path | None = None
    epochs: int = 30
    temperature: float = 4.0
    alpha: float | None = None
    lr: float | None = None
    batch: int = 32
    seed: int = 0
    patience: int = 6

    @property
    def kd_weight(self) -> float:
        """Return the distillation term's weight (alpha)."""
        if self.alpha is not None:
            return self.alpha
        return 0.9 if self.labels is not None else 1.0

    def validate(self) -> None:
        """Check the numbers before any work.

        Raises:
            OptionError: A value outside its range, or ``--alpha`` below 1 without labels.
        """
        checks = [
            (self.epochs >= 1, f"--epochs {self.epochs}: give 1 or more"),
            (self.temperature > 0, f"--temperature {self.temperature}: give a value above 0 "
                                   "(4 is usual)"),
            (self.lr is None or (self.lr > 0 and math.isfinite(self.lr)),
             f"--lr {self.lr}: give a value above 0"),
            (self.batch >= 1, f"--batch {self.batch}: give 1 or more samples per step"),
            (self.patience >= 1, f"patience {self.patience}: give 1 or more epochs"),
        ]
        if self.alpha is not None:
            checks.append((0.0 <= self.alpha <= 1.0, f"--alpha {self.alpha}: give a weight in "
                                                     "[0, 1] (1: distillation only)"))
            checks.append((self.alpha == 1.0 or self.labels is not None,
                           f"--alpha {self.alpha} weighs cross-entropy on labels, but no "
                           "--labels were given: pass --labels L.npy or drop --alpha"))
        for ok, message in checks:
            if not ok:
                raise OptionError(message)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: training loss, held-out loss and agreement (accuracy with labels)."""

    epoch: int
    train_loss: float
    held_out_loss: float
    agreement: float | None
    accuracy: float | None
    seconds: float


@dataclass(frozen=True)
class StudentScore:
    """The student against the teacher on the held-out samples."""

    loss: float
    kl: float | None
    sqnr_db: float | None
    agreement: float | None
    accuracy: float | None
    teacher_accuracy: float | None


@dataclass(frozen=True)
class DistillReport:
    """What distillation did and measured."""

    samples: int
    held_out: int
    trained_tensors: int
    epochs_run: int
    best_epoch: int
    before: StudentScore
    after: StudentScore
    seconds_per_epoch: float
    peak_rss_mb: float
    export_error: float
    fake_quantized: list[str] = field(default_factory=list)
    history: list[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-ready figures (for the manifest)."""
        return asdict(self)


Progress = Callable[[EpochRecord, int], None]


def load_data(teacher: onnx.ModelProto | Any, options: DistillOptions
              ) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Load ``options.data`` as batches of the model's batch size, and the labels if given.

    Raises:
        CalibrationDataError: Missing inputs, wrong shapes, unreadable files (named).
        DistillationError: Too few samples to hold some out.
    """
    specs = model_io.graph_inputs(teacher)
    batches = model_io.calibration_batches(specs, model_io.load_calibration(Path(options.data),
                                                                            specs))
    check_sample_count(batches, options.data)
    count = model_io.sample_count(batches)
    labels = None
    if options.labels is not None:
        labels = model_io.load_labels(Path(options.labels), count, model_io.class_count(teacher))
    return batches, labels


def check_sample_count(batches: Sequence[Mapping[str, np.ndarray]], source: Path | str) -> None:
    """Refuse fewer samples than a held-out split needs.

    Raises:
        DistillationError: Fewer than :data:`MIN_SAMPLES` samples or two batches.
    """
    count = model_io.sample_count(batches)
    if count < MIN_SAMPLES or len(batches) < 2:
        raise DistillationError(
            f"{source}: {count} sample(s) in {len(batches)} batch(es) of the model; "
            f"distillation needs at least {MIN_SAMPLES} samples (two batches) to hold some "
            "out for choosing the epoch; give more samples")


def distill(student: onnx.ModelProto, teacher: onnx.ModelProto, options: DistillOptions,
            batches: Sequence[Mapping[str, np.ndarray]], labels: np.ndarray | None = None,
            *, held_out: Sequence[int] | None = None,
            fake_quant: Mapping[str, Any] | None = None,
            progress: Progress | None = None) -> tuple[onnx.ModelProto, DistillReport]:
    """Fine-tune ``student`` to match ``teacher`` on ``batches``; return it and the report.

    ``fake_quant`` maps tensor names to the rounding applied to them in training (the hooks
    of :func:`hwcomp.compress.qat.fake_quant_hooks`); the returned model holds the float
    weights. ``held_out`` names the batches that choose the epoch (default: a seeded fifth);
    ``labels`` cover every sample of ``batches``.

    Raises:
        TrainingUnavailableError: PyTorch is not installed.
        TorchConversionError: A student op the converter does not cover (named).
        DistillationError: The student's inputs differ from the teacher's.
        ExportMismatchError: The exported student disagrees with the trained module.
    """
    torch = import_torch()
    options.validate()
    _check_interfaces(student, teacher)
    module = graph_module(student)
    if fake_quant:
        module.hooks.update(fake_quant)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    if held_out is None:
        order = rng.permutation(len(batches))
        held_out = [int(i) for i in order[:max(1, round(HELD_OUT_FRACTION * len(batches)))]]
    held_idx = np.sort(np.asarray(held_out, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(batches)), held_idx)
    if not len(train_idx) or not len(held_idx):
        raise DistillationError(
            f"{len(batches)} batch(es) cannot be split into training and held-out samples; "
            "give more samples")
    names = _input_names(teacher)
    inputs = {n: torch.from_numpy(np.stack([np.asarray(b[n]) for b in batches])) for n in names}
    targets = [torch.from_numpy(np.stack(o).astype(np.float32))
               for o in zip(*run_onnxruntime_batches(teacher, batches), strict=True)]
    per_batch = next(iter(inputs.values())).shape[1]
    label_t = None if labels is None else torch.from_numpy(
        labels[: len(batches) * per_batch].reshape(len(batches), per_batch))
    kinds = [_output_kind(t) for t in targets]
    variances = [float(t.double().var()) or 1.0 for t in targets]
    runner = torch.func.vmap(lambda *xs: tuple(module(*xs)))
    alpha, temperature = options.kd_weight, options.temperature
    group = max(1, options.batch // per_batch)  # model batches per step

    def loss_of(index: np.ndarray, with_labels: bool) -> tuple[Any, list[Any]]:
        picked = torch.from_numpy(index)
        outs = runner(*[inputs[n][picked] for n in names])
        total = 0.0
        for out, target, kind, variance in zip(outs, targets, kinds, variances, strict=True):
            teacher_out = target[picked]
            if kind == "logits":
                s = out.reshape(-1, out.shape[-1]) / temperature
                t = teacher_out.reshape(-1, out.shape[-1]) / temperature
                total = total + temperature ** 2 * torch.nn.functional.kl_div(
                    torch.log_softmax(s, -1), torch.log_softmax(t, -1), reduction="batchmean",
                    log_target=True)
            elif kind == "probabilities":
                s = out.reshape(-1, out.shape[-1]).clamp_min(1e-12).log()
                t = teacher_out.reshape(-1, out.shape[-1]).clamp_min(1e-12).log()
                total = total + torch.nn.functional.kl_div(s, t, reduction="batchmean",
                                                           log_target=True)
            else:
                total = total + ((out - teacher_out) ** 2).mean() / variance
        if with_labels and label_t is not None and alpha < 1.0:
            logits = outs[0].reshape(-1, outs[0].shape[-1])
            ce = torch.nn.functional.cross_entropy(logits, label_t[picked].reshape(-1))
            total = alpha * total + (1 - alpha) * ce
        return total, list(outs)

    def evaluate() -> tuple[float, float | None, float | None, list[np.ndarray]]:
        # A step's worth of batches at a time: the activations of every held-out sample
        # at once would be the model's largest layer times the held-out count.
        loss, first = 0.0, []
        with torch.no_grad():
            for start in range(0, len(held_idx), group):
                chunk = held_idx[start:start + group]
                part, outs = loss_of(chunk, False)
                loss += float(part) * len(chunk)
                first += [o.numpy() for o in outs[0]]
        agreement = accuracy = None
        if kinds[0] != "values":
            got = np.concatenate([f.reshape(-1, f.shape[-1]) for f in first]).argmax(-1)
            want = targets[0][torch.from_numpy(held_idx)].reshape(-1, first[0].shape[-1])
            agreement = float((got == want.argmax(-1).numpy()).mean())
            if label_t is not None:
                accuracy = float((got == label_t[torch.from_numpy(held_idx)].reshape(-1)
                                  .numpy()).mean())
        return loss / len(held_idx), agreement, accuracy, first

    parameters = list(module.parameters())
    lr = options.lr if options.lr is not None else (1e-4 if fake_quant else 1e-3)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    steps_per_epoch = math.ceil(len(train_idx) / group)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=options.epochs * steps_per_epoch)
    before_loss, _, _, before_outputs = evaluate()
    best = (before_loss, 0, [p.detach().clone() for p in parameters])
    history: list[EpochRecord] = []
    started = time.perf_counter()
    stale = 0
    for epoch in range(1, options.epochs + 1):
        tick = time.perf_counter()
        module.train()
        shuffled = train_idx[rng.permutation(len(train_idx))]
        running = 0.0
        for start in range(0, len(shuffled), group):
            optimizer.zero_grad()
            loss, _ = loss_of(shuffled[start:start + group], True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item() * len(shuffled[start:start + group])
        held_loss, agreement, accuracy, _ = evaluate()
        record = EpochRecord(epoch, running / len(shuffled), held_loss, agreement, accuracy,
                             time.perf_counter() - tick)
        history.append(record)
        if progress is not None:
            progress(record, options.epochs)
        logger.info("distill epoch %d: train loss %.4g, held-out loss %.4g", epoch,
                    record.train_loss, held_loss)
        if held_loss < best[0]:
            best = (held_loss, epoch, [p.detach().clone() for p in parameters])
            stale = 0
        else:
            stale += 1
            if stale >= options.patience:
                break
    elapsed = time.perf_counter() - started
    with torch.no_grad():
        for parameter, value in zip(parameters, best[2], strict=True):
            parameter.copy_(value)
    after_outputs = evaluate()[3]
    trained = write_weights(student, module.weights())
    export_error = _check_export(trained, module, batches, held_idx, fake_quant)
    held_labels = None
    if label_t is not None:
        held_labels = label_t[torch.from_numpy(held_idx)].reshape(-1).numpy()
    teacher_held = [targets[0][i].numpy() for i in held_idx]
    report = DistillReport(
        samples=len(batches) * per_batch, held_out=len(held_idx) * per_batch,
        trained_tensors=len(module.names), epochs_run=len(history), best_epoch=best[1],
        before=_score(before_outputs, teacher_held, held_labels, before_loss, kinds[0]),
        after=_score(after_outputs, teacher_held, held_labels, best[0], kinds[0]),
        seconds_per_epoch=elapsed / max(1, len(history)),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        export_error=export_error, fake_quantized=sorted(fake_quant or {}), history=history)
    return trained, report


def _output_kind(target: Any) -> str:
    """Say how an output (stacked ``(batches, batch, ...)``) is matched.

    ``logits`` for a (batch, classes) output, ``probabilities`` where it already sums to 1
    (a Softmax at the end: matched by KL at T = 1), else ``values`` (squared error).
    """
    if target.dim() != 3 or target.shape[-1] < 2:
        return "values"
    sums = target.double().sum(-1)
    if bool((target >= 0).all()) and bool(((sums - 1).abs() < 1e-3).all()):
        return "probabilities"
    return "logits"


def _input_names(proto: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in proto.graph.initializer}
    return [v.name for v in proto.graph.input if v.name not in initializers]


def _check_interfaces(student: onnx.ModelProto, teacher: onnx.ModelProto) -> None:
    pairs = [("inputs", _input_names(student), _input_names(teacher)),
             ("outputs", [o.name for o in student.graph.output],
              [o.name for o in teacher.graph.output])]
    for what, got, want in pairs:
        if got != want:
            raise DistillationError(f"the student's {what} {got} differ from the teacher's "
                                    f"{want}; distillation matches them by name")


def _check_export(trained: onnx.ModelProto, module: Any, batches: Sequence[Mapping[str, Any]],
                  held_idx: np.ndarray, fake_quant: Mapping[str, Any] | None) -> float:
    """Compare onnxruntime on the written student with the module (float, hooks off)."""
    torch = import_torch()
    hooks, module.hooks = dict(module.hooks), {}
    try:
        picked = [batches[i] for i in held_idx[:4]]
        got = run_onnxruntime_batches(trained, picked)
        with torch.no_grad():
            want = [[o.numpy() for o in module(*[torch.from_numpy(np.asarray(v)) for v in b.values()])]
                    for b in picked]
    finally:
        module.hooks = hooks
    error = 0.0
    for outs, refs in zip(got, want, strict=True):
        for out, ref in zip(outs, refs, strict=True):
            scale = max(1.0, float(np.abs(ref).max()))
            error = max(error, float(np.abs(out - ref).max()) / scale)
    if not error <= EXPORT_TOLERANCE:
        raise ExportMismatchError(
            f"the distilled student in onnxruntime differs from the trained PyTorch module by "
            f"{error:.3g} (relative; tolerance {EXPORT_TOLERANCE:g}): a converter defect, "
            "nothing was written; run without --distill")
    return error


def _score(got: list[np.ndarray], teacher: list[np.ndarray], labels: np.ndarray | None,
           loss: float, kind: str) -> StudentScore:
    """Score the student's first output ``got`` (fake-quantized in QAT) against the teacher's.

    From the trained module, which :func:`_check_export` showed to match the exported graph.
    """
    sqnr, _, agreement, accuracy, _ = metrics(teacher, got, labels)
    kl = teacher_accuracy = None
    if kind == "probabilities":
        t = np.log(np.clip(np.concatenate(teacher).reshape(-1, teacher[0].shape[-1]), 1e-12, None))
        s = np.log(np.clip(np.concatenate(got).reshape(-1, t.shape[-1]), 1e-12, None))
        kl = float(np.mean(np.sum(np.exp(t) * (t - s), axis=-1)))
    elif kind == "logits":
        t = np.concatenate(teacher).reshape(-1, teacher[0].shape[-1]).astype(np.float64)
        s = np.concatenate(got).reshape(-1, t.shape[-1]).astype(np.float64)
        kl = float(np.mean(np.sum(_softmax(t) * (_log_softmax(t) - _log_softmax(s)), axis=-1)))
    if kind != "values" and labels is not None:
        flat = np.concatenate(teacher).reshape(-1, teacher[0].shape[-1])
        teacher_accuracy = float((flat.argmax(-1) == labels[: len(flat)]).mean())
    return StudentScore(loss=loss, kl=kl, sqnr_db=sqnr, agreement=agreement, accuracy=accuracy,
                        teacher_accuracy=teacher_accuracy)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(x))


def check_data_source(options: DistillOptions | None, calib: Path | None,
                      labels: Path | None) -> None:
    """Refuse ``--labels`` that could belong to either of two different sample files."""
    if options is None or calib is None or labels is None:
        return
    if Path(calib).resolve() != Path(options.data).resolve():
        raise CalibrationDataError(
            f"--labels {labels} with both --calib {calib} and --distill {options.data}: the "
            "labels can belong to one sample file only; use the same file for both, or drop "
            "--labels")
