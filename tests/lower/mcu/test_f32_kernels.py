"""hwcomp's fp32 C kernels (kernels/mcu/hwcomp_f32.c) on awkward layers and on DS-CNN.

Each case is a float model built for a Cortex-M profile: the build runs the firmware under
qemu (VFMA on the FPU) and the same C on this machine (libm's fmaf: the same roundings) and
compares both with onnxruntime within the float tolerance. The tests then require the two
runs to agree exactly and the layers to be on hwcomp's kernels with the bias and the
activation folded where nothing else reads the intermediate tensor.
"""

import json

import pytest

from tests import model_zoo
from tests.conftest import require_tools, run_cli
from tests.lower.mcu.test_q8_kernels import _layer_model, _out_hw

pytestmark = pytest.mark.cross


def _build_float(tmp_path, model, target="cortex-m7"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = model_zoo.save(model, str(tmp_path / "layer.onnx"))
    done = run_cli("build", path, "--target", target, "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    bundle = next((tmp_path / "out").iterdir())
    manifest = json.loads((bundle / "manifest.json").read_text())
    verification = manifest["verification"]
    assert verification["status"] == "passed"
    # The board (VFMA) and this machine (fmaf) round alike.
    assert (verification["runs"]["host build"][0]["max_abs_error"]
            == verification["outputs"][0]["max_abs_error"])
    return bundle, manifest


@pytest.mark.parametrize("target,x_shape,cout,k,stride,group,pads,dilation,kind", [
    # 5 -> 6 channels (a block of 4 and 2 single rows), 7x9 map (a pixel without a partner).
    ("cortex-m7", (1, 5, 7, 9), 6, 3, 1, 1, None, 1, "conv"),
    # Stride 2, asymmetric padding, 3 output channels; dilation 2.
    ("cortex-m4", (1, 7, 8, 6), 3, 3, 2, 1, [0, 1, 2, 1], 1, "conv"),
    ("cortex-m7", (1, 4, 9, 7), 8, 3, 1, 1, None, 2, "conv"),
    # Depthwise: 3x3 stride 2, 5x5 dilated, unpadded 3x3.
    ("cortex-m7", (1, 6, 9, 7), 6, 3, 2, 6, None, 1, "depthwise"),
    ("cortex-m4", (1, 4, 6, 5), 4, 5, 1, 4, None, 2, "depthwise"),
    ("cortex-m55", (1, 5, 7, 9), 5, 3, 1, 5, [0, 0, 0, 0], 1, "depthwise"),
])
def test_fp32_kernels_match_onnxruntime_on_the_board_and_the_host(
        tmp_path, target, x_shape, cout, k, stride, group, pads, dilation, kind):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    builder = _layer_model(x_shape, cout, k, stride, group, pads, dilation)
    out_hw = _out_hw(x_shape, k, stride, pads, dilation)
    bundle, manifest = _build_float(
        tmp_path, builder.model("layer", list(x_shape), "logits", [1, 3, *out_hw]), target)
    # The layer (its bias and ReLU folded in) and the 1x1 convolution after it.
    assert manifest["float_kernels"] == [f"{kind} (1, {cout}, {out_hw[0]}, {out_hw[1]}) + relu",
                                         f"conv (1, 3, {out_hw[0]}, {out_hw[1]})"]
    assert f"hwcomp_f32_{kind}(" in (bundle / "lib" / "kernels.c").read_text()


def test_ds_cnn_fp32_runs_on_the_kernels_and_a_shared_output_keeps_its_add(tmp_path):
    """DS-CNN fp32: every convolution and the classifier on hwcomp's kernels with bias and
    ReLU folded. ResNet-8: a convolution whose biased output feeds the residual Add and the
    next layer keeps the Add in TVM (the bias folds, the sum does not)."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    _, manifest = _build_float(tmp_path / "kws", model_zoo.ds_cnn())
    ops = manifest["float_kernels"]
    assert len(ops) == 10 and ops[-1] == "dense (1, 12)"
    assert sum(op.endswith("+ relu") for op in ops) == 9
    _, manifest = _build_float(tmp_path / "rn8", model_zoo.resnet8())
    ops = manifest["float_kernels"]
    # 9 convolutions (2 of them 1x1 shortcuts) and the classifier; in each of the 3 blocks
    # the second convolution's output meets the shortcut in an Add, so its ReLU is not its.
    assert len(ops) == 10 and sum(op.endswith("+ relu") for op in ops) == 4


def test_relu6_folds_into_the_fp32_kernels_and_mobilenet_runs(tmp_path):
    """ReLU6 (Clip with bound inputs: maximum then minimum PrimFuncs after the import) is the
    kernels' clamp: the MobileNetV2-style model's seven (stem, expansions, depthwise), on
    cortex-m55's FPU."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    bundle, manifest = _build_float(tmp_path, model_zoo.mobilenet_like(), "cortex-m55")
    ops = manifest["float_kernels"]
    assert sum(op.endswith("+ clip [0, 6]") for op in ops) == 7, ops
    names = (bundle / "lib" / "kernels.c").read_text()
    assert "maximum" not in names and "minimum" not in names
