"""The ``hwcomp`` command line: parse, call :mod:`hwcomp.api`, print. No logic here."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from hwcomp import api, bench, instructions, profile_schema, remote, report, stop
from hwcomp.analysis import sensitivity
from hwcomp.compress.distill import DistillOptions, EpochRecord
from hwcomp.compress.driver import CompressionOptions, CompressionOutcome
from hwcomp.compress.pipeline import parse_budget
from hwcomp.compress.planner import OBJECTIVES
from hwcomp.compress.precision import (
    CALIBRATION_METHODS,
    DEFAULT_MIN_SQNR_DB,
    PRECISION_CHOICES,
    PrecisionOptions,
)
from hwcomp.errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    HwcompError,
    OptionError,
    VerificationError,
)
from hwcomp.model import parse_input_shapes, parse_outputs
from hwcomp.native_log import NativeLog
from hwcomp.package import write_json
from hwcomp.passes.prune_channels import IMPORTANCE
from hwcomp.profile import COUNTED
from hwcomp.targets import CROSS_PREFIX_ENV, PRECISIONS, known_targets, load_target
from hwcomp.threads import use_physical_cores
from hwcomp.tune import search as tuning

# The log level flags, taken anywhere on the command line (`hwcomp build m.onnx -v` as
# well as `hwcomp -v build m.onnx`), up to a `--`.
_LOG_FLAGS = ("-v", "-vv", "-vvv", "--verbose", "-q", "--quiet")


class _Cli(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in _LOG_FLAGS]
        rest = [a for a in args[:end] if a not in _LOG_FLAGS] + args[end:]
        return super().parse_args(ctx, flags + rest)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hwcomp")
@click.option("-v", "--verbose", count=True,
              help="-v: steps, -vv: debug (before or after the command).")
@click.option("-q", "--quiet", is_flag=True, help="Errors only: no warnings.")
def cli(verbose: int, quiet: bool) -> None:
    """hwcomp: compile ONNX models into verified, hardware-specific bundles."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if quiet:
        level = logging.ERROR
    logging.basicConfig(level=level, format="hwcomp: %(message)s")
    # Library warnings (numpy's RuntimeWarnings and the like) go to the log, shown with -v:
    # an error stays one line.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)
    # Before any TVM code runs: its default is half the CPUs on x86 (hwcomp/threads.py).
    use_physical_cores()


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True,
              help="Print the profiles' figures as JSON (peak MAC/s and bytes/s unscaled).")
@click.pass_context
def targets(ctx: click.Context, as_json: bool) -> None:
    """List target profiles (or `targets show NAME` for one).

    Examples: `hwcomp targets`, `hwcomp targets --json`, `hwcomp targets show cortex-m7`.
    """
    if ctx.invoked_subcommand is not None:
        return
    profiles = [load_target(name) for name in known_targets()]
    if as_json:
        click.echo(json.dumps({"schema": "hwcomp.targets/1", "targets": [{
            "name": t.name, "family": t.family, "clock_hz": t.clock_hz, "cores": t.cores,
            "peak_macs_per_s": {p: t.peak_macs_per_s(p) for p in PRECISIONS},
            "int8_dot": t.int8_dot, "fp16_arith": t.fp16_arith,
            "dram_bandwidth_bytes_s": t.dram_bandwidth_bytes_s,
            "sram_bytes": t.sram_bytes, "flash_bytes": t.flash_bytes,
        } for t in profiles]}, indent=2))
        return
    rows = []
    for t in profiles:
        rows.append((
            t.name, t.family, f"{t.clock_hz / 1e9:.2f}", str(t.cores),
            *(_rate(t.peak_macs_per_s(p)) for p in PRECISIONS),
            "yes" if t.int8_dot else "no", "yes" if t.fp16_arith else "no",
            f"{t.dram_bandwidth_bytes_s / 1e9:.1f}",
        ))
    header = ("target", "family", "GHz", "cores", "MAC/s fp32", "fp16", "int8",
              "int8-dot", "fp16-arith", "GB/s")
    _table(header, rows)


