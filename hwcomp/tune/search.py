"""Kernel tuning with MetaSchedule, into a persistent per-target database.

``hwcomp tune MODEL --target T --trials N`` prepares the model exactly as ``hwcomp build``
does (legalise, import, hwcomp's own kernels, TVM's legalisation and fusion), extracts the
fused functions that have no schedule yet (hwcomp's conv/matmul kernels are scheduled
already), and tunes them with MetaSchedule's evolutionary search. Records go to a JSON
database: ``--db DIR``, or ``<cache>/tuning/<target>/`` by default, which ``hwcomp build``
applies on every build of that target. A workload is keyed by its structure, so a rebuild
runs zero trials and a second model (or a pruned variant with the same shapes) reuses what
the first one found.

Two TVM facts shape this module:

* MetaSchedule imports ``tvm.s_tir.tensor_intrin``, which parses every backend's tensor
  intrinsics (about 40 s here) — in this process and in every builder worker, whose 30 s
  default timeout then kills every build ("Total trials: 0").
  :func:`hwcomp.lower.cpu.kernels.intrinsics.light_tensor_intrin`
  installs that package without its eager imports (x86 and Arm only) and replaces TVM's
  ``dot_16x4_vnni``, whose i32 operands LLVM 20+ rejects, with hwcomp's.
* The JSON database appends one record per line as trials finish, so an interrupted run
  keeps what it measured; :func:`hwcomp.lower.cpu.database.repair_database` drops a torn
  last line a kill can leave.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwcomp import model as model_io
from hwcomp import remote, stop
from hwcomp.direct_rpc import create_direct_session, direct_config
from hwcomp.errors import HwcompError, ToolchainError
from hwcomp.lower import lowering_for, tunable_families
from hwcomp.lower.cpu.database import RECORDS, WORKLOADS, count_records, repair_database
from hwcomp.lower.cpu.kernels.intrinsics import light_tensor_intrin
from hwcomp.lower.cpu.pipeline import fusion_passes
from hwcomp.lower.frontend.legalize import legalize_for_tvm
from hwcomp.lower.library.runner import check_cross_prefix
from hwcomp.lower.library.runtime_libs import cache_dir
from hwcomp.targets import Target, load_target
from hwcomp.threads import use_physical_cores
from hwcomp.tune.baseline import record_default_schedules

logger = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 60.0


class TuningError(HwcompError):
    """Tuning could not start or its database cannot be used."""


@dataclass
class TaskProgress:
    """Trials and best latency of one tuning task."""

    name: str
    trials: int = 0
    errors: int = 0
    best_us: float | None = None


@dataclass
class TuneResult:
    """What a tuning run did."""

    database: Path
    tasks: list[TaskProgress]
    trials: int
    records_before: int
    records_after: int
    seconds: float
    interrupted: bool = False
    skipped: list[str] = field(default_factory=list)
    # Tasks whose default schedule was measured and recorded next to the search's records.
    defaults: list[str] = field(default_factory=list)


def default_database(target: Target) -> Path:
    """``<cache>/tuning/<target>``: where tuning records of ``target`` live by default."""
    return cache_dir() / "tuning" / target.name


def build_candidate(mod: Any, target: Any, params: Any) -> Any:
    """MetaSchedule builder function: TVM's default build without the slow import."""
    light_tensor_intrin()
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def prepare(model_path: Path, target: Target,
            input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Any:
    """Return the Relax module ``hwcomp build`` compiles, after TVM's legalisation and fusion."""
    import tvm

    model = model_io.load_model(Path(model_path), input_shapes)
    legal, _ = legalize_for_tvm(model)
    mod = lowering_for(target).prepare(model_io.to_proto(legal), target).module
    tvm_target = target.tvm()
    with tvm_target:
        return tvm.transform.Sequential(fusion_passes(tvm_target))(mod)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# MetaSchedule's modules that tuning imports and hwcomp's base install leaves out.
TUNE_EXTRA_MODULES = ("xgboost", "cloudpickle")


def require_tune_extra() -> None:
    """Raise :class:`ToolchainError` naming ``hwcomp[tune]`` when its packages are missing."""
    missing = [name for name in TUNE_EXTRA_MODULES if not _importable(name)]
    if missing:
        raise ToolchainError(
            f"tuning needs MetaSchedule's cost model and process pool ({', '.join(missing)} "
            "not installed): pip install 'hwcomp[tune]'")


def tune(
    model_path: Path,
    target_name: str,
    trials: int,
    *,
    database: Path | None = None,
    per_task: int | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    device: Any = None,
    progress: Callable[[TaskProgress, int, int], None] | None = None,
) -> TuneResult:
    """Tune ``model_path``'s unscheduled functions for ``target_name`` with ``trials`` trials.

    ``device`` (a :class:`hwcomp.remote.DeviceAddress`) measures on a remote device, directly
    (``rpc://``) or through its tracker (``tracker://``), instead of locally. Ctrl-C ends the
    run early with the records kept.
    """
    started = time.perf_counter()
    require_tune_extra()
    target = load_target(target_name)
    check_cross_prefix(target)
    _check_request(target, trials, device)
    folder = Path(database) if database else default_database(target)
    folder.mkdir(parents=True, exist_ok=True)
    repair_database(folder)
    before = count_records(folder)

    light_tensor_intrin()
    # Local measurements run in child processes that read TVM's thread count when they start:
    # a parallel candidate timed on half the cores would be judged wrongly.
    use_physical_cores()
    from tvm.s_tir import meta_schedule as ms

    chosen, skipped = _tasks_to_tune(ms, prepare(model_path, target, input_shapes), target,
                                     model_path)
    _reset_metaschedule_logging()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted_tasks=chosen, work_dir=str(folder))
    _quiet_console()
    board = [TaskProgress(task.task_name) for task in chosen]
    signals = _StopSignal(folder)
    callback = _progress_callback(ms, board, progress, signals)
    runner = _runner(ms, device)
    builder = ms.builder.LocalBuilder(
        f_build=build_candidate, timeout_sec=BUILD_TIMEOUT_S, max_workers=1,
        f_export=_cross_export(target) if target.is_cross else None,
        initializer=stop.die_with_parent)
    database = ms.database.JSONDatabase(path_workload=str(folder / WORKLOADS),
                                        path_tuning_record=str(folder / RECORDS))
    interrupted = False
    defaults: list[str] = []
    try:
        signals.install()
        defaults = record_default_schedules(ms, chosen, target, builder, runner, database)
        signals.deferred = True
        if signals.received:
            raise KeyboardInterrupt
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(folder),
            max_trials_global=trials, max_trials_per_task=per_task or trials,
            num_trials_per_iter=min(64, max(2, per_task or trials)),
            builder=builder, runner=runner, database=database,
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), callback],
        )
    except (KeyboardInterrupt, RuntimeError):
        # A signal that arrives while TVM's C++ loop is calling back into Python comes back
        # out of TVM as a RuntimeError; the flag tells it from a real failure.
        if not signals.received:
            raise
        interrupted = True
        logger.warning("tuning interrupted: the records measured so far are kept in %s", folder)
    finally:
        signals.restore()
    repair_database(folder)
    return TuneResult(
        database=folder, tasks=board, trials=sum(t.trials for t in board),
        records_before=before, records_after=count_records(folder),
        seconds=time.perf_counter() - started, interrupted=interrupted, skipped=skipped,
        defaults=defaults)


