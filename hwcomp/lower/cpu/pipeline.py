"""Hwcomp's CPU pipeline: TVM's Relax CPU pipeline with tuned and default schedules.

TVM's CPU pipeline legalises every Relax op to a TIR function with no schedule: one thread,
scalar loops. hwcomp's pipeline is TVM's CPU pipeline with two steps added after operator
fusion: the functions a MetaSchedule database (``hwcomp tune``) has records for get the tuned
schedule, and every function still without one gets hwcomp's default schedule rules
(:mod:`hwcomp.lower.cpu.rules`). hwcomp's own kernels arrive scheduled or are scheduled by
those rules. Convolutions and matmuls with constant weights reach this pipeline already
replaced by hwcomp's kernels (:mod:`hwcomp.lower.cpu.kernels.rewrite`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwcomp.lower.cpu.database import RECORDS, repair_database
from hwcomp.lower.cpu.fast_math import fast_math_pass
from hwcomp.lower.cpu.kernels.intrinsics import light_tensor_intrin
from hwcomp.lower.cpu.rules import default_rules
from hwcomp.targets import Target

logger = logging.getLogger(__name__)


@dataclass
class TunedCount:
    """What the pipeline did to the fused functions, filled in when it runs.

    Attributes:
        functions: How many the tuning database scheduled; None when none was applied.
        unscheduled: hwcomp kernels the default rule could not tile, each with why.

    """

    functions: int | None = None
    unscheduled: list[str] = field(default_factory=list)


def cpu_pipeline(target: Target, database: Path | None = None) -> tuple[Any, TunedCount]:
    """TVM's Relax CPU pipeline with tuned and default schedules after fusion.

    Functions with a record in the MetaSchedule ``database`` get the tuned schedule; the
    rest get :func:`~hwcomp.lower.cpu.rules.default_rules`. The returned count is filled in
    when the pipeline runs.
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.s_tir import dlight

    tvm_target = target.tvm()
    count = TunedCount()
    rules = default_rules(lanes=max(1, target.vector_bits // 32), cores=max(1, target.cores),
                          failures=count.unscheduled)
    tuned: list[Any] = []
    if database is not None and (Path(database) / RECORDS).is_file():
        repair_database(Path(database))
        light_tensor_intrin()
        with tvm_target:  # the pass reads the target when it is constructed
            tuned = [relax.transform.MetaScheduleApplyDatabase(str(database)), _count(count)]

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: Any, _ctx: Any) -> Any:
        with tvm_target:
            passes = [
                *fusion_passes(tvm_target),
                *tuned,
                dlight.ApplyDefaultSchedule(*rules),
                *cpu_generic.dataflow_lower_passes(tvm_target),
                *cpu_generic.finalize_passes(tvm_target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline, count


def fusion_passes(tvm_target: Any) -> list[Any]:
    """TVM's CPU passes up to fused TIR functions: what tuning sees and the schedules apply to.

    Before legalisation, exp/erf/tanh (and the ops built on them) become vectorisable
    polynomials (:mod:`hwcomp.lower.cpu.fast_math`).
    """
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    return [*cpu_generic.library_dispatch_passes(tvm_target), fast_math_pass(),
            *cpu_generic.legalize_passes(tvm_target)]


def _count(count: TunedCount) -> Any:
    """Return a no-op pass that counts the functions the database scheduled."""
    import tvm

    @tvm.transform.module_pass(opt_level=0)
    def count_tuned(mod: Any, _ctx: Any) -> Any:
        total = 0
        for gvar, func in mod.functions_items():
            attrs = getattr(func, "attrs", None)
            if (attrs is not None and "tirx.is_scheduled" in attrs
                    and not gvar.name_hint.startswith("hwcomp_kernel")):
                total += 1
        logger.info("tuning database: %d function(s) scheduled from records", total)
        count.functions = total
        return mod

    return count_tuned