def _rate(per_second: float) -> str:
    """Format a rate with its SI prefix: microcontrollers' millions beside GPUs' trillions."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if per_second >= scale:
            return f"{per_second / scale:.3g} {prefix}"
    return f"{per_second:.3g}"


@targets.command("schema")
def targets_schema() -> None:
    """Print every profile field with its type, unit and range (? marks optional ones)."""
    _table(("field", "type", "unit", "range", "meaning"), profile_schema.rows())


@targets.command("show")
@click.argument("name")
def targets_show(name: str) -> None:
    """Show one profile with the source of each number."""
    t = load_target(name)
    click.echo(f"{t.name}: {t.description}")
    fields = [
        ("family", t.family, "family"), ("runtime", t.runtime, "runtime"),
        ("tvm target", dict(t.tvm_target), "tvm_target.mcpu"),
        ("cross compiler", t.cross_compiler or "(host)", "cross_compiler"),
        ("clock (Hz)", f"{t.clock_hz:.4g}", "compute.clock_hz"),
        ("cores", t.cores, "compute.cores"),
        ("vector bits", t.vector_bits, "compute.vector_bits"),
        ("int8 dot product", t.int8_dot, "compute.int8_dot"),
        ("fp16 arithmetic", t.fp16_arith, "compute.fp16_arith"),
        *((f"MACs/cycle/core {p}", t.macs_per_cycle[p], f"compute.macs_per_cycle.{p}")
          for p in PRECISIONS),
        ("DRAM bandwidth (B/s)", f"{t.dram_bandwidth_bytes_s:.4g}", "memory.dram_bandwidth_bytes_s"),
        ("L1D bytes", t.l1d_bytes, "memory.l1d_bytes"),
        ("L2 bytes", t.l2_bytes, "memory.l2_bytes"),
        ("L3 bytes", t.l3_bytes, "memory.l3_bytes"),
        ("SRAM bytes", t.sram_bytes, "memory.sram_bytes"),
        ("flash bytes", t.flash_bytes, "memory.flash_bytes"),
        *((f"channel multiple {p}", v, f"channel_multiple.{p}")
          for p, v in t.channel_multiple.items()),
    ]
    _table(("field", "value", "source"),
           [(label, str(value), t.sources.get(key, "")) for label, value, key in fields])


def _complete_target(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    return [name for name in known_targets() if name.startswith(incomplete)]


def _set_cross_prefix(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:  # an environment variable: tuning's worker processes see it too
        os.environ[CROSS_PREFIX_ENV] = value


cross_prefix_option = click.option(
    "--cross-prefix", metavar="PREFIX", expose_value=False, is_eager=True,
    callback=_set_cross_prefix,
    help=f"Another toolchain for arm-* / cortex-m* targets: its programs' prefix, e.g. "
    f"/opt/gcc/bin/aarch64-none-linux-gnu- (the same as {CROSS_PREFIX_ENV}).")


def compression_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the compression options ``build`` and ``compress`` share (written once) to ``command``."""
    options = [
        click.option("--prune", help="Ratio in [0, 1) for every group, a JSON file of "
                     "{layer or group: ratio}, or auto (with --accuracy-budget)."),
        click.option("--importance", type=click.Choice(list(IMPORTANCE)), default="l1",
                     show_default=True,
                     help="How channels are ranked for --prune (activation: on --calib data)."),
        click.option("--lowrank", type=float, metavar="ENERGY",
                     help="Split Gemm/MatMul/Conv by SVD keeping this fraction of energy (0.9)."),
        click.option("--reconstruct/--no-reconstruct", default=True, show_default=True,
                     help="Refit changed layers by least squares on the calibration samples."),
        click.option("--accuracy-budget", metavar="1%",
                     help="With --prune auto (and --precision auto): the largest top-1 loss "
                          "allowed (each)."),
        click.option("--labels", type=click.Path(path_type=Path),
                     help=".npy of class labels for the --calib samples (budget in accuracy)."),
        click.option("--calib-random", type=int, default=0, metavar="N",
                     help="No --calib: plan --prune/--precision auto on N seeded random samples "
                          "anyway (judged on noise; said in the output and manifest)."),
        click.option("--optimize", type=click.Choice(list(OBJECTIVES)),
                     help="One planner chooses pruning ratios, low-rank splits and (build) "
                          "each layer's precision for the lowest predicted latency, weight "
                          "bytes or activation bytes under --accuracy-budget (else "
                          "--min-sqnr); every candidate in the manifest's plan and plan.html."),
        click.option("--latency-budget", metavar="5ms",
                     help="With --optimize: the most accurate plan predicted within this "
                          "time (ms, or 800us); none within the accuracy budget: exit 5."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_DISTILL_DEFAULTS = DistillOptions(data=Path())


def distill_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add ``--distill`` and its companions to ``command``, handed over as one ``distill``."""

    @functools.wraps(command)
    def wrapper(*args: Any, distill: Path | None, epochs: int | None,
                temperature: float | None, alpha: float | None, lr: float | None,
                batch: int | None, **kwargs: Any) -> None:
        given = {"--epochs": epochs, "--temperature": temperature, "--alpha": alpha,
                 "--lr": lr, "--batch": batch}
        options = None
        if distill is None:
            stray = [flag for flag, value in given.items() if value is not None]
            if stray:
                raise OptionError(f"{', '.join(stray)} tune(s) distillation: add --distill "
                                  "DATA.npz, or drop them")
        else:
            d = _DISTILL_DEFAULTS
            options = DistillOptions(
                data=distill, labels=kwargs.get("labels"),
                epochs=d.epochs if epochs is None else epochs,
                temperature=d.temperature if temperature is None else temperature,
                alpha=alpha, lr=lr,
                batch=d.batch if batch is None else batch, seed=kwargs.get("seed", 0))
        command(*args, distill=options, **kwargs)

    d = _DISTILL_DEFAULTS
    options = [
        click.option("--distill", type=click.Path(path_type=Path), metavar="DATA.npz",
                     help="Fine-tune the compressed model against the original on these "
                          "unlabelled samples (needs PyTorch: pip install 'hwcomp[train]'); "
                          "with --precision int8 on build, quantization-aware."),
        click.option("--epochs", type=int, help=f"--distill: most epochs [default: {d.epochs}; "
                     "stops early on the held-out loss]."),
        click.option("--temperature", type=float,
                     help=f"--distill: softening of the logits [default: {d.temperature:g}]."),
        click.option("--alpha", type=float, help="--distill with --labels: weight of the "
                     "distillation loss against cross-entropy [default: 0.9; 1 without labels]."),
        click.option("--lr", type=float, help="--distill: Adam learning rate [default: 1e-3; "
                     "1e-4 quantization-aware]."),
        click.option("--batch", type=int, help=f"--distill: samples per step [default: {d.batch}]."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


class _EpochProgress:
    """Distillation's progress bar on stderr: epoch, training loss, held-out loss and metric."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.text = ""

    def __call__(self, record: EpochRecord, epochs: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=epochs, label="distill (epochs)", file=sys.stderr,
                                         show_pos=True, show_eta=True,
                                         item_show_func=lambda _: self.text)
            self.bar.__enter__()
        metric = ""
        if record.accuracy is not None:
            metric = f", held-out accuracy {record.accuracy:.2%}"
        elif record.agreement is not None:
            metric = f", top-1 agreement {record.agreement:.2%}"
        self.text = (f"loss {record.train_loss:.4g}, held-out loss {record.held_out_loss:.4g}"
                     f"{metric}")
        self.bar.update(1, record)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _echo_distillation(outcome: CompressionOutcome) -> None:
    """Print what distillation did: epochs, held-out figures before and after, cost."""
    report = outcome.distillation
    if report is None:
        return
    b, a = report.before, report.after
    parts = [f"held-out loss {b.loss:.4g} -> {a.loss:.4g}"]
    if a.kl is not None and b.kl is not None:
        parts.append(f"KL vs teacher {b.kl:.4g} -> {a.kl:.4g}")
    if a.sqnr_db is not None and b.sqnr_db is not None:
        parts.append(f"SQNR {b.sqnr_db:.1f} -> {a.sqnr_db:.1f} dB")
    if a.agreement is not None and b.agreement is not None:
        parts.append(f"top-1 agreement {b.agreement:.2%} -> {a.agreement:.2%}")
    if a.accuracy is not None and b.accuracy is not None:
        parts.append(f"accuracy {b.accuracy:.2%} -> {a.accuracy:.2%} (teacher "
                     f"{a.teacher_accuracy:.2%})")
    kept = (f"best epoch {report.best_epoch}" if report.best_epoch else
            "no epoch beat the starting weights: kept them")
    click.echo(f"distilled: {report.epochs_run} epoch(s), {kept}; on {report.held_out} held-out "
               f"of {report.samples} samples: {', '.join(parts)}")
    click.echo(f"distilled: {report.seconds_per_epoch:.2f} s per epoch, peak memory "
               f"{report.peak_rss_mb:.0f} MB (process), {report.trained_tensors} weight "
               f"tensors trained")


@cli.command()
@cross_prefix_option
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", "target_name", shell_complete=_complete_target, required=True,
              help="Profile name (hwcomp targets).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("out"),
              show_default=True, help="Folder that receives <model>-<target>/.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Bind an input's dynamic dimensions (repeatable).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Inputs for verification: .npz keyed by input name, or a folder of .npy.")
@click.option("--tolerance", type=float, default=None,
              help="Largest allowed error relative to max(1, max |onnxruntime output|) "
                   f"[default: {api.DEFAULT_TOLERANCE:g}; {api.QUANTIZED_TOLERANCE:g} with "
                   "--precision]; quantized builds compare with onnxruntime running the QDQ model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of generated inputs.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--precision", type=click.Choice(list(PRECISION_CHOICES)), default="fp32",
              show_default=True,
              help="Layer precision: int8/fp16 where the target runs it, or auto (per layer, "
                   "under --accuracy-budget with --labels, else --min-sqnr).")
@click.option("--calib-method", type=click.Choice(list(CALIBRATION_METHODS)), default="minmax",
              show_default=True, help="onnxruntime calibrator for activation ranges.")
@click.option("--min-sqnr", type=float, default=DEFAULT_MIN_SQNR_DB, show_default=True,
              metavar="DB", help="--precision without --labels: output SQNR floor vs fp32.")
@click.option("--db", "tuning_db", type=click.Path(path_type=Path),
              help="MetaSchedule database from hwcomp tune [default: <cache>/tuning/<target>].")
@click.option("--no-tuning-db", is_flag=True, help="Ignore tuning records: default schedules only.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write a JSON summary (schema hwcomp-build/1: verification, "
                   "compression, precision, plan, memory, counts; the manifest has the rest).")
@click.option("--outputs", metavar="NAME,NAME",
              help="Compile (analyze) only up to these tensors: they become the outputs and "
                   "what follows them (NMS, decoding) is cut off.")
@click.option("--verify", "verify", type=click.Choice(list(api.VERIFY_WAYS)), default="auto",
              show_default=True,
              help="Where verification runs: host (this machine: natively, or the C of a "
                   "Cortex-M bundle), emulator (qemu), device (--device), skip; auto: the "
                   "family's usual way if this machine has it, else not run (said).")
@click.option("--device", "device", metavar="rpc://HOST:PORT",
              help="With --verify device: the device server (or tracker://HOST:PORT/KEY).")
@click.option("--measure-top", type=int, default=3, show_default=True, metavar="K",
              help="With --optimize: build and time (or count, on Cortex-M) the K best "
                   "predicted plans and keep the fastest measured; 0 trusts the prediction.")
@click.option("--io", "io", type=click.Choice(list(api.IO_KINDS)), default="float",
              show_default=True,
              help="quantized: an int8 build's inputs and outputs are its int8/uint8 tensors "
                   "(scale and zero point in the manifest and the Cortex-M header), not float.")
@compression_options
@distill_options
def build(model: Path, target_name: str, output: Path, input_shapes: tuple[str, ...],
          calib: Path | None, tolerance: float | None, seed: int, force: bool,
          precision: str, calib_method: str, min_sqnr: float, tuning_db: Path | None,
          no_tuning_db: bool, prune: str | None,
          lowrank: float | None, importance: str, accuracy_budget: str | None,
          labels: Path | None, reconstruct: bool, calib_random: int,
          distill: DistillOptions | None, outputs: str | None,
          json_path: Path | None, optimize: str | None, latency_budget: str | None,
          measure_top: int, verify: str, device: str | None, io: str) -> None:
    """Compile MODEL for a target into a bundle verified against onnxruntime.

    \b
    Examples:
      hwcomp build model.onnx -t arm-a72
      hwcomp build model.onnx -t cortex-m7 --precision int8 --calib calib.npz
          [--io quantized]
      hwcomp build model.onnx -t host --optimize latency --calib calib.npz
          --labels labels.npy --accuracy-budget 1% [--latency-budget 2ms]
    """
    options = CompressionOptions(prune=prune, importance=importance, lowrank=lowrank,
                                 reconstruct=reconstruct, accuracy_budget=accuracy_budget,
                                 labels=labels, calib=calib, seed=seed, calib_random=calib_random,
                                 distill=distill, optimize=optimize,
                                 latency_budget=latency_budget, min_sqnr_db=min_sqnr,
                                 measure_top=measure_top)
    precision_options = PrecisionOptions(
        precision=precision, calibration=calib_method, min_sqnr_db=min_sqnr, labels=labels,
        accuracy_budget=parse_budget(accuracy_budget), calib_random=calib_random, seed=seed)
    progress = _EpochProgress()
    try:
        result = api.build(
            model, target_name, output, input_shapes=parse_input_shapes(input_shapes),
            calib=calib, tolerance=tolerance, force=force, seed=seed,
            compression_options=options, precision_options=precision_options,
            tuning_db=tuning_db, use_tuning_db=not no_tuning_db, progress=progress,
            outputs=parse_outputs(outputs), verify=verify, device=device, io=io,
        )
    finally:
        progress.close()
    v = result.verification
    detail = v.reason or (
        f"max abs error {max((c.max_abs_error for c in v.outputs), default=0):.3g}, "
        f"tolerance {v.tolerance:g}"
    )
    _echo_transforms(result.manifest)
    click.echo(f"bundle: {result.bundle}")
    click.echo(f"target: {result.target.name} ({result.target.family})")
    click.echo(f"verification: {v.status} ({detail})")
    mcu = result.manifest.get("mcu")
    if mcu:
        lib, arena = mcu["library"], mcu["arena"]
        click.echo(f"memory: flash {lib['flash']} of {result.target.flash_bytes} bytes, RAM "
                   f"{lib['ram']} of {result.target.sram_bytes} (arena {arena['arena_bytes']}, "
                   f"lower bound {arena['lower_bound_bytes']}, stack {lib['stack']})")
    counts = result.manifest.get("layer_counts")
    if counts:
        ratio = counts["macs_per_instruction"]
        click.echo(f"instructions (emulated, counts not cycles): {counts['kernel_instructions']:,} "
                   f"in {len(counts['steps'])} kernel calls"
                   + (f", {ratio:.3f} MACs per instruction" if ratio else "")
                   + "; per layer: manifest.json layer_counts")
    click.echo(f"time: {result.seconds:.1f} s")
    if json_path:
        write_json(Path(json_path), _build_summary(result))
        click.echo(f"json: {json_path}")


def _build_summary(result: api.BuildResult) -> dict[str, Any]:
    """Return ``build --json``'s document: the manifest's figures a script reads."""
    manifest = result.manifest
    counts = manifest.get("layer_counts") or {}
    return {
        "schema": "hwcomp-build/1",
        "bundle": str(result.bundle),
        "target": {"name": result.target.name, "family": result.target.family},
        "verification": manifest.get("verification"),
        "cut": manifest.get("cut"),
        "compression": manifest.get("compression"),
        "precision": manifest.get("precision"),
        "plan": None if not manifest.get("plan") else {
            k: manifest["plan"][k] for k in ("objective", "metric", "budget", "loss", "ratios",
                                             "ranks", "precisions", "predicted", "fp32",
                                             "measured")},
        "memory": (manifest.get("mcu") or {}).get("library"),
        "instructions": None if not counts else {
            "kernel_instructions": counts.get("kernel_instructions"),
            "macs_per_instruction": counts.get("macs_per_instruction"),
            "unit": "emulated instructions (counts, not cycles)"},
        "seconds": round(result.seconds, 3),
        "manifest": str(result.bundle / "manifest.json"),
    }


def _echo_cut(cut: dict[str, Any] | None) -> None:
    """Print where ``--outputs`` cut the graph and what it removed."""
    if cut:
        removed = ", ".join(f"{n} {op}" for op, n in cut["removed_ops"].items()) or "nothing"
        click.echo(f"cut at: {', '.join(cut['outputs'])} ({cut['removed_nodes']} node(s) after "
                   f"them removed: {removed})")


def _echo_plan(plan: dict[str, Any] | None) -> None:
    """Print the joint plan's choice: its loss, prediction and the bundle's measured time."""
    if not plan:
        return
    fp32, chosen = plan["fp32"], plan["predicted"]
    click.echo(f"plan ({plan['objective']}): {len(plan['ratios'])} unit(s) pruned, "
               f"{len(plan['ranks'])} layer(s) split, "
               f"{len(plan['precisions'])} layer(s) narrowed; {plan['metric']} "
               f"{plan['loss']:.4g} (budget {plan['budget']:.4g}); "
               f"{len(plan['candidates'])} candidate plans, {plan['evaluations']} evaluations")
    measured = plan.get("measured") or {}
    beside = (f"; bundle {measured['source']} {measured['seconds'] * 1e3:.4f} ms"
              if measured.get("seconds") else f"; bundle {measured.get('source', 'not measured')}")
    click.echo(f"plan latency: predicted {fp32['latency_s'] * 1e3:.4f} ms fp32 -> "
               f"{chosen['latency_s'] * 1e3:.4f} ms{beside}; weights "
               f"{fp32['weight_bytes']:,} -> {chosen['weight_bytes']:,} B; report: plan.html")


def _echo_transforms(manifest: dict[str, Any]) -> None:
    """Print what compression, precision, tuning and the integer kernels did to a build."""
    _echo_cut(manifest.get("cut"))
    _echo_plan(manifest.get("plan"))
    compression = manifest.get("compression")
    if compression:
        sqnr = compression["sqnr_db"]
        click.echo(f"compressed: MACs {compression['macs_before']:,} -> {compression['macs_after']:,}, "
                   f"output SQNR vs original "
                   f"{'exact' if sqnr is None else f'{sqnr:.1f} dB'} on "
                   f"{compression['held_out_samples']} held-out samples")
        distilled = compression.get("distillation")
        if distilled:
            before = compression.get("sqnr_without_distillation_db")
            click.echo(f"distilled: {distilled['epochs_run']} epoch(s), best "
                       f"{distilled['best_epoch']}; held-out loss "
                       f"{distilled['before']['loss']:.4g} -> {distilled['after']['loss']:.4g}"
                       + (f"; SQNR before distillation {before:.1f} dB" if before else ""))
    plan = manifest.get("precision")
    if plan:
        counts = ", ".join(f"{n} {p}" for p, n in plan["counts"].items() if n)
        sqnr = "exact" if plan["sqnr_db"] is None else f"{plan['sqnr_db']:.1f} dB"
        accuracy = (f"top-1 {plan['accuracy']:.2%} vs fp32 {plan['fp32_accuracy']:.2%}"
                    if plan["accuracy"] is not None else f"SQNR {sqnr}")
        click.echo(f"precision ({plan['mode']}): {counts}; {accuracy} on "
                   f"{plan['held_out_samples']} held-out samples")
        qat = plan.get("qat")
        if qat:
            click.echo(f"quantization-aware: {qat['decision']}")
    tuned = manifest.get("tuning")
    if tuned:
        click.echo(f"tuning database: {tuned['functions_tuned']} function(s) from "
                   f"{tuned['records']} record(s) in {tuned['database']}")
    kernels = manifest.get("integer_kernels")
    if kernels:
        click.echo(f"integer kernels: {len(kernels['ops'])} op(s) on {kernels['instruction']}")
    if manifest.get("planned_on"):
        click.echo(f"planned on: {manifest['planned_on']}")


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", "target_name", shell_complete=_complete_target, required=True,
              help="Profile name (hwcomp targets).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Bind an input's dynamic dimensions (repeatable).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Calibration samples: .npz keyed by input name, or a folder of .npy.")
