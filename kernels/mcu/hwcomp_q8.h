/* hwcomp's int8 layer kernels for microcontrollers: convolution (1x1 and fully connected
 * included) and depthwise convolution, u8 or s8 activations, s8 weights, int32 accumulators,
 * onnxruntime's requantization fused:
 *
 *   acc = bias[o] + sum_k x_q * w_q                (bias already holds -z_x * sum_k w_q)
 *   y_q = nearbyint(clamp(float(acc) * mult[o], y_lo, y_hi)) + y_zp
 *
 * (y_lo, y_hi = q_min - y_zp, q_max - y_zp), bit for bit what the TIR kernels they replace
 * computed. Also the float steps between layers (residual add, global mean) and max pooling
 * on 8-bit tensors (below). With Helium (integer and floating-point MVE: Cortex-M55/M85) the convolution
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

/* The float steps between quantized layers, as the QDQ graph writes them and TVM's float code
 * computed them (dequantize, add, clamp, mean, quantize), without the float tensors:
 *
 *   v = table[a] (+ table[256 + b] with HWCOMP_Q8_ADD)     (the dequantized values, float)
 *   v = min(max(v, lo), hi)                                 (ReLU, ReLU6, Clip; +-FLT_MAX: none)
 *   HWCOMP_Q8_MEAN: v = (sum of a channel's plane values, in order, from 0) / divisor
 *   y = nearbyint(clamp(v / y_scale)) + y_zp               (saturated to y's type)
 *
 * table holds float32 (x - z) * s for the 256 values of a (then of b), indexed by the byte
 * (an s8 value's two's complement). a and b are read element by element; y may be a (not with MEAN). With
 * MEAN, y has one value per channel. */
#define HWCOMP_Q8_ADD 4
#define HWCOMP_Q8_MEAN 8
#define HWCOMP_Q8_CLAMP 16 /* lo, hi are an activation's (else +-FLT_MAX, skipped) */
#define HWCOMP_Q8_ELEMENTWISE_PARAMS(TX, TY)                                                 \
  (TX * a, TX * b, float* table, TY* y, int32_t channels, int32_t plane, float divisor,      \
   float y_scale, float lo, float hi, int32_t y_zp, int32_t flags)
int32_t hwcomp_q8_elementwise(const void* a, const void* b, const float* table, void* y,
                              int32_t channels, int32_t plane, float divisor, float y_scale,
                              float lo, float hi, int32_t y_zp, int32_t flags);

/* Max pooling on the 8-bit values (max commutes with dequantize and quantize, both
 * monotone): y = table[max over the window (+ 128 for s8)], the window clipped to the
 * input (padding never wins a max). table maps x's quantization to y's (the identity where
 * they agree). x, y NCHW, batch 1. */
#define HWCOMP_Q8_MAXPOOL_PARAMS(TX, TY)                                                     \
  (TX * x, TY * table, TY * y, int32_t c, int32_t h, int32_t wd, int32_t kh, int32_t kw,     \
   int32_t sh, int32_t sw, int32_t dh, int32_t dw, int32_t pt, int32_t pl, int32_t oh,       \
   int32_t ow, int32_t flags)
int32_t hwcomp_q8_maxpool(const void* x, const void* table, void* y, int32_t c, int32_t h,
                          int32_t wd, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                          int32_t dh, int32_t dw, int32_t pt, int32_t pl, int32_t oh,
                          int32_t ow, int32_t flags);

/* Calls a macro with each activation type pair: (suffix, x's type, y's type). */
#define HWCOMP_Q8_EACH_TYPE_PAIR(M) \
  M(u8u8, uint8_t, uint8_t)         \
  M(u8s8, uint8_t, int8_t)          \
  M(s8u8, int8_t, uint8_t)          \
  M(s8s8, int8_t, int8_t)

#define HWCOMP_Q8_DECLARE(SUFFIX, TX, TY)                                  \
  int32_t hwcomp_q8_conv_##SUFFIX HWCOMP_Q8_CONV_PARAMS(TX, TY);           \
  int32_t hwcomp_q8_depthwise_##SUFFIX HWCOMP_Q8_DEPTHWISE_PARAMS(TX, TY); \
  int32_t hwcomp_q8_lut_##SUFFIX HWCOMP_Q8_LUT_PARAMS(TX, TY);                \
  int32_t hwcomp_q8_elementwise_##SUFFIX HWCOMP_Q8_ELEMENTWISE_PARAMS(TX, TY); \
  int32_t hwcomp_q8_maxpool_##SUFFIX HWCOMP_Q8_MAXPOOL_PARAMS(TX, TY);
HWCOMP_Q8_EACH_TYPE_PAIR(HWCOMP_Q8_DECLARE)
#undef HWCOMP_Q8_DECLARE

#ifdef __cplusplus
}
#endif

#endif /* HWCOMP_Q8_H_ */
