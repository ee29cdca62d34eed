"""One planner for pruning, low-rank splitting and precision (``--optimize``).

Each layer (precision, low-rank split) and each pruning unit (coupled channel group,
transformer FFN, attention block) is a *unit*; each unit has settings (fp32 / fp16 / int8
where the target runs them faster; ratios 25 / 50 / 75 % aligned to the target's channel
multiple; splits keeping 98 / 95 / 90 % of the singular-value energy where the split pays
on the target). The objective is the model's predicted
latency on the target (:func:`hwcomp.profile.estimate_model`: the target's measured latency
table, a fit on it, else the roofline; each layer's source is recorded), or its weight
bytes (``size``), or its peak activation bytes (``memory``). The constraint is an accuracy
budget measured with onnxruntime on held-out calibration samples against the *original*
model, after reconstruction of pruned layers, with the chosen precisions quantized exactly
as the build will (onnxruntime's calibrator and QDQ quantizer on the pruned model).

Search (a greedy on a Lagrangian ordering, chosen over an integer program because losses
do not add up across layers: errors compound, so an optimiser over additive costs would
still need whole-model checks, and each check is an onnxruntime run):

1. **Measured once per setting**: the loss of each (unit, setting) alone and the objective
   it saves alone (predicted). Settings that save nothing by the prediction are dropped:
   that is where a pruned model "isn't faster". A unit's ratios are tried mildest first and
   stop at the first over the budget.
2. **Order**: settings by saving per unit of loss (saving / (loss + a small floor)).
3. **Joint check**: the longest prefix of that order (each unit at its strongest setting in
   the prefix) within the budget, found by bisection on the measured joint loss, then the
   rest of the order tried one at a time (bounded), each kept only if the whole model stays
   within the budget.
4. The same search over pruning only and over precision only; every plan measured on the
   way is a candidate (the Pareto report), and the chosen plan is the best objective among
   candidates within the budget, so it is never worse by the prediction than either
   transformation alone. With ``--latency-budget`` the most accurate candidate meeting it
   is chosen instead; none meeting it fails with the best latency reached, writing nothing.
5. Where the caller can build and time bundles (a target this machine runs, or Cortex-M's
   emulated counts), the best few predicted plans are built and timed, and the fastest
   *measured* is chosen: the prediction's error (2-17 % on Cortex-M with a profiled table)
   exceeded the gap between close plans (``bench/RESULTS.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import onnx
import onnx_ir as ir

from hwcomp import model as model_io
from hwcomp import profile as latency
from hwcomp.analysis.cost import NodeCost, activation_memory, graph_cost
from hwcomp.compress import precision as quantize
from hwcomp.compress.judge import Judge
from hwcomp.compress.pipeline import compress_graph
from hwcomp.errors import BudgetError, OptionError
from hwcomp.irutil import static_shape
from hwcomp.lower import activation_dtype
from hwcomp.passes.prune_channels import prunable_units
from hwcomp.targets import Target
from hwcomp.verify import first_outputs

logger = logging.getLogger(__name__)

OBJECTIVES = ("latency", "size", "memory")
RATIOS = (0.25, 0.5, 0.75)
ENERGIES = (0.98, 0.95, 0.9)  # singular-value energy a split layer keeps, mildest first
MAX_FILL = 12  # joint checks after the bisection (step 3)
_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
# Ops whose output keeps the element type of their (first) input in a quantized pipeline.
_PASS_THROUGH = frozenset({"Relu", "Clip", "MaxPool", "Add", "Flatten", "Reshape", "Transpose",
                           "Concat", "Squeeze", "Unsqueeze", "GlobalAveragePool",
                           "AveragePool"})

Feeds = Sequence[Mapping[str, np.ndarray]]
# Builds a plan's bundle (ratios, precisions, ranks) and returns its measured or counted
# seconds (None where it cannot).
Measure = Callable[[Mapping[str, float], Mapping[str, str], Mapping[str, float]], "float | None"]


class PlanBudgetError(BudgetError):
    """No plan meets the latency budget within the accuracy budget."""


@dataclass(frozen=True)
class Costs:
    """A plan's predicted objective figures."""

    latency_s: float
    weight_bytes: int
    arena_bytes: int
    sources: dict[str, int]

    def value(self, objective: str) -> float:
        """Return the figure ``objective`` minimises."""
        return {"latency": self.latency_s, "size": float(self.weight_bytes),
                "memory": float(self.arena_bytes)}[objective]