@click.option("--calib-random", type=int, default=0, metavar="N",
              help="Use N random samples instead (sensitivity is then unreliable).")
@click.option("--labels", type=click.Path(path_type=Path),
              help=".npy of class labels, one per calibration sample (adds accuracy).")
@click.option("--actions", default=",".join(sensitivity.ACTIONS), show_default=True,
              help="Sensitivity actions: int8, fp16, prune<P>, rank<P>.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--top", type=int, default=0, help="Show only the N layers with the largest estimate.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the JSON report.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write the HTML report.")
@click.option("--bundle", type=click.Path(path_type=Path),
              help="A bundle of MODEL for the target: add the instructions its build counted "
                   "per kernel call on the emulated board (Cortex-M).")
@click.option("--outputs", metavar="NAME,NAME",
              help="Compile (analyze) only up to these tensors: they become the outputs and "
                   "what follows them (NMS, decoding) is cut off.")
@click.option("--layers", "layers_view", type=click.Choice(["compiled", "onnx"]),
              default="compiled", show_default=True,
              help="compiled: as the build compiles them (BatchNorm folded into its conv, "
                   "activations and other elementwise ops fused into the layer before); onnx: "
                   "every node of the file.")
def analyze(model: Path, target_name: str, input_shapes: tuple[str, ...], calib: Path | None,
            calib_random: int, labels: Path | None, actions: str, jobs: int, top: int,
            json_path: Path | None, html_path: Path | None, bundle: Path | None,
            outputs: str | None, layers_view: str) -> None:
    """Per-layer cost, roofline estimate and compression sensitivity of MODEL.

    \b
    Examples:
      hwcomp analyze model.onnx -t arm-a72 --calib-random 8
      hwcomp analyze kws.onnx -t cortex-m7 --bundle out/kws-cortex-m7
    """
    chosen = tuple(a.strip() for a in actions.split(",") if a.strip())
    progress = _Progress("sensitivity (layers)")
    try:
        result = api.analyze(
            model, target_name, input_shapes=parse_input_shapes(input_shapes), calib=calib,
            calib_random=calib_random, labels=labels, actions=chosen, jobs=jobs,
            progress=progress, bundle=bundle, outputs=parse_outputs(outputs),
            layers=layers_view,
        )
    finally:
        progress.close()
    doc = report.to_json(result)
    _echo_cut(doc["cut"])
    layers = report.compiled_layers(doc["layers"])  # fused ops named in their layer's row
    if top:
        layers = sorted(layers, key=lambda layer: -layer["estimate"]["time_s"])[:top]
    sens_actions = doc["sensitivity"]["actions"] if doc["sensitivity"] else []
    counted = doc["counted"]
    header = ("layer", "op", "output", "MACs", "params", "bytes", "FLOP/B", "est us", "source",
              "bound",
              *(("instr.",) if counted else ()), *(f"{a} dB" for a in sens_actions))
    rows = []
    for layer in layers:
        cells = [layer["name"][:40], layer["op"], "x".join(map(str, layer["output_shape"])),
                 f"{layer['macs']:,}", f"{layer['params']:,}", f"{layer['memory_bytes']:,}",
                 f"{layer['intensity']:.1f}", f"{layer['estimate']['time_s'] * 1e6:.1f}",
                 layer["estimate"]["source"], layer["estimate"]["bound"]]
        if counted:
            cells.append("" if layer["instructions"] is None else f"{layer['instructions']:,}")
        for action in sens_actions:
            entry = (layer["sensitivity"] or {}).get(action)
            cells.append("" if entry is None else "exact" if entry["exact"]
                         else f"{entry['sqnr_db']:.1f}")
        rows.append(tuple(cells))
    _table(header, rows)
    totals = doc["totals"]
    click.echo(
        f"\ntotal: {totals['macs'] / 1e9:.3f} GMACs, {totals['params'] / 1e6:.2f} M params "
        f"({totals['weight_bytes'] / 1e6:.2f} MB), peak activations "
        f"{totals['peak_activation_bytes'] / 1e6:.2f} MB{report.memory_fit(result.target, totals)}, "
        "estimated "
        f"{totals['estimated_time_s'] * 1e3:.3f} ms on {result.target.name}"
        + _sources(doc["layers"])
    )
    view = doc["layers_view"]
    if view["kind"] == "compiled" and (view["folded_batchnorms"] or view["fused_ops"]):
        click.echo(f"layers as compiled: {view['folded_batchnorms']} BatchNormalization folded "
                   f"into their conv / matmul, {view['fused_ops']} elementwise op(s) run in the "
                   "kernel of the layer before (--layers onnx lists every node)")
    if doc["sensitivity"]:
        info = doc["sensitivity"]
        click.echo(f"sensitivity: {info['samples']} samples, {info['seconds']:.1f} s"
                   + (", RANDOM calibration data (unreliable)" if info["random_calibration"] else "")
                   + (f", baseline accuracy {info['baseline_accuracy']:.4f}"
                      if info["baseline_accuracy"] is not None else ""))
    if counted:
        _echo_counted(counted)
    if json_path:
        write_json(json_path, doc)
        click.echo(f"json: {json_path}")
    if html_path:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(report.to_html(result))
        click.echo(f"html: {html_path}")


