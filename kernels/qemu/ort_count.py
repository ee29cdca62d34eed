"""Run onnxruntime on a model for `hwcomp bench --count-instructions --compare-ort`.

Runs inside the emulated Python (qemu-aarch64 with Debian's arm64 python3 and the aarch64
onnxruntime and numpy wheels, or the host's Python under qemu-x86_64), under the
instruction-counting plugin (insn_count.c). One thread, no spinning; the runs counted are
marked by close() of two descriptors that cannot exist, exactly as the bundle runner marks
its own, so start-up and the warm-up runs stay out of the count; the process's memory map
goes to the file named by HWCOMP_COUNT_MARKS.

usage: ort_count.py MODEL --warmup N --runs N --inputs a.npy [b.npy ...]
"""

import argparse
import os

import numpy as np
import onnxruntime as ort

MARK_START, MARK_STOP = -48770001, -48770002


def mark(descriptor: int) -> None:
    try:
        os.close(descriptor)
    except OSError:
        pass  # EBADF: the mark is the attempt, seen by the plugin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--inputs", nargs="+", default=[])
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 4
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    names = [spec.name for spec in session.get_inputs()]
    if len(names) != len(args.inputs):
        raise SystemExit(f"the model has {len(names)} inputs, {len(args.inputs)} given")
    feeds = {name: np.load(path) for name, path in zip(names, args.inputs)}
    for _ in range(args.warmup):
        session.run(None, feeds)
    mark(MARK_START)
    for _ in range(args.runs):
        session.run(None, feeds)
    mark(MARK_STOP)
    maps = os.environ.get("HWCOMP_COUNT_MARKS")
    if maps:  # the memory map, to attribute instructions to libraries
        with open("/proc/self/maps") as source, open(maps, "w") as out:
            out.write(source.read())
    print(f"onnxruntime {ort.__version__}: {args.runs} runs")


if __name__ == "__main__":
    main()
