"""1-D and transposed convolutions as the 2-D convolutions hwcomp's CPU kernels run.

* A 1-D convolution (``conv1d``, NCW) is a 2-D one over a map of one row: its input is
  viewed as ``[N, C, 1, L]`` (a reshape, no copy) and the kernel writes the ``[N, OC, OL]``
  output directly, so the bias and activation after it still fuse into its store.
* A transposed convolution (``conv2d_transpose``, stride ``s``, kernel ``k``) is ``s * s``
  ordinary convolutions, one per output phase ``(ry, rx)``, each over ``ceil(k / s)`` taps of
  the flipped kernel (the sub-pixel form): one convolution with ``OC * s * s`` output channels
  followed by a depth-to-space shuffle and a crop of the padding. For ``k == s`` (U-Net's
  2x2/2 upsampling) it is a 1x1 convolution. TVM's own lowering runs the transposed op as
  scalar loops over a zero-dilated input (U-Net's four upsamplings took 94% of its time).

Derivation (one axis, dilation 1): ``y[Y] = sum_{i, t} x[i] w[t]`` over ``Y = i*s + t - p``.
With ``Y + p = q*s + r`` (``0 <= r < s``) the taps are ``t = u*s + r`` and ``i = q - u``:
``y[q*s + r - p] = sum_u x[q - u] w[u*s + r]``, a correlation of ``x`` (padded by
``ceil(k/s) - 1`` in front) with phase ``r``'s taps reversed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwcomp.lower.relax_match import shape_of

CONV1D = "relax.nn.conv1d"
CONV_TRANSPOSE = "relax.nn.conv2d_transpose"


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution as the kernels take it.

    Attributes:
        data_shape: The input, NCHW (a 1-D convolution's has H = 1).
        out_shape: The output the kernel writes: NCHW, or NCW for a 1-D convolution.
        kernel: Kernel (height, width).
        strides: Strides (height, width).
        padding: Padding (top, left, bottom, right).
        dilation: Dilation (height, width).
        groups: Groups (input and output channels split evenly).
        channels_last: The op's data and output are NHWC (``data_shape`` and ``out_shape``
            still say NCHW: the kernels read and write NHWC, the geometry is the same).

    """

    data_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int = 1
    channels_last: bool = False


@dataclass(frozen=True)
class ConvForm:
    """A 1-D or transposed convolution rewritten as a 2-D one.

    Attributes:
        data_shape: The shape the input is reshaped (viewed) to.
        weight: The 2-D convolution's weight, OIHW.
        geometry: The 2-D convolution.
        shuffle: For a transposed convolution: (stride h, stride w, output shape) of the
            depth-to-space and crop after the convolution; None for a 1-D one.

    """

    data_shape: tuple[int, ...]
    weight: np.ndarray
    geometry: ConvGeometry
    shuffle: tuple[int, int, tuple[int, ...], tuple[int, int]] | None = None

    def finish(self, builder: Any, out: Any) -> Any:
        """Return the op's output from the 2-D convolution's ``out``."""
        if self.shuffle is None:
            return out
        from tvm import relax

        sh, sw, final, (top, left) = self.shuffle
        n, channels, height, width = self.geometry.out_shape
        oc = channels // (sh * sw)
        emit = builder.emit
        y = emit(out)
        y = emit(relax.op.reshape(y, (n, oc, sh, sw, height, width)))
        y = emit(relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3]))
        y = emit(relax.op.reshape(y, (n, oc, height * sh, width * sw)))
        if (height * sh, width * sw) == tuple(final[2:]):
            return y
        return relax.op.strided_slice(y, [2, 3], [top, left],
                                      [top + final[2], left + final[3]])


def conv2d_geometry(call: Any) -> ConvGeometry:
    """Return the geometry of a Relax ``conv2d`` call (NCHW, or NHWC data with OIHW weights)."""
    attrs = call.attrs
    weight_shape = shape_of(call.args[1])
    data, out = shape_of(call.args[0]), shape_of(call)
    channels_last = attrs.data_layout == "NHWC"
    if channels_last:
        data, out = _nchw(data), _nchw(out)
    return ConvGeometry(
        data, out, (weight_shape[2], weight_shape[3]),
        (int(attrs.strides[0]), int(attrs.strides[1])),
        tuple(int(v) for v in attrs.padding),  # type: ignore[arg-type]
        (int(attrs.dilation[0]), int(attrs.dilation[1])), int(attrs.groups), channels_last)