def _check_request(target: Target, trials: int, device: Any) -> None:
    """Refuse a target tuning does not serve, a trial count below 1, a cross target here."""
    if not lowering_for(target).tunable:
        raise TuningError(f"target '{target.name}' ({target.family}): hwcomp tunes CPU "
                          f"targets ({', '.join(tunable_families())}) only")
    if trials < 1:
        raise TuningError("--trials must be at least 1")
    if target.is_cross and device is None:
        raise TuningError(
            f"target '{target.name}' is not this machine: tune on the device (run hwcomp "
            "device-server there, then hwcomp tune --rpc HOST:PORT, or --tracker HOST:PORT "
            "--key KEY for a device registered with a tracker)")


def _tasks_to_tune(ms: Any, mod: Any, target: Target, model_path: Path
                   ) -> tuple[list[Any], list[str]]:
    """MetaSchedule's tasks for ``mod``: those to tune, and the names of those skipped.

    hwcomp's own kernels arrive scheduled and are skipped; nothing left is an error.
    """
    chosen, skipped = [], []
    for task in ms.relax_integration.extract_tasks(mod, target.tvm()):
        funcs = [f for _, f in task.dispatched[0].functions_items()]
        if any("tirx.is_scheduled" in f.attrs for f in funcs if f.attrs is not None):
            skipped.append(task.task_name)
        else:
            chosen.append(task)
    if not chosen:
        raise TuningError(f"{model_path}: nothing to tune (every function runs on hwcomp's "
                          "scheduled kernels)")
    return chosen, skipped