@dataclass(frozen=True)
class Choice:
    """One plan's settings: ratio per pruning unit, energy per split layer, narrow precisions."""

    ratios: tuple[tuple[str, float], ...] = ()
    ranks: tuple[tuple[str, float], ...] = ()
    precisions: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, ratios: Mapping[str, float] | None = None, ranks: Mapping[str, float] | None = None,
           precisions: Mapping[str, str] | None = None) -> Choice:
        """Build from mappings (fp32 precisions dropped: they are the default)."""
        return cls(tuple(sorted((ratios or {}).items())), tuple(sorted((ranks or {}).items())),
                   tuple(sorted((k, v) for k, v in (precisions or {}).items() if v != "fp32")))

    @property
    def structure_key(self) -> tuple[Any, ...]:
        """Return what decides the graph's structure (pruning and splitting, not precision)."""
        return (self.ratios, self.ranks)


@dataclass
class Setting:
    """One unit at one setting, measured alone."""

    unit: str
    kind: str  # "prune", "rank" (energy kept) or "precision"
    value: float | str
    loss: float
    saving: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"unit": self.unit, "kind": self.kind, "value": self.value,
                "loss_alone": self.loss, "saving_alone": self.saving}


@dataclass
class Candidate:
    """One plan the search measured: its settings, loss and predicted costs."""

    label: str
    choice: Choice
    loss: float
    costs: Costs
    within: bool = False
    chosen: bool = False
    measured_s: float | None = None  # the candidate's bundle, built and timed (step 5)

    @property
    def ratios(self) -> dict[str, float]:
        """Return the pruning ratio per unit."""
        return dict(self.choice.ratios)

    @property
    def ranks(self) -> dict[str, float]:
        """Return the singular-value energy kept per split layer."""
        return dict(self.choice.ranks)

    @property
    def precisions(self) -> dict[str, str]:
        """Return the narrow precision per layer (the rest fp32)."""
        return dict(self.choice.precisions)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"label": self.label, "ratios": self.ratios, "ranks": self.ranks,
                "precisions": self.precisions,
                "loss": self.loss, "within_budget": self.within, "chosen": self.chosen,
                "measured_s": self.measured_s,
                "predicted_latency_s": self.costs.latency_s,
                "weight_bytes": self.costs.weight_bytes, "arena_bytes": self.costs.arena_bytes,
                "latency_sources": self.costs.sources}


@dataclass
class JointPlan:
    """The chosen per-unit settings, every candidate measured, and why."""

    objective: str
    metric: str
    budget: float
    latency_budget_s: float | None
    ratios: dict[str, float]
    ranks: dict[str, float]
    precisions: dict[str, str]
    loss: float
    costs: Costs
    baseline: Costs
    candidates: list[Candidate]
    settings: list[Setting]
    samples: int
    evaluations: int = 0
    decisions: list[str] = field(default_factory=list)
    measured: dict[str, Any] | None = None  # the built bundle's time, filled by build

    @property
    def speedup(self) -> float:
        """Return the predicted objective of fp32 over the plan's."""
        chosen = self.costs.value(self.objective)
        return self.baseline.value(self.objective) / chosen if chosen else math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's ``plan`` section)."""
        return {
            "objective": self.objective, "metric": self.metric, "budget": self.budget,
            "latency_budget_s": self.latency_budget_s, "loss": self.loss,
            "held_out_samples": self.samples,
            "ratios": self.ratios, "ranks": self.ranks,
            "precisions": {k: v for k, v in self.precisions.items() if v != "fp32"},
            "predicted": dataclasses.asdict(self.costs),
            "fp32": dataclasses.asdict(self.baseline),
            "predicted_gain": self.speedup, "measured": self.measured,
            "evaluations": self.evaluations, "decisions": self.decisions,
            "settings": [s.to_dict() for s in self.settings],
            "candidates": [c.to_dict() for c in self.candidates],
        }