def _nchw(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return an NHWC shape's NCHW order."""
    n, h, w, c = shape
    return (n, c, h, w)


def nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return an NCHW shape's NHWC order."""
    n, c, h, w = shape
    return (n, h, w, c)


def conv1d_form(call: Any, weight: np.ndarray) -> ConvForm | str:
    """Return a Relax ``conv1d`` (NCW, OIW) as a 2-D convolution over one row, or why not."""
    attrs = call.attrs
    if attrs.data_layout != "NCW" or attrs.kernel_layout != "OIW" or weight.ndim != 3:
        return f"generic schedule (layout {attrs.data_layout}/{attrs.kernel_layout})"
    n, c, length = shape_of(call.args[0])
    left, right = (int(v) for v in attrs.padding)
    geometry = ConvGeometry((n, c, 1, length), shape_of(call), (1, weight.shape[2]),
                            (1, int(attrs.strides[0])), (0, left, 0, right),
                            (1, int(attrs.dilation[0])), int(attrs.groups))
    return ConvForm((n, c, 1, length), weight[:, :, None, :], geometry)


def conv_transpose_form(call: Any, weight: np.ndarray) -> ConvForm | str:
    """Return a Relax ``conv2d_transpose`` (NCHW, IOHW) as a sub-pixel conv, or why not."""
    attrs = call.attrs
    if (attrs.data_layout != "NCHW" or attrs.kernel_layout != "IOHW" or weight.ndim != 4
            or attrs.out_layout not in ("", "NCHW", None)):
        return f"generic schedule (layout {attrs.data_layout}/{attrs.kernel_layout})"
    dilation = tuple(int(v) for v in attrs.dilation)
    if dilation != (1, 1):
        return f"generic schedule (dilation {dilation})"
    groups = int(attrs.groups)
    strides = (int(attrs.strides[0]), int(attrs.strides[1]))
    top, left = int(attrs.padding[0]), int(attrs.padding[1])
    n, channels, height, width = shape_of(call.args[0])
    final = shape_of(call)
    in_channels, out_group, kh, kw = weight.shape
    in_group = in_channels // groups
    taps = (math.ceil(kh / strides[0]), math.ceil(kw / strides[1]))
    # Phases computed per axis: enough to cover the crop's end.
    phases = (max(height, math.ceil((top + final[2]) / strides[0])),
              max(width, math.ceil((left + final[3]) / strides[1])))
    sh, sw = strides
    out_channels = out_group * groups
    phase_weight = np.zeros((out_channels, sh, sw, in_group, taps[0], taps[1]), weight.dtype)
    for ry in range(sh):
        for rx in range(sw):
            for uy in range(taps[0]):
                ty = (taps[0] - 1 - uy) * sh + ry
                for ux in range(taps[1]):
                    tx = (taps[1] - 1 - ux) * sw + rx
                    if ty >= kh or tx >= kw:
                        continue
                    # weight[g * in_group + c, o, ty, tx] -> phase_weight[g * out_group + o, ...]
                    taps_w = weight[:, :, ty, tx].reshape(groups, in_group, out_group)
                    phase_weight[:, ry, rx, :, uy, ux] = taps_w.transpose(0, 2, 1).reshape(
                        out_channels, in_group)
    geometry = ConvGeometry(
        (n, channels, height, width), (n, out_channels * sh * sw, phases[0], phases[1]), taps,
        (1, 1), (taps[0] - 1, taps[1] - 1, phases[0] - height, phases[1] - width), (1, 1),
        groups)
    return ConvForm((n, channels, height, width),
                    phase_weight.reshape(out_channels * sh * sw, in_group, *taps), geometry,
                    (sh, sw, final, (top, left)))