def _sources(layers: list[dict[str, Any]]) -> str:
    """'' when every estimate is the roofline's; else how many layers were measured, predicted."""
    found = {source: sum(layer["estimate"]["source"] == source for layer in layers)
             for source in ("measured", "predicted", "fused")}
    if not found["measured"] and not found["predicted"]:
        return ""  # fused alone: the layers as compiled, said on their own line
    return (f" ({found['measured']} layer(s) measured, {found['predicted']} predicted from "
            f"hwcomp profile's latency table, {found['fused']} fused into them, the rest "
            "roofline)")


def _echo_counted(counted: dict[str, Any]) -> None:
    """Print the kernel calls a bundle's build counted (``analyze --bundle``)."""
    ratio = counted["macs_per_instruction"]
    click.echo(f"\ncounted in {counted['bundle']} (EMULATED INSTRUCTIONS, NOT CYCLES): "
               f"{counted['kernel_instructions']:,} in {len(counted['steps'])} kernel calls"
               + (f", {ratio:.3f} MACs per instruction" if ratio else "")
               + ("" if counted["layers_matched"] else
                  "; the layer kernels do not match the model's layers one to one"))
    live = counted.get("arena_live_bytes_by_step") or []
    _table(("step", "kernel", "instructions", "MACs", "MACs/instr.",
            *(("arena live",) if live else ())),
           [(str(s["step"]), _shorten(s["kernel"], 60), f"{s['instructions']:,}",
             f"{s['macs']:,}" if s["macs"] else "",
             f"{s['macs_per_instruction']:.3f}" if s["macs_per_instruction"] else "",
             *((f"{live[s['step']]:,}" if s["step"] < len(live) else "",) if live else ()))
            for s in counted["steps"]])
    if live and counted.get("arena_bytes"):
        click.echo(f"arena: {counted['arena_bytes']:,} bytes; most live at one kernel call "
                   f"{max(live):,} (step {live.index(max(live))})")


