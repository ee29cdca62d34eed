"""hwcomp's fp32 conv kernel alone vs onnxruntime's Conv, layer by layer (not pytest).

    python bench/conv_layers.py [--layers r50_3x3_56,...] [--rounds 7] [--number 20]

Each layer is compiled as hwcomp builds it (:func:`hwcomp.lower.cpu.kernels.compute.conv_nchw_kernel`:
the padded NHWC copy and the GEMM storing NCHW, here without a bias or activation; or, for
maps it does not fit, :func:`hwcomp.lower.cpu.kernels.compute.conv_kernel` without the return to NCHW)
and as a one-Conv ONNX model for onnxruntime (2 threads, its NCHWc transformer on). The two
alternate in ``--rounds`` rounds (a 0.1 s pause before each); every round checks hwcomp's
output against onnxruntime's. The table gives each side's fastest round and the median of
the per-round ratios. Kernel-level figures on a shared 2-core VM are noisy (the same compiled
kernel has measured 0.34 and 0.46 ms minimum in two runs); whole-bundle A/Bs are the figures
to adopt a change by.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hwcomp.lower import kernel_spec  # noqa: E402
from hwcomp.lower.cpu.kernels import compute, tiling  # noqa: E402
from hwcomp.lower.cpu.kernels import spec as specs  # noqa: E402
from hwcomp.targets import load_target  # noqa: E402
from hwcomp.threads import thread_env  # noqa: E402

# name: (channels, map size, out channels, kernel, stride, pad)
LAYERS = {
    "r50_stem": (3, 224, 64, 7, 2, 3),
    "r50_3x3_56": (64, 56, 64, 3, 1, 1),
    "r50_3x3_28": (128, 28, 128, 3, 1, 1),
    "r50_3x3_14": (256, 14, 256, 3, 1, 1),
    "r50_3x3_7": (512, 7, 512, 3, 1, 1),
    "r50_1x1_28": (512, 28, 256, 1, 1, 0),
    "r50_1x1_14": (1024, 14, 256, 1, 1, 0),
    "resnet_style_3x3_64": (32, 64, 32, 3, 1, 1),
    # Mobile nets' expand / project 1x1 convs on late maps (MnasNet, EfficientNet).
    "mb_1x1_7_expand": (192, 7, 1152, 1, 1, 0),
    "mb_1x1_7_project": (1152, 7, 192, 1, 1, 0),
    "mb_1x1_14_expand": (80, 14, 480, 1, 1, 0),
    "mb_1x1_14_project": (480, 14, 80, 1, 1, 0),
    "r18_3x3_7": (512, 7, 512, 3, 1, 1),
    # Odd maps (SqueezeNet's 55x55 and 13x13, a 1000-class 1x1 head) and a dilated
    # segmentation layer's map.
    "sq_3x3_55": (16, 55, 64, 3, 1, 1),
    "sq_1x1_13_classes": (512, 13, 1000, 1, 1, 0),
    "aspp_3x3_32": (256, 32, 256, 3, 1, 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.update(thread_env(args.threads))
    import tvm
    from tvm import s_tir

    target = load_target("host")
    spec = specs.float_spec(target)
    assert spec is not None
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    print(f"| layer | GFLOP | hwcomp (ms) | ORT {args.threads}t (ms) | hwcomp GFLOP/s "
          "| hwcomp / ORT |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.layers.split(","):
        channels, size, out_channels, k, stride, pad = LAYERS[name]
        out, _ = kernel_spec.conv_output_size((1, channels, size, size), (k, k), (stride, stride),
                                          (pad,) * 4, (1, 1))
        x = rng.standard_normal((1, channels, size, size)).astype(np.float32)
        w = (rng.standard_normal((out_channels, channels, k, k)) * 0.05).astype(np.float32)
        out_shape = (1, out_channels, out, out)
        result_shape: tuple[int, ...]
        if compute.conv_nchw_fits(x.shape, out_shape, out_channels, spec):
            packed = compute.conv_nchw_weight(w, spec)
            # The kernel writing NCHW (as hwcomp builds the layer; no epilogue here).
            sch = s_tir.Schedule(compute.conv_nchw_kernel(
                x.shape, (k, k), out_channels, (stride, stride), (pad,) * 4, (1, 1), spec))
            assert tiling.schedule_fused_kernel(sch, spec)
            func, result_shape = sch.mod["main"], out_shape
        else:
            # Pixel-major rows padded to whole tiles (hwcomp then returns them to NCHW).
            packed = compute.pack_weight(compute.conv_weight_matrix(w, spec), spec)
            func = compute.conv_kernel(x.shape, (k, k), out_channels, (stride, stride),
                                       (pad,) * 4, (1, 1), 0, spec)
            result_shape = (tiling.conv_rows(out * out, out_channels, spec),
                            -(-out_channels // spec.lanes) * spec.lanes)
        lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                             target=target.tvm())
        tensors = [tvm.runtime.tensor(x, dev), tvm.runtime.tensor(packed, dev),
                   tvm.runtime.tensor(np.zeros(result_shape, np.float32), dev)]
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4, strides=[stride] * 2)],
            name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  ir_version=8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        want = session.run(None, {"x": x})[0][0]
        timer = lib.time_evaluator("main", dev, number=args.number, repeat=1)
        ours, theirs = [], []
        for _ in range(args.rounds):
            time.sleep(0.1)
            ours.append(timer(*tensors).mean * 1e3)
            got = tensors[-1].numpy()
            got = (got[0] if got.ndim == 4
                   else got[:out * out, :out_channels].T.reshape(want.shape))
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
            time.sleep(0.1)
            for _ in range(3):
                session.run(None, {"x": x})
            start = time.perf_counter()
            for _ in range(args.number):
                session.run(None, {"x": x})
            theirs.append((time.perf_counter() - start) / args.number * 1e3)
        flop = 2 * out * out * out_channels * channels * k * k
        ratio = float(np.median(np.array(ours) / np.array(theirs)))
        print(f"| {name} ({channels}->{out_channels}, {size}x{size}, {k}x{k}/{stride}) "
              f"| {flop / 1e9:.3f} | {min(ours):.3f} | {min(theirs):.3f} "
              f"| {flop / min(ours) / 1e6:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