def _reset_metaschedule_logging() -> None:
    """Drop handlers an earlier run in this process left on MetaSchedule's logger.

    MetaSchedule rebuilds its logging config from that logger's handlers by name on every
    run and fails on an unnamed one (a second ``tune`` in one process hits this).
    """
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(ms_logger.handlers):
        ms_logger.removeHandler(handler)
    ms_logger.setLevel(logging.INFO)


def _quiet_console() -> None:
    """Keep MetaSchedule's per-iteration tables out of stdout (they stay in ``<db>/logs``).

    hwcomp prints one progress line per measured batch instead; ``-vv`` shows the tables.
    """
    if logger.isEnabledFor(logging.DEBUG):
        return
    for handler in logging.getLogger("tvm.s_tir.meta_schedule").handlers:
        if (handler.get_name() or "").endswith(".console"):
            handler.setLevel(logging.WARNING)


class _StopSignal:
    """SIGINT/SIGTERM during tuning: remember it, then stop like Ctrl-C.

    While MetaSchedule's C++ loop runs (``deferred``), the handler only sets the flag: an
    exception raised in the middle of C++ code that calls back into Python can end in
    ``std::terminate``. The measure callback raises instead, after the batch's records are
    in the database. A batch can take minutes (64 candidates, each built and timed), so
    when the callback has not come within :data:`STOP_GRACE_S` the process ends there: every
    record committed so far is already on disk (a torn last line is repaired by the next
    run), and the workers are killed with it.
    """

    def __init__(self, folder: Path) -> None:
        self.received = False
        self.deferred = False
        self.previous: dict[int, Any] = {}
        self.folder = folder

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGINT, signal.SIGTERM):
            self.previous[number] = signal.signal(number, self._handle)

    def _handle(self, number: int, frame: Any) -> None:
        first = not self.received
        self.received = True
        stop.request(number)
        if not self.deferred:
            stop.handle(number, frame)  # raises, unless inside an import
            return
        if first:
            timer = threading.Timer(STOP_GRACE_S, self._end_now, args=(number,))
            timer.daemon = True
            timer.start()

    def _end_now(self, number: int) -> None:
        sys.stderr.write(f"hwcomp: tuning interrupted: the records measured so far are kept "
                         f"in {self.folder}\n")
        stop.end_process(128 + number)

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


# Seconds a stop waits for MetaSchedule's batch to end before the process ends without it.
STOP_GRACE_S = 5.0


def _runner(ms: Any, device: Any) -> Any:
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20,
                                          enable_cpu_cache_flush=False)
    if device is None:
        return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=evaluator,
                                     initializer=stop.die_with_parent)

    remote.connect(device)  # fail fast, with hwcomp's bounded errors
    # One session at a time: a device server serves one client, and parallel measurements
    # on one board would disturb each other.
    if device.kind == "rpc":

        return ms.runner.RPCRunner(
            rpc_config=direct_config(device.host, device.port, int(RUN_TIMEOUT_S)),
            evaluator_config=evaluator, max_workers=1, f_create_session=create_direct_session)
    config = ms.runner.RPCConfig(tracker_host=device.host, tracker_port=device.port,
                                 tracker_key=device.key, session_timeout_sec=int(RUN_TIMEOUT_S))
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)


def _cross_export(target: Target) -> Callable[[Any], str]:
    compiler = target.cross_compiler

    def export(module: Any) -> str:
        import tempfile

        from tvm.support import cc

        path = Path(tempfile.mkdtemp()) / "candidate.so"
        module.export_library(str(path), fcompile=cc.cross_compiler(compiler))
        return str(path)

    return export


def _progress_callback(ms: Any, board: list[TaskProgress],
                       progress: Callable[[TaskProgress, int, int], None] | None,
                       stop: _StopSignal) -> Any:
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):  # type: ignore[misc, name-defined]
        def apply(self, task_scheduler: Any, task_id: int, candidates: Any, builds: Any,
                  runs: Any) -> None:
            entry = board[task_id]
            for build, run in zip(builds, runs, strict=False):
                entry.trials += 1
                if build.error_msg or run.error_msg or not run.run_secs:
                    entry.errors += 1
                    continue
                seconds = sum(float(s) for s in run.run_secs) / len(run.run_secs)
                if entry.best_us is None or seconds * 1e6 < entry.best_us:
                    entry.best_us = seconds * 1e6
            if progress is not None:
                progress(entry, task_id, len(board))
            if stop.received:  # the database callbacks before this one kept the batch
                raise KeyboardInterrupt

    return Progress()