@cli.command("profile")
@cross_prefix_option
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-t", "--target", "target_name", shell_complete=_complete_target,
              help="Profile name, to build a MODEL first (a bundle names its own).")
@click.option("--runs", type=int, default=20, show_default=True,
              help="Inferences to take each kernel's median over (measured targets).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Bind an input's dynamic dimensions (repeatable).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Inputs for the build (and its int8 calibration with --precision int8).")
@click.option("--precision", type=click.Choice(list(PRECISION_CHOICES)), default="fp32",
              show_default=True, help="Layer precision of the build.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the profile.")
def profile_command(path: Path, target_name: str | None, runs: int, input_shapes: tuple[str, ...],
                    calib: Path | None, precision: str, json_path: Path | None) -> None:
    """Time each kernel of a bundle on the target (or count it, on Cortex-M).

    PATH is a bundle folder, or a MODEL to build for --target first (in a temporary
    folder). Each kernel's time goes into the target's latency table in hwcomp's cache,
    keyed by the kernel's ops and argument shapes.

    \b
    Examples:
      hwcomp profile out/resnet-host
      hwcomp profile kws.onnx -t cortex-m7 --precision int8 --calib calib.npz
    """
    if runs < 1:
        raise OptionError("--runs must be at least 1")
    found, estimate = api.profile(
        path, target_name, runs=runs, input_shapes=parse_input_shapes(input_shapes),
        calib=calib, precision_options=PrecisionOptions(precision=precision))
    click.echo(f"bundle: {found.bundle} ({found.target})")
    click.echo(found.method)
    total = found.kernels_s or 1.0
    counted = found.source == COUNTED
    rows = []
    for k in sorted(found.kernels, key=lambda k: -k.seconds):
        rate = (f"{k.macs / k.instructions:.3f}" if counted and k.macs and k.instructions
                else f"{k.macs / k.seconds / 1e9:.2f}" if k.macs and k.seconds else "")
        rows.append((_shorten(k.kernel, 60), str(k.calls), f"{k.seconds * 1e6:,.1f}",
                     f"{100 * k.seconds / total:.1f}%",
                     f"{k.instructions:,}" if counted else "", f"{k.macs:,}" if k.macs else "",
                     rate))
    _table(("kernel", "calls", "us / inference", "share", "instructions" if counted else "",
            "MACs", "MACs/instr." if counted else "GMAC/s"), rows)
    click.echo(f"kernels: {found.kernels_s * 1e3:.3f} ms"
               + (f", VM overhead {found.overhead_s * 1e3:.3f} ms" if found.overhead_s else "")
               + (f", whole inference {found.whole_s * 1e3:.3f} ms (no hook)"
                  if found.whole_s else "")
               + f"; roofline estimate {estimate * 1e3:.3f} ms (hwcomp analyze)")
    for note in found.notes:
        click.echo(f"note: {note}")
    click.echo(f"latency table: {found.table}")
    if json_path:
        json_path.write_text(found.to_json() + "\n")
        click.echo(f"json: {json_path}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--model", "original", type=click.Path(path_type=Path),
              help="The original ONNX model: also compare the bundle's (compressed, quantized) "
                   "graph with it, tensor by tensor.")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Inputs to compare on (.npz by input name; the first batch) [default: seeded].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of generated inputs.")
@click.option("--tolerance", type=float,
              help="Compiled vs onnxruntime, relative to max(1, max |tensor|) [default: the "
                   "bundle's verification tolerance].")
@click.option("--graph-tolerance", type=float, default=0.05, show_default=True,
              help="Bundle graph vs original (compression changes values on purpose).")
