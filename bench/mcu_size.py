"""Microcontroller bundles: memory plan, flash, and instructions per inference.

For MLPerf Tiny-shaped models (DS-CNN keyword spotting, ResNet-8; seeded weights) built for a
Cortex-M target in fp32 and in int8 (calibrated on 16 seeded normal samples): the arena next
to its lower bounds and the sum of all buffers, library flash next to the weight bytes, and
instructions per inference counted two ways:

* ``callgrind``: x86-64 instructions of ``hwcomp_<model>_run`` alone in the host build of the
  same C (repeatable: valgrind counts, it does not time);
* ``qemu``: Thumb-2 instructions the whole example firmware executes on the emulated board
  (``-singlestep -d exec``; includes startup and printing the outputs, ~1 % here), and per
  kernel call (the trace names each instruction's function; a call runs from the
  executor's entry into its kernel to the next), with the layer's MACs where the call is a
  layer's. Slow (about a minute per model), so only with ``--qemu``.

MACs per instruction = the model's MACs (hwcomp's cost analysis) / instructions. Then
the build's verification (the emulated board's outputs against onnxruntime's) and the
build's wall time (``hwcomp build`` with verification, on this machine).

    .venv/bin/python bench/mcu_size.py [--target cortex-m7] [--precisions fp32,int8]
        [--models ds_cnn_kws,resnet8] [--qemu]
"""

from __future__ import annotations

import argparse
import json
import os
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


def qemu_instructions(bundle: Path, emulator: list[str]) -> tuple[int, list[tuple[str, int]]]:
    """Thumb-2 instructions the firmware executes, in all and per kernel call.

    qemu traces each executed instruction (``-singlestep -d exec,nochain``) with the name of
    the function holding it; a kernel call begins where the executor's ``hwcomp_call``
    enters a ``__tvm_ffi_`` kernel, and every instruction until the next begins (hwcomp's C
    kernels, the libm calls it makes) is counted to it. Instructions of the executor,
    startup and printing are the "other" entry.
    """
    read, write = os.pipe()
    command = [*emulator, "-singlestep", "-d", "exec,nochain", "-D", f"/dev/fd/{write}",
               "-kernel", str(bundle / "bin" / "firmware.elf")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            pass_fds=(write,))
    os.close(write)
    steps: list[list] = []
    other = total = 0
    previous = ""
    executor = ("hwcomp_call", "hwcomp_workspace_begin")
    with os.fdopen(read, "rb") as trace:
        for line in trace:
            if not line.startswith(b"Trace"):
                continue
            total += 1
            name = line.rsplit(None, 1)[-1].decode()
            if name.startswith("__tvm_ffi_") and previous == "hwcomp_call":
                steps.append([name, 0])
            previous = name
            if (steps and not name.startswith(executor) and not name.endswith("_run_with_arena")
                    and not name.endswith("_run") and name != "main"):
                steps[-1][1] += 1
            else:
                other += 1
    proc.wait(timeout=60)
    return total, [(name, count) for name, count in steps] + [("other", other)]


def kernel_macs(bundle: Path) -> dict[str, int]:
    """MACs of each ``__tvm_ffi_`` kernel that calls hwcomp's int8 or fp32 C kernels, from
    the literal geometry the generated code passes them (kernels.c)."""
    source = (bundle / "lib" / "kernels.c").read_text()
    macs = {}
    for body in source.split("TVM_DLL int32_t ")[1:]:
        head = body.split("(", 1)[0]
        call = re.search(r"hwcomp_(?:q8|f32)_(conv|depthwise|dense)\w*\(([^;]*)\);",
                         body.split("\n}", 1)[0])
        if not head.startswith("__tvm_ffi_") or call is None or "int32_t," in call.group(2):
            continue
        args = [int(v) for v in call.group(2).split(", ") if re.fullmatch(r"-?\d+", v)]
        if call.group(1) == "dense":  # rows, depth, cols
            rows, depth, cols = args[:3]
            macs[head] = rows * depth * cols
        elif call.group(1) == "conv":  # c, h, w, oc, kh, kw, ..., oh, ow (11th, 12th after c)
            c, _, _, oc, kh, kw = args[:6]
            oh, ow = args[12:14]
            macs[head] = c * kh * kw * oc * oh * ow
        else:  # c, h, w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow
            c, _, _, kh, kw = args[:5]
            oh, ow = args[13:15]
            macs[head] = c * kh * kw * oh * ow
    return macs


def layer_table(name: str, steps: list[tuple[str, int]], macs: dict[str, int]) -> str:
    """Markdown: each kernel call's instructions, and MACs where it ran hwcomp's C kernel."""
    rows = [f"\n{name}: instructions per kernel call (qemu trace; counts, not cycles)\n",
            "| step | kernel | instructions | MACs | MACs/instr. |", "|---|---|---:|---:|---:|"]
    for index, (kernel, count) in enumerate(steps):
        short = kernel.split("_", 4)[-1] if kernel.startswith("__tvm_ffi_") else kernel
        layer_macs = macs.get(kernel, 0)
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
                emulator = [result.target.emulator, *result.target.emulator_args]
                thumb = None
                if args.qemu:
                    thumb, steps = qemu_instructions(result.bundle, emulator)
                    tables.append(layer_table(f"{name} {precision} ({args.target})", steps,
                                              kernel_macs(result.bundle)))
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
        print(f"\ndoes not fit (refused by the build, nothing written): {line}")
    for table in tables:
        print(table)


if __name__ == "__main__":
    main()
