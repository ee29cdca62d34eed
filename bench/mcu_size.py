"""Microcontroller bundles: memory plan, flash, and instructions per inference.

For MLPerf Tiny-shaped models (DS-CNN keyword spotting, ResNet-8; seeded weights) built for a
Cortex-M target in fp32 and in int8 (calibrated on 16 seeded normal samples): the arena next
to its lower bounds and the sum of all buffers, library flash next to the weight bytes, and
instructions per inference counted two ways:

* ``callgrind``: x86-64 instructions of ``hwcomp_<model>_run`` alone in the host build of the
  same C (repeatable: valgrind counts, it does not time);
* ``qemu``: Thumb-2 instructions the whole example firmware executes on the emulated board
  (``-singlestep -d exec``; includes startup and printing the outputs, ~1 % here). Slow
  (about a minute per model), so only with ``--qemu``.

MACs per instruction = the model's MACs (hwcomp's cost analysis) / instructions. The last
column is the build's verification: the emulated board's outputs against onnxruntime's.

    .venv/bin/python bench/mcu_size.py [--target cortex-m7] [--precisions fp32,int8] [--qemu]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hwcomp import api  # noqa: E402
from hwcomp import model as model_io  # noqa: E402
from hwcomp.analysis import cost  # noqa: E402
from hwcomp.compress import precision as quantize  # noqa: E402
from hwcomp.lower.mcu.sources import sources_in  # noqa: E402
from tests import model_zoo  # noqa: E402

MODELS = {"ds_cnn_kws": model_zoo.ds_cnn, "resnet8": model_zoo.resnet8}


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


def qemu_instructions(bundle: Path, emulator: list[str]) -> int:
    command = [*emulator, "-singlestep", "-d", "exec,nochain", "-D", "/dev/fd/3", "-kernel",
               str(bundle / "bin" / "firmware.elf")]
    shell = " ".join(command) + " 3>&1 1>/dev/null | grep -c '^Trace'"
    return int(subprocess.run(["bash", "-c", shell], capture_output=True, text=True,
                              check=True).stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cortex-m7")
    parser.add_argument("--qemu", action="store_true", help="also count Thumb-2 instructions")
    parser.add_argument("--precisions", default="fp32,int8")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, builder in MODELS.items():
            path = folder / f"{name}.onnx"
            model_zoo.save(builder(), str(path))
            loaded = model_io.load_model(path)
            macs = cost.graph_cost(loaded).total_macs
            shape = [int(d) for d in loaded.graph.inputs[0].shape]
            calib = folder / f"{name}_calib.npz"
            samples = np.random.default_rng(7).standard_normal((16, *shape[1:]))
            np.savez(calib, input=samples.astype(np.float32))
            for precision in args.precisions.split(","):
                result = api.build(
                    path, args.target, folder / precision, calib=calib,
                    precision_options=quantize.PrecisionOptions(precision=precision))
                mcu = result.manifest["mcu"]
                error = result.manifest["verification"]["outputs"][0]["max_abs_error"]
                x86 = callgrind_instructions(result.bundle, mcu["prefix"], folder)
                emulator = [result.target.emulator, *result.target.emulator_args]
                thumb = qemu_instructions(result.bundle, emulator) if args.qemu else None
                rows.append((name, precision, macs, mcu, x86, thumb, error))
                print(json.dumps({"model": name, "precision": precision, "macs": macs,
                                  "x86_instructions": x86, "thumb_instructions": thumb,
                                  "max_abs_error": error, **mcu}), flush=True)
    print(f"\n| model ({args.target}) | precision | MACs | arena | lower bound | largest two live | "
          "sum of buffers | flash | weights | x86 instr. (callgrind) | MACs/instr. | "
          "Thumb-2 instr. (qemu) | MACs/instr. | max abs error vs onnxruntime |")
    print("|---" * 14 + "|")
    for name, precision, macs, mcu, x86, thumb, error in rows:
        arena, lib = mcu["arena"], mcu["library"]
        arm = f"{thumb / 1e6:.1f} M | {macs / thumb:.3f}" if thumb else "- | -"
        print(f"| {name} | {precision} | {macs / 1e6:.2f} M | {arena['arena_bytes']} | "
              f"{arena['lower_bound_bytes']} | {arena['largest_two_live_bytes']} | "
              f"{arena['sum_of_buffers_bytes']} | {lib['flash']} | {mcu['weights_bytes']} | "
              f"{x86 / 1e6:.1f} M | {macs / x86:.3f} | {arm} | {error:.3g} |")


if __name__ == "__main__":
    main()