def parse_latency_budget(text: str | float | None) -> float | None:
    """Read ``--latency-budget``: milliseconds (``5``, ``5ms``, ``800us``) -> seconds.

    Raises:
        OptionError: Not a positive time.
    """
    if text is None:
        return None
    raw = str(text).strip().lower()
    scale = 1e-3
    for suffix, factor in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if raw.endswith(suffix):
            raw, scale = raw[: -len(suffix)], factor
            break
    try:
        value = float(raw) * scale
    except ValueError:
        raise OptionError(f"--latency-budget '{text}' is not a time like 5ms or 800us") from None
    if not value > 0 or not math.isfinite(value):
        raise OptionError(f"--latency-budget {text} must be a positive time")
    return value


_T = TypeVar("_T")


class _Recent(Generic[_T]):
    """The ``size`` most recently stored values by key (a bounded cache)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[tuple[Any, ...], _T] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> _T | None:
        """Return the value stored under ``key`` (now the most recent), else None."""
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key: tuple[Any, ...], value: _T) -> None:
        """Store ``value``, forgetting the least recent beyond ``size``."""
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


class _Planner:
    """Measures plans: structure and reconstruction per ratio set, ranges, losses, costs."""

    def __init__(self, model: ir.Model, target: Target, objective: str, judge: Judge,
                 fit: Feeds, alignment: int, calibration: str) -> None:
        self.model, self.target, self.objective, self.judge = model, target, objective, judge
        self.fit, self.alignment, self.calibration = fit, alignment, calibration
        self.act_dtype = activation_dtype(target)
        self.names = {node.name for node in model.graph}
        self.evaluations = 0
        # Models are held for the last few ratio sets only (the search moves through them in
        # order): memory stays a few copies of the model whatever the number of candidates.
        self._structures: _Recent[ir.Model] = _Recent(4)
        self._fitted: _Recent[onnx.ModelProto] = _Recent(2)
        self._ranges: dict[tuple[Any, ...], dict[str, tuple[float, float]]] = {}
        self._losses: dict[Choice, float] = {}

    def structure(self, choice: Choice) -> ir.Model:
        """Return the pruned / split model without reconstruction (what costs read)."""
        key = choice.structure_key
        found = self._structures.get(key)
        if found is None:
            found = self._compress(choice, None)
            self._structures.put(key, found)
        return found

    def fitted(self, choice: Choice) -> onnx.ModelProto:
        """Return the pruned / split model with its layers reconstructed on the fit samples."""
        key = choice.structure_key
        found = self._fitted.get(key)
        if found is None:
            found = model_io.to_proto(self._compress(choice, self.fit))
            self._fitted.put(key, found)
        return found

    def _compress(self, choice: Choice, fit: Feeds | None) -> ir.Model:
        if not choice.ratios and not choice.ranks:
            return self.model
        return compress_graph(self.model, dict(choice.ratios), alignment=self.alignment,
                              lowrank=dict(choice.ranks) or None, target=self.target,
                              reconstruct_with=fit).model

    def ranges(self, choice: Choice) -> dict[str, tuple[float, float]]:
        """Return activation ranges of the reconstructed model (shared as the build does)."""
        key = choice.structure_key
        if key not in self._ranges:
            proto = self.fitted(choice)
            ranges = quantize.calibrate(proto, self.fit, self.calibration)
            quantize.share_ranges(proto, ranges)
            self._ranges[key] = ranges
        return self._ranges[key]

    def loss(self, choice: Choice) -> float:
        """Return the held-out loss of the plan against the original (measured once)."""
        if choice not in self._losses:
            self.evaluations += 1
            proto = self.fitted(choice)
            if choice.precisions:
                proto = quantize.quantize_model(proto, self.ranges(choice),
                                                dict(choice.precisions), self.act_dtype)
            self._losses[choice] = self.judge.loss(first_outputs(proto, self.judge.check))
        return self._losses[choice]

    def costs(self, choice: Choice) -> Costs:
        """Return the predicted latency, weight bytes and peak activation bytes of a plan."""
        structure = self.structure(choice)
        precisions = dict(choice.precisions)
        graph = graph_cost(structure)
        nodes = [_at_precision(n, precisions.get(n.name, "fp32")) for n in graph.nodes]
        saved = sum(old.weight_bytes - new.weight_bytes
                    for old, new in zip(graph.nodes, nodes, strict=True))
        restated = dataclasses.replace(graph, nodes=nodes)
        estimate = latency.estimate_model(structure, self.target, restated)
        sources: dict[str, int] = {}
        for layer in estimate.layers:
            if layer.time_s:
                sources[layer.source] = sources.get(layer.source, 0) + 1
        return Costs(latency_s=estimate.total_s, weight_bytes=graph.total_weight_bytes - saved,
                     arena_bytes=_arena_bytes(structure, precisions), sources=sources)


def plan_jointly(
    model: ir.Model, target: Target, objective: str, fit: Feeds, check: Feeds,
    labels: np.ndarray | None = None, *, accuracy_budget: float | None = None,
    min_sqnr_db: float = quantize.DEFAULT_MIN_SQNR_DB, latency_budget_s: float | None = None,
    with_precision: bool = True, calibration: str = "minmax",
    progress: Callable[[str], None] | None = None,
    measure: Measure | None = None, measure_top: int = 3,
) -> JointPlan:
    """Choose pruning ratios, low-rank splits and per-layer precisions for ``objective``.

    ``model`` is the original (cleaned and BN-folded here, as compression sees it);
    ``labels`` align with ``check``'s samples. Without ``accuracy_budget`` the budget is an
    output SQNR floor of ``min_sqnr_db`` against the original. ``with_precision`` False
    plans pruning only (``hwcomp compress`` writes a float model). ``measure`` (build a plan's
    bundle and return its measured or counted seconds, None where it cannot) times the
    ``measure_top`` fastest predicted plans within the budget, and the best of pruning,
    low-rank and precision alone, and the fastest measured is chosen (step 5).

    Raises:
        PlanBudgetError: ``latency_budget_s`` cannot be met within the accuracy budget.
    """
    if objective not in OBJECTIVES:
        raise OptionError(f"--optimize {objective!r} is not one of {', '.join(OBJECTIVES)}")
    say = progress or (lambda text: logger.info("plan: %s", text))
    base = compress_graph(model).model
    judge = Judge(base, check, labels, accuracy_budget, min_sqnr_db)
    alignment = int(target.channel_multiple.get("fp32", 1))
    planner = _Planner(base, target, objective, judge, fit, alignment, calibration)
    baseline = planner.costs(Choice())
    decisions = [f"objective: predicted {objective} on {target.name}; budget: {judge.metric} "
                 f"<= {judge.budget:g} on {model_io.sample_count(check)} held-out samples"]
    settings = _settings_alone(planner, base, with_precision, decisions, say)
    if not settings:
        decisions.append("no setting saves anything within the budget: the plan is fp32, "
                         "unpruned")
    candidates = [Candidate("fp32", Choice(), 0.0, baseline)]
    searches = {"joint": settings,
                "pruning only": [s for s in settings if s.kind == "prune"],
                "low-rank only": [s for s in settings if s.kind == "rank"],
                "precision only": [s for s in settings if s.kind == "precision"]}
    for name, pool in searches.items():
        if pool and (name == "joint" or len(pool) < len(settings)):
            say(f"searching ({name}, {len(pool)} settings)")
            candidates.extend(_search(planner, pool, name))
    for candidate in candidates:
        candidate.within = candidate.loss <= judge.budget
    chosen = _choose(candidates, objective, latency_budget_s, judge, decisions)
    if measure is not None and objective == "latency" and measure_top > 0:
        chosen = _measure_best(candidates, chosen, measure, measure_top, latency_budget_s,
                               decisions, say)
    chosen.chosen = True
    decisions.append(
        f"chosen: {chosen.label}: {judge.metric} {chosen.loss:.4g}; predicted latency "
        f"{baseline.latency_s * 1e3:.3f} -> {chosen.costs.latency_s * 1e3:.3f} ms, weights "
        f"{baseline.weight_bytes:,} -> {chosen.costs.weight_bytes:,} B, activations "
        f"{baseline.arena_bytes:,} -> {chosen.costs.arena_bytes:,} B")
    decisions.append(f"{planner.evaluations} whole-model evaluations in onnxruntime")
    return JointPlan(
        objective=objective, metric=judge.metric, budget=judge.budget,
        latency_budget_s=latency_budget_s, ratios=chosen.ratios, ranks=chosen.ranks,
        precisions=chosen.precisions, loss=chosen.loss, costs=chosen.costs,
        baseline=baseline, candidates=candidates, settings=settings,
        samples=model_io.sample_count(check), evaluations=planner.evaluations,
        decisions=decisions)


def _settings_alone(planner: _Planner, base: ir.Model, with_precision: bool,
                    decisions: list[str], say: Callable[[str], None]) -> list[Setting]:
    """Measure each unit's settings alone (step 1): loss and predicted saving."""
    objective, budget = planner.objective, planner.judge.budget
    reference = planner.costs(Choice()).value(objective)
    settings: list[Setting] = []
    units = prunable_units(base)
    for index, unit in enumerate(units):
        say(f"pruning alone: unit {index + 1} of {len(units)}")
        for ratio in RATIOS:
            found = _alone(planner, reference, Choice.of(ratios={unit: ratio}),
                           f"{unit}: {ratio:.0%}", decisions)
            if found is None:
                continue
            saving, loss = found
            if loss > budget:
                break  # a larger ratio costs more
            settings.append(Setting(unit, "prune", ratio, max(loss, 0.0), saving))
    layers = quantize.layer_candidates(base, planner.target)
    for index, layer in enumerate(layers):
        say(f"low-rank alone: layer {index + 1} of {len(layers)}")
        for energy in ENERGIES:
            choice = Choice.of(ranks={layer.name: energy})
            if not _splits(planner, choice):
                continue  # not split: full rank needed, or not faster on this target
            found = _alone(planner, reference, choice, f"{layer.name}: low-rank {energy:.0%}",
                           decisions)
            if found is None:
                continue
            saving, loss = found
            if loss > budget:
                break  # less energy costs more
            settings.append(Setting(layer.name, "rank", energy, max(loss, 0.0), saving))
    if not with_precision:
        return settings
    proto = model_io.to_proto(base)
    quantize.drop_unquantizable(layers, proto, planner.ranges(Choice()), planner.act_dtype,
                                decisions)
    for index, layer in enumerate(layers):
        say(f"precision alone: layer {index + 1} of {len(layers)}")
        for precision in ("int8", "fp16"):
            if precision not in layer.candidates:
                continue
            found = _alone(planner, reference, Choice.of(precisions={layer.name: precision}),
                           f"{layer.name}: {precision}", decisions)
            if found is not None and found[1] <= budget:
                settings.append(Setting(layer.name, "precision", precision, max(found[1], 0.0),
                                        found[0]))
    return settings


