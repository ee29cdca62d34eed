/* hwcomp's int8 layer kernels for microcontrollers: convolution (1x1 and fully connected
 * included) and depthwise convolution, u8 or s8 activations, s8 weights, int32 accumulators,
 * onnxruntime's requantization fused:
 *
 *   acc = bias[o] + sum_k x_q * w_q                (bias already holds -z_x * sum_k w_q)
 *   y_q = nearbyint(clamp(float(acc) * mult[o], y_lo, y_hi)) + y_zp
 *
 * (y_lo, y_hi = q_min - y_zp, q_max - y_zp), bit for bit what the TIR kernels they replace
 * computed. With Helium (integer and floating-point MVE: Cortex-M55/M85) the convolution
 * runs 3 output channels x 2 pixels per step on VMLADAV, 16 multiply-adds per instruction,
 * and the depthwise convolution gathers each window of neighbouring outputs into one vector;
 * with the DSP extension (Cortex-M4/M7/M33: __ARM_FEATURE_DSP) the convolution runs 2
 * output channels x 2 pixels per step on SMLAD, two multiply-adds per instruction;
 * elsewhere (the host build, M0/M3) a portable C loop over the same weights.
 *
 * Layouts: x and y NCHW (batch 1). Convolution weights are [OC][Kp] with K = C*KH*KW in
 * (c, ky, kx) order, padded with zeros to Kp = K rounded up to 4, and each group of four
 * stored as w0 w2 w1 w3 (hwcomp reorders them at build time): SXTB16 of the 32-bit word gives
 * (w0, w1), of the word rotated by 8 (w2, w3), the order of two 16-bit input pairs. Depthwise
 * weights are [C][KH*KW] as in the model.
 */
#ifndef HWCOMP_Q8_H_
#define HWCOMP_Q8_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* flags: bit 0 x is s8 (else u8), bit 1 y is s8 (else u8). */
#define HWCOMP_Q8_X_S8 1
#define HWCOMP_Q8_Y_S8 2

/* scratch (the kernel's workspace, 16-byte aligned): two columns of Kp 16-bit values; on
 * Helium 4 * Kp + 12 * OC + 56 bytes (hwcomp_q8.c). */
int32_t hwcomp_q8_conv(const void* x, const int8_t* w, const int32_t* bias, const float* mult,
                       void* y, int16_t* scratch, int32_t c, int32_t h, int32_t wd, int32_t oc, int32_t kh,
                       int32_t kw, int32_t sh, int32_t sw, int32_t dh, int32_t dw, int32_t pt,
                       int32_t pl, int32_t oh, int32_t ow, int32_t x_zp, int32_t y_zp,
                       int32_t y_lo, int32_t y_hi, int32_t flags);

/* scratch: one padded input plane, (h + pt + pb) x (wd + pl + pr) elements of x's type
 * (unused where the layer does not pad); on Helium always, with 64 bytes of slack rounded
 * up to 16, then max(ow, 64) + 4 int32 accumulators. */
int32_t hwcomp_q8_depthwise(const void* x, const int8_t* w, const int32_t* bias,
                            const float* mult, void* y, void* scratch, int32_t c, int32_t h,
                            int32_t wd, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                            int32_t dh, int32_t dw, int32_t pt, int32_t pl, int32_t pb,
                            int32_t pr, int32_t oh, int32_t ow, int32_t x_zp, int32_t y_zp,
                            int32_t y_lo, int32_t y_hi, int32_t flags);

/* The entry points hwcomp's generated kernels call: hwcomp_q8_conv_<x><y> and
 * hwcomp_q8_depthwise_<x><y>, <x>, <y> = u8 or s8 (the activation types; flags agree), with
 * the pointer types TVM's C code generator declares for the buffers it passes (one
 * declaration per name in kernels.c). Their parameter lists, shared by the declarations here
 * and the definitions in hwcomp_q8.c: */
#define HWCOMP_Q8_CONV_PARAMS(TX, TY)                                                        \
  (TX * x, int8_t * w, int32_t * bias, float* mult, TY* y, int16_t* scratch, int32_t c,      \
   int32_t h, int32_t wd, int32_t oc, int32_t kh, int32_t kw, int32_t sh, int32_t sw,        \
   int32_t dh, int32_t dw, int32_t pt, int32_t pl, int32_t oh, int32_t ow, int32_t x_zp,     \
   int32_t y_zp, int32_t y_lo, int32_t y_hi, int32_t flags)
#define HWCOMP_Q8_DEPTHWISE_PARAMS(TX, TY)                                                   \
  (TX * x, int8_t * w, int32_t * bias, float* mult, TY* y, TX* scratch, int32_t c,           \
   int32_t h, int32_t wd, int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t dh,        \
   int32_t dw, int32_t pt, int32_t pl, int32_t pb, int32_t pr, int32_t oh, int32_t ow,       \
   int32_t x_zp, int32_t y_zp, int32_t y_lo, int32_t y_hi, int32_t flags)

#define HWCOMP_Q8_LUT_PARAMS(TX, TY) (TX * x, TY * table, TY * y, int32_t count, int32_t flags)

/* y[i] = table[x[i] (+ 128 for s8 x)], count elements; y may be x. */
int32_t hwcomp_q8_lut(const void* x, const void* table, void* y, int32_t count, int32_t flags);

/* Calls a macro with each activation type pair: (suffix, x's type, y's type). */
#define HWCOMP_Q8_EACH_TYPE_PAIR(M) \
  M(u8u8, uint8_t, uint8_t)         \
  M(u8s8, uint8_t, int8_t)          \
  M(s8u8, int8_t, uint8_t)          \
  M(s8s8, int8_t, int8_t)

#define HWCOMP_Q8_DECLARE(SUFFIX, TX, TY)                                  \
  int32_t hwcomp_q8_conv_##SUFFIX HWCOMP_Q8_CONV_PARAMS(TX, TY);           \
  int32_t hwcomp_q8_depthwise_##SUFFIX HWCOMP_Q8_DEPTHWISE_PARAMS(TX, TY); \
  int32_t hwcomp_q8_lut_##SUFFIX HWCOMP_Q8_LUT_PARAMS(TX, TY);
HWCOMP_Q8_EACH_TYPE_PAIR(HWCOMP_Q8_DECLARE)
#undef HWCOMP_Q8_DECLARE

#ifdef __cplusplus
}
#endif

#endif /* HWCOMP_Q8_H_ */