@click.option("--all", "show_all", is_flag=True, help="Print every tensor, not only the worst.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the JSON report.")
def validate(bundle: Path, original: Path | None, calib: Path | None, seed: int,
             tolerance: float | None, graph_tolerance: float, show_all: bool,
             json_path: Path | None) -> None:
    """Compare a bundle layer by layer and name the first tensor that diverges.

    Compiles the bundle's graph again with every intermediate tensor kept and compares each
    with onnxruntime; with --model, also the bundle's graph with the original model's
    tensors. Exit 6 when the compiled graph diverges.

    \b
    Examples:
      hwcomp validate out/model-host --calib calib.npz
      hwcomp validate out/kws-cortex-m7 --model kws.onnx --calib calib.npz --json v.json
    """
    from hwcomp import validate as checks

    inputs, label = checks.bundle_inputs(bundle, calib, seed)
    result = checks.validate(bundle, inputs, label, tolerance, original, graph_tolerance)
    for comparison in result.comparisons:
        click.echo(f"{comparison.name} (reference: {comparison.reference}; inputs: "
                   f"{result.inputs}; tolerance {comparison.tolerance:g})")
        if comparison.note and not comparison.tensors:
            click.echo(f"  {comparison.note}")
            continue
        first = comparison.first_divergent
        rows = comparison.tensors if show_all else sorted(
            comparison.tensors, key=lambda t: -t.rel_l2)[:10]
        if not show_all:
            rows = sorted(rows, key=comparison.tensors.index)
        _table(("tensor", "op", "shape", "max abs", "rel L2", "cosine", "SQNR dB", ""),
               [(t.tensor[:48], t.op, "x".join(map(str, t.shape)), f"{t.max_abs:.3g}",
                 f"{t.rel_l2:.3g}", f"{t.cosine:.6f}",
                 "exact" if t.sqnr_db is None else f"{t.sqnr_db:.1f}",
                 "" if t.within else "BEYOND") for t in rows])
        shown = "" if show_all else f" (the {len(rows)} worst of {len(comparison.tensors)}; --all)"
        click.echo(f"  {len(comparison.tensors)} tensor(s) compared{shown}"
                   + (f", {comparison.skipped} not" if comparison.skipped else ""))
        click.echo(f"  first divergent: {first.tensor} ({first.op}), max abs {first.max_abs:.3g}"
                   if first else "  first divergent: none, every tensor within tolerance")
    if json_path:
        write_json(Path(json_path), result.to_dict())
        click.echo(f"json: {json_path}")
    if result.comparisons and result.comparisons[0].first_divergent is not None:
        raise VerificationError(
            f"{bundle}: the compiled graph diverges from onnxruntime first at tensor "
            f"'{result.comparisons[0].first_divergent.tensor}'")


@cli.command("compress")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The compressed ONNX file to write.")
@click.option("-t", "--target", "target_name", shell_complete=_complete_target, required=True,
              help="Profile whose channel alignment kept counts round to.")
@compression_options
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Bind an input's dynamic dimensions (repeatable).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Samples to compare original and compressed outputs on.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of random samples and of --distill (split, order, PyTorch).")
@click.option("--plan-report", type=click.Path(path_type=Path), metavar="FILE.html",
              help="With --optimize: write the plan's Pareto report (every candidate plan).")
@click.option("--outputs", metavar="NAME,NAME",
              help="Compile (analyze) only up to these tensors: they become the outputs and "
                   "what follows them (NMS, decoding) is cut off.")
@distill_options
def compress_command(model: Path, output: Path, target_name: str, prune: str | None,
                     importance: str, lowrank: float | None, reconstruct: bool,
                     accuracy_budget: str | None, labels: Path | None,
                     input_shapes: tuple[str, ...], calib: Path | None, force: bool,
                     calib_random: int, seed: int, distill: DistillOptions | None,
                     outputs: str | None, optimize: str | None, latency_budget: str | None,
                     plan_report: Path | None) -> None:
    """Fold BatchNorm, prune coupled channel groups, split low-rank: smaller ONNX out.

    With --distill, the result is fine-tuned against MODEL on those samples (PyTorch).

    \b
    Examples:
      hwcomp compress model.onnx -o small.onnx -t arm-a72 --prune 0.5 --calib calib.npz
      hwcomp compress model.onnx -o small.onnx -t host --prune auto --accuracy-budget 1%
          --calib calib.npz --labels labels.npy
      hwcomp compress model.onnx -o small.onnx -t host --optimize latency --calib calib.npz
    """
    options = CompressionOptions(prune=prune, importance=importance, lowrank=lowrank,
                                 reconstruct=reconstruct, accuracy_budget=accuracy_budget,
                                 labels=labels, calib=calib, calib_random=calib_random,
                                 seed=seed, distill=distill, optimize=optimize,
                                 latency_budget=latency_budget)
    if plan_report is not None and optimize is None:
        raise OptionError("--plan-report writes the --optimize planner's report: add --optimize")
    progress = _EpochProgress()
    try:
        outcome = api.compress(model, output, target_name, options,
                               input_shapes=parse_input_shapes(input_shapes), force=force,
                               progress=progress, outputs=parse_outputs(outputs))
    finally:
        progress.close()
    result = outcome.result
    click.echo("steps: " + ", ".join(f"{s.name}{'*' if s.modified else ''}" for s in result.steps)
               + "   (* changed the model)")
    click.echo(f"batchnorm: {len(result.batchnorm.folded)} folded, "
               f"{len(result.batchnorm.skipped)} kept")
    if outcome.plan is not None:
        for decision in outcome.plan.decisions:
            click.echo(f"plan: {decision}")
        click.echo(f"plan: {outcome.plan.metric} {outcome.plan.loss:.4f} "
                   f"(budget {outcome.plan.budget:.4f})")
        if plan_report is not None:
            report.render_plan_report(Path(plan_report), outcome.plan.to_dict(), model.name,
                               target_name)
            click.echo(f"plan report: {plan_report}")
    pruning = result.pruning
    if pruning is not None:
        rows = [(g.group[:60], str(g.before), str(g.after), f"{g.ratio:.2f}") for g in pruning.groups]
        if rows:
            _table(("channel group (source layers)", "channels", "kept", "ratio"), rows)
        else:
            click.echo("nothing prunable: every layer's channels are frozen (see below)")
        for layer, reason in sorted(pruning.frozen_layers.items()):
            click.echo(f"frozen: {layer}: {reason}")
    if result.lowrank is not None:
        for split in result.lowrank.split:
            click.echo(f"split: {split.layer}: {split.mode} SVD, rank {split.rank} of "
                       f"{split.full_rank}, estimated {split.time_before_s * 1e6:.1f} -> "
                       f"{split.time_after_s * 1e6:.1f} us")
        for layer, reason in sorted(result.lowrank.skipped.items()):
            click.echo(f"not split: {layer}: {reason}")
    if result.reconstruction is not None:
        for fit in result.reconstruction.fitted:
            where = "held-out" if fit.held_out else "fitting samples"
            verdict = "" if fit.kept else "; not kept (no better on held-out samples)"
            click.echo(f"refit: {fit.layer}: relative error {fit.error_before:.4f} -> "
                       f"{fit.error_after:.4f} ({where}){verdict}")
        for layer, reason in sorted(result.reconstruction.skipped.items()):
            click.echo(f"not refit: {layer}: {reason}")
    change = 1 - outcome.macs_after / outcome.macs_before if outcome.macs_before else 0.0
    click.echo(f"MACs: {outcome.macs_before:,} -> {outcome.macs_after:,} (-{change:.1%}); "
               f"params: {outcome.params_before:,} -> {outcome.params_after:,}")
    sqnr = "exact" if outcome.sqnr_db is None else f"{outcome.sqnr_db:.1f} dB"
    agreement = (f", top-1 agreement {outcome.top1_agreement:.3f}"
                 if outcome.top1_agreement is not None else "")
    unfitted = ""
    if outcome.sqnr_without_reconstruction_db is not None:
        unfitted = f" (without reconstruction: {outcome.sqnr_without_reconstruction_db:.1f} dB)"
    if outcome.sqnr_without_distillation_db is not None:
        unfitted += f" (before distillation: {outcome.sqnr_without_distillation_db:.1f} dB)"
    click.echo(f"vs original on {outcome.samples} held-out samples ({outcome.calibration}): "
               f"SQNR {sqnr}{unfitted}, "
               f"cosine {outcome.cosine:.4f}{agreement}")
    _echo_distillation(outcome)
    click.echo(f"wrote: {output}")


