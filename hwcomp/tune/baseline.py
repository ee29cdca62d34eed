"""hwcomp's default schedules as tuning records: tuning starts from them and never loses to them.

An untuned build runs hwcomp's default schedules (:mod:`hwcomp.lower.cpu.pipeline`), which can
beat what MetaSchedule finds in a small trial budget. Before searching, ``hwcomp tune``
measures each task's default schedule with the same builder and runner and commits it to the
database as an ordinary record (its trace replays the rule's steps). ``hwcomp build`` applies
the fastest record of each workload, so a tuned build is at least as fast as the untuned one
on every task, and the search's first generation can start from the default.
"""

from __future__ import annotations

import logging
from typing import Any

from hwcomp.lower.cpu.rules import default_rules, first_schedule
from hwcomp.targets import Target

logger = logging.getLogger(__name__)


def record_default_schedules(ms: Any, tasks: list[Any], target: Target, builder: Any,
                             runner: Any, database: Any) -> list[str]:
    """Measure and commit the default schedule of each of ``tasks``; return their names.

    A task whose default schedule does not build or run is skipped (and logged): the search
    still covers it.
    """
    tvm_target = target.tvm()
    rules = default_rules(lanes=max(1, target.vector_bits // 32), cores=max(1, target.cores))
    candidates = []
    for task in tasks:
        mod = task.dispatched[0]
        func = mod["main"]
        schedule = first_schedule(rules, func, tvm_target)
        if schedule is None:
            continue
        args = ms.arg_info.ArgInfo.from_prim_func(func)
        candidates.append((task.task_name, mod, schedule, args))
    if not candidates:
        return []
    built = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target)
                           for _, _, sch, _ in candidates])
    recorded = []
    for (name, mod, schedule, args), result in zip(candidates, built, strict=True):
        if result.error_msg:
            logger.info("default schedule of %s did not build: %s", name, result.error_msg[:200])
            continue
        # hwcomp tunes CPU targets only (x86, Arm): the device is the CPU, local or remote.
        [future] = runner.run([ms.runner.RunnerInput(result.artifact_path, device_type="cpu",
                                                     args_info=args)])
        measured = future.result()
        if measured.error_msg:
            logger.info("default schedule of %s did not run: %s", name, measured.error_msg[-300:])
            continue
        workload = database.commit_workload(mod)
        database.commit_tuning_record(ms.database.TuningRecord(
            schedule.trace, workload, measured.run_secs, tvm_target, args))
        recorded.append(name)
    logger.info("default schedules recorded for %d of %d task(s)", len(recorded), len(tasks))
    return recorded
