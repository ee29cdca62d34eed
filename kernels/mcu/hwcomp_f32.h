/* hwcomp's fp32 layer kernels for microcontrollers: convolution (1x1 included), depthwise
 * convolution and dense (fully connected) layers, bias and a clamp (ReLU, ReLU6, Clip)
 * applied as each output is stored. Register-blocked C: on a Cortex-M FPU (fpv4-sp-d16,
 * fpv5-d16) GCC keeps the sums in the 32 single-precision registers and multiplies with
 * VFMA; elsewhere (the host check) the same C.
 *
 * Layouts: activations NCHW (batch 1) for the convolutions, [rows, depth] for dense;
 * weights [OC, C*KH*KW] (OIHW flattened), [C, KH*KW] for depthwise, [N, depth] for dense;
 * bias one per output channel. Outputs are clamped to [lo, hi] (+-FLT_MAX: none). */
#ifndef HWCOMP_F32_H_
#define HWCOMP_F32_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* scratch (the kernel's workspace): two receptive fields, 2 * C*KH*KW floats. */
int32_t hwcomp_f32_conv(float* x, float* w, float* bias, float* y, float* scratch, int32_t c,
                        int32_t h, int32_t wd, int32_t oc, int32_t kh, int32_t kw, int32_t sh,
                        int32_t sw, int32_t dh, int32_t dw, int32_t pt, int32_t pl, int32_t oh,
                        int32_t ow, float lo, float hi);

/* scratch: one zero-padded input plane, (h + pt + pb) x (wd + pl + pr) floats (unused, one
 * float, when the layer does not pad). */
int32_t hwcomp_f32_depthwise(float* x, float* w, float* bias, float* y, float* scratch,
                             int32_t c, int32_t h, int32_t wd, int32_t kh, int32_t kw,
                             int32_t sh, int32_t sw, int32_t dh, int32_t dw, int32_t pt,
                             int32_t pl, int32_t pb, int32_t pr, int32_t oh, int32_t ow,
                             float lo, float hi);

/* y[r, n] = clamp(bias[n] + sum_k x[r, k] * w[n, k]). */
int32_t hwcomp_f32_dense(float* x, float* w, float* bias, float* y, int32_t rows,
                         int32_t depth, int32_t cols, float lo, float hi);

#ifdef __cplusplus
}
#endif

#endif /* HWCOMP_F32_H_ */