@cli.command()
@cross_prefix_option
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", "target_name", shell_complete=_complete_target, required=True,
              help="Profile name (hwcomp targets).")
@click.option("--trials", type=int, default=200, show_default=True, help="Trials in all.")
@click.option("--per-task", type=int, help="Most trials for one task [default: --trials].")
@click.option("--db", "database", type=click.Path(path_type=Path),
              help="Database folder [default: <cache>/tuning/<target>].")
@click.option("--device", default="local", show_default=True,
              help="local, rpc://HOST:PORT or tracker://HOST:PORT/KEY to measure on a device.")
@click.option("--rpc", "rpc_server", metavar="HOST:PORT",
              help="Measure on this device server (same as --device rpc://HOST:PORT).")
@click.option("--tracker", metavar="HOST:PORT",
              help="Measure on a device of this tracker (with --key).")
@click.option("--key", default="", help="Device key at the tracker (with --tracker).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Bind an input's dynamic dimensions (repeatable).")
def tune(model: Path, target_name: str, trials: int, per_task: int | None,
         database: Path | None, device: str, rpc_server: str | None, tracker: str | None,
         key: str, input_shapes: tuple[str, ...]) -> None:
    """Tune MODEL's kernels for a target with MetaSchedule; hwcomp build reuses the records.

    \b
    Examples:
      hwcomp tune model.onnx -t host --trials 64
      hwcomp tune model.onnx -t arm-a72 --trials 64 --rpc pi.local:9190
    """
    if sum(bool(x) for x in (device != "local", rpc_server, tracker)) > 1:
        raise click.UsageError("give one of --device, --rpc and --tracker")
    if tracker and not key:
        raise click.UsageError("--tracker needs --key (the device type, e.g. pi4)")
    if rpc_server:
        device = f"rpc://{rpc_server}"
    elif tracker:
        device = f"tracker://{tracker}/{key}"
    address = None if device == "local" else remote.parse_device(device)

    def show(task: tuning.TaskProgress, index: int, count: int) -> None:
        best = "-" if task.best_us is None else f"{task.best_us:.1f} us"
        click.echo(f"task {index + 1}/{count} {task.name}: {task.trials} trials "
                   f"({task.errors} failed), best {best}", err=True)

    result = tuning.tune(model, target_name, trials, database=database, per_task=per_task,
                         input_shapes=parse_input_shapes(input_shapes), device=address,
                         progress=show)
    state = "interrupted; kept" if result.interrupted else "done;"
    click.echo(f"tuning {state} {result.trials} trials over {len(result.tasks)} task(s) in "
               f"{result.seconds:.0f} s ({len(result.skipped)} on hwcomp kernels, not tuned; "
               f"hwcomp's default schedule recorded for {len(result.defaults)})")
    click.echo(f"database: {result.database} ({result.records_before} -> "
               f"{result.records_after} records)")
    if result.interrupted:
        _NATIVE_LOG.finish(failed=False)
        stop.end_process(stop.exit_code())


@cli.command("bench")
@cross_prefix_option
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--device", default="local", show_default=True,
              help="local (ARM bundles run under qemu, labelled emulated), rpc://HOST:PORT "
              "or tracker://HOST:PORT/KEY.")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="Untimed runs first  [default: 5; 2 with --count-instructions].")
@click.option("--repeat", type=click.IntRange(min=1), default=None,
              help="Timed measurements  [default: 50; counted runs with "
              "--count-instructions: 1].")
@click.option("--number", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs per measurement (their mean is one measurement).")
@click.option("--threads", type=int, default=0, help="Threads for TVM and onnxruntime (0: all).")
@click.option("--compare-ort", is_flag=True,
              help="Time onnxruntime on the same model and inputs, alternating with the "
              "bundle in rounds; the ratio is the median of the rounds' ratios. With "
              "--count-instructions: count onnxruntime's instructions (its aarch64 build for "
              "Arm bundles).")
@click.option("--count-instructions", is_flag=True,
              help="Count the instructions executed per inference under qemu (Arm bundles: "
              "the target's CPU model; host bundles: qemu-x86_64), one thread, instead of "
              "timing. Deterministic; counts, not times.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the result.")
def bench_command(bundle: Path, device: str, warmup: int | None, repeat: int | None, number: int,
                  threads: int, compare_ort: bool, count_instructions: bool,
                  json_path: Path | None) -> None:
    """Measure a bundle's latency (min, mean, median, p90, p99, std), or count its instructions.

    \b
    Examples:
      hwcomp bench out/model-host --compare-ort
      hwcomp bench out/model-arm-a72 --device rpc://pi.local:9190
      hwcomp bench out/model-arm-a72 --count-instructions --compare-ort
    """
    if count_instructions:
        if device != "local":
            raise OptionError("--count-instructions runs the bundle under qemu here; "
                              "drop --device")
        if threads not in (0, 1):
            raise OptionError("--count-instructions counts one thread; drop --threads")
        counted = bench.count_instructions(bundle, runs=repeat or 1,
                                           warmup=2 if warmup is None else warmup,
                                           compare_ort=compare_ort)
        _print_count(counted)
        if json_path:
            json_path.write_text(counted.to_json() + "\n")
            click.echo(f"json: {json_path}")
        return
    result = bench.bench(bundle, device, 5 if warmup is None else warmup, repeat or 50, number,
                         threads, compare_ort)
    click.echo(f"bundle: {result.bundle} ({result.target}) on {result.device}")
    if result.emulated:
        click.echo("EMULATED: these times measure qemu, not the device's latency")
    rows = [("hwcomp", result.hwcomp)]
    if result.onnxruntime is not None:
        rows.append(("onnxruntime", result.onnxruntime))
    _table(("runtime", "runs", "min ms", "mean ms", "median ms", "p90 ms", "p99 ms", "std ms"),
           [(name, str(s.runs), f"{s.min_ms:.4f}", f"{s.mean_ms:.4f}", f"{s.median_ms:.4f}",
             f"{s.p90_ms:.4f}", f"{s.p99_ms:.4f}", f"{s.std_ms:.4f}") for name, s in rows])
    if result.ratio is not None:
        click.echo(f"hwcomp / onnxruntime (median of {len(result.rounds)} alternating "
                   f"rounds): {result.ratio:.2f}x"
                   + (" (emulated hwcomp: not comparable)" if result.emulated else ""))
    if json_path:
        json_path.write_text(result.to_json() + "\n")
        click.echo(f"json: {json_path}")


def _print_count(counted: instructions.CountResult) -> None:
    click.echo(f"bundle: {counted.bundle} ({counted.target}), counted under {counted.emulator}, "
               f"{counted.threads} thread")
    click.echo("INSTRUCTIONS EXECUTED, NOT TIMES: qemu models no pipeline, cache or memory "
               "stall; a device (--device rpc://...) gives times")
    rows = [counted.hwcomp] + ([counted.onnxruntime] if counted.onnxruntime else [])
    _table(("runtime", "instructions per inference", "runs counted", "whole process"),
           [(c.runtime, f"{c.per_inference:,.0f}", str(c.runs), f"{c.process_total:,}")
            for c in rows])
    if counted.ratio is not None:
        click.echo(f"hwcomp / onnxruntime: {counted.ratio:.3f}x the instructions")
    for count in rows:
        click.echo(f"where {count.runtime}'s instructions go (per inference, top "
                   f"{len(count.places)}):")
        _table(("place", "instructions", "share"),
               [(_shorten(p.name, 80), f"{p.instructions:,.0f}",
                 f"{100 * p.instructions / count.per_inference:.1f}%") for p in count.places])


def _shorten(text: str, width: int) -> str:
    """``text``, its middle elided to fit ``width`` (fused function names run to 200)."""
    if len(text) <= width:
        return text
    keep = (width - 3) // 2
    return f"{text[:keep]}...{text[-keep:]}"


@cli.command("device-server")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 serves the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=9090, show_default=True,
              help="First port to try.")
