"""hwcomp's fp32 CPU kernels against numpy: both loop orders of the conv kernel and the
return to NCHW, on map sizes that do and do not divide into 16-wide tiles."""

import numpy as np
import pytest

from hwcomp.lower import kernels
from hwcomp.targets import load_target


def _run(func, *arrays, out_shape):
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func}), target=load_target("host").tvm())
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib(*(tvm.runtime.tensor(a) for a in arrays), out)
    return out.numpy()


@pytest.mark.parametrize("shape,out_channels,kernel,weights_stay", [
    ((1, 8, 20, 20), 32, 3, False),    # im2col rows outweigh weights: rows built per task
    ((1, 64, 7, 7), 64, 3, True),      # weights outweigh rows: tasks share a weight panel
    ((1, 96, 6, 6), 80, 1, True),      # pointwise, OC not a multiple of 64
])
def test_conv_kernel_matches_numpy_in_both_loop_orders(shape, out_channels, kernel,
                                                        weights_stay):
    spec = kernels.float_spec(load_target("host"))
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((out_channels, shape[1], kernel, kernel)).astype(np.float32)
    pad = kernel // 2
    func = kernels.conv_kernel(shape, (kernel, kernel), out_channels, (1, 1), (pad,) * 4,
                               (1, 1), 0, spec)
    # The weight-stationary order builds the whole im2col matrix in a parallel loop of its own.
    assert func.script().count("T.parallel(") == (3 if weights_stay else 2)
    rows = kernels.conv_rows(shape[2] * shape[3], out_channels, spec)
    cols = kernels._round_up(out_channels, spec.lanes)
    packed = kernels.pack_weight(kernels.conv_weight_matrix(w, spec), spec)
    got = _run(func, x, packed, out_shape=(rows, cols))[:shape[2] * shape[3], :out_channels]
    padded = np.pad(x[0], ((0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(1, 2))
    want = np.einsum("chwij,ocij->hwo", windows, w).reshape(-1, out_channels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("out_shape", [(1, 48, 7, 7), (2, 20, 14, 14), (1, 16, 56, 56)])
def test_to_nchw_kernel_transposes_exactly(out_shape):
    batch, channels, height, width = out_shape
    rows, cols = batch * height * width + 3, kernels._round_up(channels, 16)
    a = np.random.default_rng(1).standard_normal((rows, cols)).astype(np.float32)
    got = _run(kernels.to_nchw_kernel(out_shape, rows, cols, "float32", 16), a,
               out_shape=out_shape)
    want = a[:batch * height * width, :channels].reshape(batch, height, width, channels)
    np.testing.assert_array_equal(got, want.transpose(0, 3, 1, 2))