def _alone(planner: _Planner, reference: float, choice: Choice, what: str,
           decisions: list[str]) -> tuple[float, float] | None:
    """Return one setting's (saving, loss) alone; None when the prediction says it saves nothing.

    Both refusals are decisions; the caller keeps the setting only within the budget.
    """
    saving = reference - planner.costs(choice).value(planner.objective)
    if saving <= 0:
        decisions.append(f"{what} saves nothing by the prediction")
        return None
    loss = planner.loss(choice)
    if loss > planner.judge.budget:
        decisions.append(f"{what} alone costs {loss:.4g}, over the budget")
    return saving, loss


def _search(planner: _Planner, pool: list[Setting], name: str) -> list[Candidate]:
    """Run steps 2-3 on ``pool``; return every plan measured (one marked as the answer)."""
    budget = planner.judge.budget
    floor = max(budget, 1e-3) / (10 * max(len(pool), 1))
    order = sorted(pool, key=lambda s: -s.saving / (s.loss + floor))
    measured: dict[Choice, Candidate] = {}

    def plan(chosen: Sequence[Setting]) -> Candidate:
        ratios: dict[str, float] = {}
        ranks: dict[str, float] = {}
        precisions: dict[str, str] = {}
        for s in chosen:  # a unit takes its strongest setting among those chosen
            if s.kind == "prune":
                ratios[s.unit] = max(ratios.get(s.unit, 0.0), float(s.value))
            elif s.kind == "rank":
                if s.unit not in precisions:  # a layer is split or narrowed, not both
                    ranks[s.unit] = min(ranks.get(s.unit, 1.0), float(s.value))
            elif s.unit not in ranks and \
                    _BYTES[str(s.value)] < _BYTES[precisions.get(s.unit, "fp32")]:
                precisions[s.unit] = str(s.value)
        choice = Choice.of(ratios, ranks, precisions)
        if choice not in measured:
            measured[choice] = Candidate(f"{name}: {len(chosen)} of {len(order)} settings",
                                         choice, planner.loss(choice), planner.costs(choice))
        return measured[choice]

    low, high = 0, len(order)  # the prefix of length `low` is within the budget (0: fp32)
    if plan(order).loss <= budget:
        low = high
    while high - low > 1:
        middle = (low + high) // 2
        if plan(order[:middle]).loss <= budget:
            low = middle
        else:
            high = middle
    kept = list(order[:low])
    for setting in order[low:][:MAX_FILL]:
        if plan([*kept, setting]).loss <= budget:
            kept.append(setting)
    if kept:
        plan(kept).label = f"{name}: {len(kept)} of {len(order)} settings (the search's answer)"
    return list(measured.values())


