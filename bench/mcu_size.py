"""Microcontroller bundles: memory plan, flash, and instructions per inference.

For MLPerf Tiny-shaped models (DS-CNN keyword spotting, ResNet-8; seeded weights) built for a
Cortex-M target in fp32 and in int8 (calibrated on 16 seeded normal samples): the arena next
to its lower bounds and the sum of all buffers, library flash next to the weight bytes, and
instructions per inference counted two ways:

* ``callgrind``: x86-64 instructions of ``hwcomp_<model>_run`` alone in the host build of the
  same C (repeatable: valgrind counts, it does not time);
* ``qemu``: Thumb-2 instructions the whole example firmware executes on the emulated board
  (a qemu TCG plugin; includes startup and printing the outputs, ~1 % here), and per kernel
  call (the build's own count, manifest ``layer_counts``), with the layer's MACs where the
  call is a layer's. With ``--qemu`` (a second or two per model).

MACs per instruction = the model's MACs (hwcomp's cost analysis) / instructions. Then
the build's verification (the emulated board's outputs against onnxruntime's) and the
build's wall time (``hwcomp build`` with verification, on this machine).

    .venv/bin/python bench/mcu_size.py [--target cortex-m7] [--precisions fp32,int8]
        [--models ds_cnn_kws,resnet8] [--qemu]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hwcomp import api  # noqa: E402
from hwcomp import model as model_io  # noqa: E402
from hwcomp.analysis import cost  # noqa: E402
from hwcomp.compress import precision as quantize  # noqa: E402
from hwcomp.errors import MemoryBudgetError  # noqa: E402
from hwcomp.lower.mcu.firmware import count_firmware  # noqa: E402
from hwcomp.lower.mcu.sources import sources_in  # noqa: E402
from tests import model_zoo  # noqa: E402

MODELS = {"ds_cnn_kws": model_zoo.ds_cnn, "resnet8": model_zoo.resnet8,
          "mobilenet_v1_vww": model_zoo.mobilenet_v1_vww}


def callgrind_instructions(bundle: Path, prefix: str, workdir: Path) -> int:
    sources = sources_in(bundle)
    program = workdir / f"{bundle.name}-host"
    subprocess.run(["gcc", "-O2", "-std=c99", *[f"-I{d}" for d in sources.include_dirs],
                    *map(str, sources.library), str(sources.example), "-o", str(program), "-lm"],
                   check=True)
    out = workdir / f"{bundle.name}.callgrind"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    f"--toggle-collect={prefix}_run_with_arena", str(program)],
                   check=True, capture_output=True)
    summary = re.search(r"^summary: (\d+)", out.read_text(), re.M)
    assert summary, "callgrind wrote no summary"
    return int(summary.group(1))


def qemu_instructions(bundle: Path, target) -> tuple[int, list[tuple[str, int, int]]]:
    """Thumb-2 instructions the firmware executes, in all and per kernel call.

    The build's own count (``hwcomp.lower.mcu.firmware.count_firmware``: a qemu TCG plugin
    marks the entries of ``hwcomp_call`` and ``hwcomp_step_end``, so a call counts the
    kernel and every function it calls), run again here for the whole-program total; each
    call's MACs from the manifest's ``layer_counts``. Instructions outside the kernel calls
    (start-up, the executor, printing) are the "other" entry.
    """
    counted = count_firmware(bundle / "bin" / "firmware.elf", target)
    manifest = json.loads((bundle / "manifest.json").read_text())
    macs = {s["kernel"]: s["macs"] for s in manifest["layer_counts"]["steps"]}
    steps = [(step.kernel, step.instructions, macs.get(step.kernel, 0)) for step in counted.steps]
    other = counted.program - sum(count for _, count, _ in steps)
    return counted.program, [*steps, ("other", other, 0)]


def layer_table(name: str, steps: list[tuple[str, int, int]]) -> str:
    """Markdown: each kernel call's instructions, and MACs where it computes a layer."""
    rows = [f"\n{name}: instructions per kernel call (qemu TCG plugin; counts, not cycles)\n",
            "| step | kernel | instructions | MACs | MACs/instr. |", "|---|---|---:|---:|---:|"]
    for index, (short, count, layer_macs) in enumerate(steps):
        ratio = f"{layer_macs / count:.3f}" if layer_macs and count else "-"
        rows.append(f"| {index} | {short} | {count} | {layer_macs or '-'} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cortex-m7")
    parser.add_argument("--qemu", action="store_true", help="also count Thumb-2 instructions")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--models", default="ds_cnn_kws,resnet8",
                        help=f"comma-separated, of {', '.join(MODELS)}")
    args = parser.parse_args()
    rows = []
    tables: list[str] = []
    refused: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            builder = MODELS[name]
            path = folder / f"{name}.onnx"
            model_zoo.save(builder(), str(path))
            loaded = model_io.load_model(path)
            macs = cost.graph_cost(loaded).total_macs
            shape = [int(d) for d in loaded.graph.inputs[0].shape]
            calib = folder / f"{name}_calib.npz"
            samples = np.random.default_rng(7).standard_normal((16, *shape[1:]))
            np.savez(calib, input=samples.astype(np.float32))
            for precision in args.precisions.split(","):
                started = time.perf_counter()
                try:
                    result = api.build(
                        path, args.target, folder / precision, calib=calib,
                        precision_options=quantize.PrecisionOptions(precision=precision))
                except MemoryBudgetError as error:  # fp32 ResNet-8 on cortex-m4's 128 KB
                    refused.append(f"{name} {precision}: {error}")
                    continue
                build_s = time.perf_counter() - started
                mcu = result.manifest["mcu"]
                error = result.manifest["verification"]["outputs"][0]["max_abs_error"]
                x86 = callgrind_instructions(result.bundle, mcu["prefix"], folder)
                thumb = None
                skipped = mcu.get("firmware", {}).get("skipped")
                if args.qemu and skipped:  # too big for the emulated board's memory
                    refused.append(f"{name} {precision}: not counted under qemu: {skipped}")
                elif args.qemu:
                    thumb, steps = qemu_instructions(result.bundle, result.target)
                    tables.append(layer_table(f"{name} {precision} ({args.target})", steps))
                rows.append((name, precision, macs, mcu, x86, thumb, error, build_s))
                print(json.dumps({"model": name, "precision": precision, "macs": macs,
                                  "build_seconds": round(build_s, 1),
                                  "x86_instructions": x86, "thumb_instructions": thumb,
                                  "max_abs_error": error, **mcu}), flush=True)
    print(f"\n| model ({args.target}) | precision | MACs | arena | lower bound | largest two live | "
          "sum of buffers | flash | weights | x86 instr. (callgrind) | MACs/instr. | "
          "Thumb-2 instr. (qemu) | MACs/instr. | max abs error vs onnxruntime | build (s) |")
    print("|---" * 15 + "|")
    for name, precision, macs, mcu, x86, thumb, error, build_s in rows:
        arena, lib = mcu["arena"], mcu["library"]
        arm = f"{thumb / 1e6:.1f} M | {macs / thumb:.3f}" if thumb else "- | -"
        print(f"| {name} | {precision} | {macs / 1e6:.2f} M | {arena['arena_bytes']} | "
              f"{arena['lower_bound_bytes']} | {arena['largest_two_live_bytes']} | "
              f"{arena['sum_of_buffers_bytes']} | {lib['flash']} | {mcu['weights_bytes']} | "
              f"{x86 / 1e6:.1f} M | {macs / x86:.3f} | {arm} | {error:.3g} | {build_s:.1f} |")
    for line in refused:
        print(f"\nnot in the table: {line}")
    for table in tables:
        print(table)


if __name__ == "__main__":
    main()