@click.option("--port-end", type=click.IntRange(1, 65535), default=None,
              help="Last port to try  [default: --port + 99].")
@click.option("--tracker", metavar="HOST:PORT", help="Register with this RPC tracker.")
@click.option("--key", default="", help="Device key to register under (with --tracker).")
def device_server(host: str, port: int, port_end: int | None, tracker: str | None,
                  key: str) -> None:
    """Serve this machine to hwcomp bench/tune over TVM RPC (runs uploaded code).

    \b
    Examples (on the board):
      hwcomp device-server --host 0.0.0.0 --port 9190
      hwcomp device-server --tracker tracker.local:9191 --key pi4
    """
    if tracker and not key:
        raise click.UsageError("--tracker needs --key (the device type, e.g. pi4)")
    command = remote.server_command(host, port, remote.last_port(port, port_end), tracker, key)
    click.echo(remote.TRUST_NOTE.format(host=host), err=True)
    os.execv(command[0], command)


class _Progress:
    """A progress bar on stderr that appears with the first report, not before."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr,
                                         show_pos=True, show_eta=True)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


_NATIVE_LOG = NativeLog()


def _ignore_signals() -> None:
    """Leave later signals unanswered: the command is ending and says how already.

    A second Ctrl-C while the one line is printed, or during interpreter teardown, must
    not turn a reported end into a traceback or a process killed by SIGINT (exit -2).
    """
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)


def _fail(message: str, code: int) -> NoReturn:
    """Print one ``hwcomp: ...`` line (naming the library log, if any) and exit ``code``."""
    _ignore_signals()
    click.echo(f"hwcomp: {message}{_NATIVE_LOG.finish(failed=True)}", err=True)
    sys.exit(code)


def _exit_stopped(cause: BaseException | None) -> NoReturn:
    """Exit 130 (Ctrl-C) or 143 (SIGTERM); an EOFError click took for an abort is a bug."""
    _ignore_signals()
    if isinstance(cause, EOFError):
        _fail(f"internal error: EOFError: {cause} (set HWCOMP_DEBUG=1 for the traceback and "
              "please report it)", 1)
    terminated = isinstance(cause, stop.Terminated)
    word = "terminated" if terminated else "interrupted"
    written = stop.written()
    outcome = (f"after writing {', '.join(written)} (complete and verified)" if written
               else "nothing was written")
    # What the libraries wrote as the stop unwound them (a BlockBuilder left mid-function) is
    # the stop's own echo, not a diagnosis: the log goes and the line stays the one line.
    _NATIVE_LOG.finish(failed=False)
    click.echo(f"hwcomp: {word}; {outcome}", err=True)
    stop.end_process(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def _verbose(argv: Sequence[str]) -> bool:
    """Tell whether the user asked for library output too (-v anywhere, HWCOMP_DEBUG)."""
    if os.environ.get("HWCOMP_DEBUG"):
        return True
    end = list(argv).index("--") if "--" in argv else len(argv)
    return any(arg in _LOG_FLAGS and arg not in ("-q", "--quiet") for arg in argv[:end])


def main() -> None:
    """Entry point: run the CLI, turning user errors into one line and their exit code.

    The codes are documented in :mod:`hwcomp.errors` and the README.
    """
    # A terminated build cleans up like an interrupted one: nothing half-written stays.
    for number in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(number) is not signal.SIG_IGN:  # nohup / background jobs: kept
            # Remembered: a KeyboardInterrupt raised inside a TVM callback comes back as
            # TVM's RuntimeError (then a LoweringError, or a rule's fallback); the run
            # still ends stopped.
            signal.signal(number, stop.handle)
    try:
        if not _verbose(sys.argv[1:]):
            with stop.deferred():  # descriptor 2 and sys.stderr are swapped together
                _NATIVE_LOG.start()
        cli.main(standalone_mode=False, prog_name="hwcomp")
    except HwcompError as exc:
        if stop.requested():  # e.g. Ctrl-C inside TVM, reported as a compile failure
            _exit_stopped(stop.cause())
        _fail(f"error: {exc}", exc.exit_code)
    except click.exceptions.Abort as exc:  # click's form of a KeyboardInterrupt (or EOFError)
        _exit_stopped(exc.__cause__)
    except click.ClickException as exc:
        _NATIVE_LOG.finish(failed=False)
        exc.show()
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt as exc:  # raised outside a command, where click does not wrap it
        _exit_stopped(exc)
    except Exception as exc:  # noqa: BLE001 - last resort: one line unless debugging
        if stop.requested():
            _exit_stopped(stop.cause())
        if os.environ.get("HWCOMP_DEBUG"):
            traceback.print_exc()
        _fail(f"internal error: {type(exc).__name__}: {exc} "
              "(set HWCOMP_DEBUG=1 for the traceback and please report it)", 1)
    finally:
        _ignore_signals()  # the work is done (or reported)
        _NATIVE_LOG.finish(failed=False)


if __name__ == "__main__":
    main()