def _measure_best(candidates: list[Candidate], predicted: Candidate, measure: Measure, top: int,
                  latency_budget_s: float | None, decisions: list[str],
                  say: Callable[[str], None]) -> Candidate:
    """Build and time the best predicted plans; return the fastest measured (step 5).

    The prediction ranks plans within its error (2-17 % on Cortex-M, more by the roofline);
    a build and a count or a timing settles the order where they are close.
    """
    within = sorted((c for c in candidates if c.within and c.label != "fp32"),
                    key=lambda c: (c.costs.latency_s, c.loss))
    if latency_budget_s is not None:
        within = [c for c in within if c.costs.latency_s <= latency_budget_s]
    pool = within[:top]
    for kind in ("pruning only", "low-rank only", "precision only"):
        best = next((c for c in within if c.label.startswith(kind)), None)
        if best is not None and best not in pool:
            pool.append(best)
    if predicted not in pool:
        pool.insert(0, predicted)
    for index, candidate in enumerate(pool):
        say(f"measuring plan {index + 1} of {len(pool)}")
        candidate.measured_s = measure(candidate.ratios, candidate.precisions, candidate.ranks)
    timed = [c for c in pool if c.measured_s is not None]
    if not timed:
        decisions.append("plans not timed here (the target does not run on this machine): "
                         "chosen by the prediction")
        return predicted
    if latency_budget_s is not None:
        meeting = [c for c in timed if c.measured_s is not None
                   and c.measured_s <= latency_budget_s]
        if not meeting:
            fastest = min(timed, key=lambda c: c.measured_s or math.inf)
            raise PlanBudgetError(
                f"--latency-budget {latency_budget_s * 1e3:g} ms is met by the prediction but "
                f"not by the built bundles: the fastest ({fastest.label}) takes "
                f"{(fastest.measured_s or 0) * 1e3:.3f} ms; relax a budget; nothing was written")
        best = min(meeting, key=lambda c: (c.loss, c.measured_s or math.inf))
    else:
        best = min(timed, key=lambda c: (c.measured_s or math.inf, c.loss))
    decisions.append(
        f"built and timed {len(timed)} plan(s): " + ", ".join(
            f"{c.label} {(c.measured_s or 0) * 1e3:.4f} ms (predicted "
            f"{c.costs.latency_s * 1e3:.4f})" for c in timed)
        + f"; chosen by measurement: {best.label}")
    return best


