"""Default CPU schedules: what an untuned build runs instead of TVM's naive loops.

TVM's CPU pipeline legalises every Relax op to a TIR function with no schedule: one thread,
scalar loops. hwcomp's pipeline is TVM's CPU pipeline with one step added after operator
fusion, :class:`CpuDefault`, applied to every function that has no schedule yet (tuned
functions from a MetaSchedule database and hwcomp's own kernels carry one):

* blocks that can be inlined into their consumers are (one pass over memory per fused op);
* each remaining block's spatial loops are fused and split into
  ``[parallel tasks, vector lanes]`` — tasks across the profile's cores, lanes of the
  profile's vector width — with the reduction loops (if any) kept innermost and serial;
* a sliding-window reduction (depthwise convolution, pooling) gets
  :mod:`hwcomp.lower.cpu.rules.window` instead: padding apart, window taps outside, output
  pixels in vector lanes;
* a function whose blocks cannot be analysed is left as TVM made it.

Convolutions and matmuls with constant weights do not reach this rule: hwcomp replaces them
with its register-tiled kernels first (:mod:`hwcomp.lower.cpu.kernels`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hwcomp.lower.cpu.kernels.blocks import LAYOUT_BLOCK
from hwcomp.lower.cpu.kernels.spec import fma_spec
from hwcomp.lower.cpu.kernels.tiling import schedule_fused_kernel, tile_pixels_by_channels
from hwcomp.targets import Target

logger = logging.getLogger(__name__)

# Below this many iterations a parallel loop costs more in thread wake-ups than it saves.
_MIN_PARALLEL_WORK = 4096


def cpu_pipeline(target: Target, database: Path | None = None,
                 applied: dict[str, int] | None = None) -> Any:
    """TVM's Relax CPU pipeline with tuned and default schedules after fusion.

    Functions with a record in the MetaSchedule ``database`` (``hwcomp tune``) get the tuned
    schedule; the rest get :class:`CpuDefault`. ``applied`` receives the count of tuned
    functions under ``"tuned"``.
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.s_tir import dlight

    tvm_target = target.tvm()
    rule = default_rule(lanes=max(1, target.vector_bits // 32), cores=max(1, target.cores))
    tuned: list[Any] = []
    if database is not None and (Path(database) / "database_tuning_record.json").is_file():
        from hwcomp.tune.search import light_tensor_intrin, repair_database

        repair_database(Path(database))
        light_tensor_intrin()
        with tvm_target:  # the pass reads the target when it is constructed
            tuned = [relax.transform.MetaScheduleApplyDatabase(str(database)), _count(applied)]

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: Any, _ctx: Any) -> Any:
        with tvm_target:
            passes = [
                *fusion_passes(tvm_target),
                *tuned,
                dlight.ApplyDefaultSchedule(rule),
                *cpu_generic.dataflow_lower_passes(tvm_target),
                *cpu_generic.finalize_passes(tvm_target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def fusion_passes(tvm_target: Any) -> list[Any]:
    """TVM's CPU passes up to fused TIR functions: what tuning sees and the schedules apply to.

    Before legalisation, exp/erf/tanh (and the ops built on them) become vectorisable
    polynomials (:mod:`hwcomp.lower.cpu.fast_math`).
    """
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from hwcomp.lower.cpu.fast_math import fast_math_pass

    return [*cpu_generic.library_dispatch_passes(tvm_target), fast_math_pass(),
            *cpu_generic.legalize_passes(tvm_target)]


def _count(applied: dict[str, int] | None) -> Any:
    """Return a no-op pass that counts the functions the database scheduled."""
    import tvm

    @tvm.transform.module_pass(opt_level=0)
    def count(mod: Any, _ctx: Any) -> Any:
        total = 0
        for gvar, func in mod.functions_items():
            attrs = getattr(func, "attrs", None)
            if (attrs is not None and "tirx.is_scheduled" in attrs
                    and not gvar.name_hint.startswith("hwcomp_kernel")):
                total += 1
        logger.info("tuning database: %d function(s) scheduled from records", total)
        if applied is not None:
            applied["tuned"] = total
        return mod

    return count


def default_rule(lanes: int, cores: int) -> Any:
    """Hwcomp's default schedule rule for ``lanes`` fp32 vector lanes and ``cores`` cores.

    With one lane and one core (microcontrollers) it only inlines: no vector types, no
    threads.
    """
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import ScheduleRule, try_inline

    from hwcomp.lower.cpu.rules.window import schedule_window_reduction

    class CpuDefault(ScheduleRule):  # type: ignore[misc]
        """Inline, then parallel tasks x vector lanes over each block's spatial loops."""

        def apply(self, func: Any, tvm_target: Any, tunable: bool) -> Any:
            try:
                return _schedule(func)
            except Exception as exc:  # noqa: BLE001 - TVM raises many types; keep TVM's loops
                logger.debug("default schedule not applied: %s", exc)
                return None

    def _schedule(func: Any) -> Any:
        if lanes > 1:
            fused = s_tir.Schedule(func)
            if schedule_fused_kernel(fused, fma_spec(lanes)):
                return fused
            window = s_tir.Schedule(func)
            if schedule_window_reduction(window, lanes, cores):
                return window
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        layout = lanes > 1 and any(sch.get(info.block_rv).name_hint == LAYOUT_BLOCK
                                   for info in infos)
        infos = try_inline(sch, infos)
        if layout and _tile_layout_blocks(sch, infos, lanes):
            return sch
        if cores == 1 and lanes == 1:
            _fold_into_epilogue(sch, infos)
            return sch
        for info in infos:
            block = info.block_rv
            loops = sch.get_loops(block)
            kinds = info.dom_kind()
            if not loops or len(kinds) != len(loops) or "O" in kinds:
                continue
            spatial = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "S"]
            reduction = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "R"]
            if not spatial:
                continue
            sch.reorder(*spatial, *reduction)
            work = loops_product(sch, spatial) * max(1, loops_product(sch, reduction))
            # Vector lanes: the innermost spatial loop of an elementwise block, when it
            # divides into whole vectors (its index stays affine: no div/mod per element).
            if lanes > 1 and not reduction and loop_extent(sch, spatial[-1]) % lanes == 0:
                head, vector = sch.split(spatial[-1], [None, lanes])
                spatial = [*spatial[:-1], head]
                sch.vectorize(vector)
            # Parallel tasks: the fewest leading spatial loops that give every core work.
            if cores > 1 and work >= _MIN_PARALLEL_WORK:
                leading, count = [], 1
                for loop in spatial:
                    leading.append(loop)
                    count *= loop_extent(sch, loop)
                    if count >= 4 * cores:
                        break
                if count > 1:
                    sch.parallel(sch.fuse(*leading) if len(leading) > 1 else leading[0])
        return sch

    return CpuDefault()


def _tile_layout_blocks(sch: Any, infos: list[Any], lanes: int) -> bool:
    """Schedule a conv kernel's return to NCHW and the elementwise ops fused with it.

    Every block left after inlining must be spatial over ([n,] c, h, w); each gets the tiled
    order of :func:`hwcomp.lower.cpu.kernels.tiling.tile_pixels_by_channels`. Returns False (nothing
    changed) otherwise, e.g. when a reduction joined the fused function.
    """
    if not all(info.dom_kind() in ("SSS", "SSSS")
               and len(sch.get_loops(info.block_rv)) == len(info.dom_kind()) for info in infos):
        return False
    for info in infos:
        tile_pixels_by_channels(sch, info.block_rv, lanes)
    return True


def _fold_into_epilogue(sch: Any, infos: list[Any]) -> None:
    """Compute each reduction inside the loops of its elementwise consumer.

    A conv or matmul followed by bias/activation/residual-add leaves the reduction's whole
    output as a scratch buffer; computed per output element under the consumer's loops it
    shrinks to one value on the stack. For single-core targets without vectors, where the
    scratch would cost arena RAM and nothing is gained from a separate pass.
    """
    for info in infos:
        if not info.is_reduction():
            continue
        consumers = sch.get_consumers(info.block_rv)
        if len(consumers) != 1:
            continue
        loops = sch.get_loops(consumers[0])
        try:
            sch.compute_at(info.block_rv, loops[-1], preserve_unit_loops=True)
        except Exception as exc:  # noqa: BLE001 - not every consumer admits it; keep as is
            logger.debug("reduction kept separate: %s", exc)


def loop_extent(sch: Any, loop: Any) -> int:
    """Return a loop's constant extent (1 when it is not a constant)."""
    value = sch.get(loop).extent
    return int(value.value) if hasattr(value, "value") else 1


def loops_product(sch: Any, loops: list[Any]) -> int:
    """Return the product of the loops' extents."""
    total = 1
    for loop in loops:
        total *= loop_extent(sch, loop)
    return total