def _choose(candidates: list[Candidate], objective: str, latency_budget_s: float | None,
            judge: Judge, decisions: list[str]) -> Candidate:
    """Pick the plan (step 4); raise when the latency budget cannot be met."""
    within = [c for c in candidates if c.within]  # fp32 (loss 0) always is
    if latency_budget_s is None:
        return min(within, key=lambda c: (c.costs.value(objective), c.loss))
    meeting = [c for c in within if c.costs.latency_s <= latency_budget_s]
    if not meeting:
        best = min(within, key=lambda c: (c.costs.latency_s, c.loss))
        raise PlanBudgetError(
            f"--latency-budget {latency_budget_s * 1e3:g} ms cannot be met within the accuracy "
            f"budget: the fastest plan found ({best.label}) is predicted at "
            f"{best.costs.latency_s * 1e3:.3f} ms with {judge.metric} {best.loss:.4g} (budget "
            f"{judge.budget:g}); relax --accuracy-budget or the latency budget; nothing was "
            "written")
    decisions.append(f"--latency-budget {latency_budget_s * 1e3:g} ms: {len(meeting)} plan(s) "
                     "meet it; the most accurate is chosen")
    return min(meeting, key=lambda c: (c.loss, c.costs.value(objective)))


def _splits(planner: _Planner, choice: Choice) -> bool:
    """Say whether the choice's low-rank layers were split (the pass splits only what pays)."""
    return any(node.name not in planner.names for node in planner.structure(choice).graph)


def _at_precision(node: NodeCost, precision: str) -> NodeCost:
    """Restate a layer's cost at ``precision``: bytes shrink with the element size."""
    if precision == "fp32" or node.precision != "fp32":
        return node
    size = _BYTES[precision]
    return dataclasses.replace(node, precision=precision,
                               weight_bytes=node.weight_bytes * size // 4,
                               input_bytes=node.input_bytes * size // 4,
                               output_bytes=node.output_bytes * size // 4)


def _arena_bytes(model: ir.Model, precisions: Mapping[str, str]) -> int:
    """Peak live activation bytes, with each tensor at the element size it will have.

    A layer's output takes its precision's size; the ops a quantized pipeline runs on 8-bit
    or 16-bit data (activations, pooling, views, residual adds) keep their input's; the
    rest are fp32. An estimate of the bundle's arena, not its plan.
    """
    size: dict[int, int] = {}
    for node in model.graph:
        if node.op_type in quantize.QUANTIZED_OPS:
            name = node.name or (node.outputs[0].name if node.outputs else "") or ""
            element = _BYTES[precisions.get(name, "fp32")]
        elif node.op_type in _PASS_THROUGH:
            element = max((size.get(id(v), 4) for v in node.inputs
                           if v is not None and v.const_value is None), default=4)
        else:
            element = 4
        for value in node.outputs:
            size[id(value)] = element

    def nbytes(value: ir.Value) -> int:
        shape = static_shape(value)
        return 0 if shape is None else math.prod(shape) * size.get(id(value), 4)

    return activation_memory(model, nbytes)[0]
