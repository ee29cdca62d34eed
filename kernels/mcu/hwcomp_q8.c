/* hwcomp's int8 layer kernels for microcontrollers (see hwcomp_q8.h). */
#include "hwcomp_q8.h"

#include <math.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define HWCOMP_Q8_DSP 1
#else
#define HWCOMP_Q8_DSP 0
#endif

/* 1.5 * 2^23: adding it to a float of magnitude below 2^22 leaves the value rounded to an
 * integer, half to even (the default rounding mode), in the low mantissa bits. */
#define HWCOMP_Q8_ROUND 12582912.0f

/* onnxruntime's requantization, in the TIR kernels' order: float multiply, min, max, round
 * half to even, add the zero point. The clamped value is within [-255, 255], so the
 * round trip through 1.5 * 2^23 is nearbyintf's result without a library call (Cortex-M4's
 * FPU has no VRINT). */
static inline int32_t requant(int32_t acc, float mult, float lo, float hi, int32_t zp) {
  float v = (float)acc * mult;
  v = v < hi ? v : hi;
  v = v > lo ? v : lo;
  return (int32_t)((v + HWCOMP_Q8_ROUND) - HWCOMP_Q8_ROUND) + zp;
}

static inline void store(void* y, int32_t index, int32_t value, int32_t flags) {
  if (flags & HWCOMP_Q8_Y_S8) {
    ((int8_t*)y)[index] = (int8_t)value;
  } else {
    ((uint8_t*)y)[index] = (uint8_t)value;
  }
}

/* One output pixel's receptive field as 16-bit values in (c, ky, kx) order, padding read as
 * the input zero point (the K values; the tail up to the padded depth is the caller's).
 * T: the input's element type. */
#define HWCOMP_Q8_GATHER(NAME, T)                                                           \
  static void NAME(int16_t* col, const T* x, int32_t c, int32_t h, int32_t wd, int32_t kh, \
                   int32_t kw, int32_t dh, int32_t dw, int32_t iy0, int32_t ix0,           \
                   int32_t x_zp) {                                                         \
    const int32_t plane = h * wd;                                                          \
    int16_t* out = col;                                                                    \
    const int inside = iy0 >= 0 && iy0 + (kh - 1) * dh < h && ix0 >= 0 &&                  \
                       ix0 + (kw - 1) * dw < wd;                                           \
    if (inside && kh == 1 && kw == 1) {                                                    \
      const T* p = x + iy0 * wd + ix0;                                                     \
      for (int32_t ch = 0; ch < c; ++ch, p += plane) *out++ = *p;                          \
    } else if (inside && kw == 3 && dw == 1) {                                             \
      for (int32_t ch = 0; ch < c; ++ch) {                                                 \
        const T* p = x + ch * plane + iy0 * wd + ix0;                                      \
        for (int32_t ky = 0; ky < kh; ++ky, p += dh * wd, out += 3) {                      \
          out[0] = p[0];                                                                   \
          out[1] = p[1];                                                                   \
          out[2] = p[2];                                                                   \
        }                                                                                  \
      }                                                                                    \
    } else if (inside) {                                                                   \
      for (int32_t ch = 0; ch < c; ++ch) {                                                 \
        const T* p = x + ch * plane + iy0 * wd + ix0;                                      \
        for (int32_t ky = 0; ky < kh; ++ky, p += dh * wd)                                  \
          for (int32_t kx = 0; kx < kw; ++kx) *out++ = p[kx * dw];                         \
      }                                                                                    \
    } else {                                                                               \
      for (int32_t ch = 0; ch < c; ++ch) {                                                 \
        const T* xc = x + ch * plane;                                                      \
        for (int32_t ky = 0; ky < kh; ++ky) {                                              \
          const int32_t iy = iy0 + ky * dh;                                                \
          if (iy < 0 || iy >= h) {                                                         \
            for (int32_t kx = 0; kx < kw; ++kx) *out++ = (int16_t)x_zp;                    \
            continue;                                                                      \
          }                                                                                \
          const T* row = xc + iy * wd;                                                     \
          for (int32_t kx = 0, ix = ix0; kx < kw; ++kx, ix += dw)                          \
            *out++ = (ix >= 0 && ix < wd) ? (int16_t)row[ix] : (int16_t)x_zp;              \
        }                                                                                  \
      }                                                                                    \
    }                                                                                      \
  }

HWCOMP_Q8_GATHER(gather_u8, uint8_t)
HWCOMP_Q8_GATHER(gather_s8, int8_t)

static void gather(int16_t* col, const void* x, int32_t flags, int32_t c, int32_t h,
                   int32_t wd, int32_t kh, int32_t kw, int32_t dh, int32_t dw, int32_t iy0,
                   int32_t ix0, int32_t x_zp) {
  if (flags & HWCOMP_Q8_X_S8) {
    gather_s8(col, (const int8_t*)x, c, h, wd, kh, kw, dh, dw, iy0, ix0, x_zp);
  } else {
    gather_u8(col, (const uint8_t*)x, c, h, wd, kh, kw, dh, dw, iy0, ix0, x_zp);
  }
}

#if HWCOMP_Q8_DSP
/* SXTB16 of the word rotated right by 8 (bytes 1 and 3) in one instruction: GCC emits a
 * separate rotate for __sxtb16 of a rotated value. */
static inline uint32_t sxtb16_ror8(uint32_t v) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}
#endif

static inline uint32_t load32(const void* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* The weight of row `row` at depth k in the w0 w2 w1 w3 order of each group of four. */
static inline int32_t weight_at(const int8_t* row, int32_t k) {
  static const int8_t position[4] = {0, 2, 1, 3};
  return row[(k & ~3) + position[k & 3]];
}

/* acc[i][j] += column j . weight row i over the padded depth, for 2 rows x `cols` columns. */
static void dot_2x2(const int8_t* w0, const int8_t* w1, const int16_t* c0, const int16_t* c1,
                    int32_t depth_pad, int32_t* acc) {
#if HWCOMP_Q8_DSP
  int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
  /* The columns are 4-byte aligned: two words per column and step (LDRD), each weight row
   * one word per step; all four streams post-incremented. */
  const uint32_t* p0 = (const uint32_t*)(const void*)c0;
  const uint32_t* p1 = (const uint32_t*)(const void*)c1;
  const uint32_t* end = p0 + depth_pad / 2;
  while (p0 != end) {
    const uint32_t xa0 = p0[0], xb0 = p0[1], xa1 = p1[0], xb1 = p1[1];
    p0 += 2;
    p1 += 2;
    uint32_t wa = load32(w0), t = __sxtb16(wa);
    w0 += 4;
    a00 = __smlad(xa0, t, a00);
    a01 = __smlad(xa1, t, a01);
    t = sxtb16_ror8(wa);
    a00 = __smlad(xb0, t, a00);
    a01 = __smlad(xb1, t, a01);
    wa = load32(w1);
    w1 += 4;
    t = __sxtb16(wa);
    a10 = __smlad(xa0, t, a10);
    a11 = __smlad(xa1, t, a11);
    t = sxtb16_ror8(wa);
    a10 = __smlad(xb0, t, a10);
    a11 = __smlad(xb1, t, a11);
  }
  acc[0] = a00;
  acc[1] = a01;
  acc[2] = a10;
  acc[3] = a11;
#else
  for (int32_t k = 0; k < depth_pad; ++k) {
    int32_t u = weight_at(w0, k), v = weight_at(w1, k);
    acc[0] += c0[k] * u;
    acc[1] += c1[k] * u;
    acc[2] += c0[k] * v;
    acc[3] += c1[k] * v;
  }
#endif
}

/* One weight row against one column. */
static int32_t dot_1x1(const int8_t* w0, const int16_t* c0, int32_t depth_pad, int32_t acc) {
#if HWCOMP_Q8_DSP
  for (int32_t k = 0; k < depth_pad; k += 4) {
    uint32_t wa = load32(w0 + k);
    acc = __smlad(load32(c0 + k), __sxtb16(wa), acc);
    acc = __smlad(load32(c0 + k + 2), sxtb16_ror8(wa), acc);
  }
#else
  for (int32_t k = 0; k < depth_pad; ++k) acc += c0[k] * weight_at(w0, k);
#endif
  return acc;
}

int32_t hwcomp_q8_conv(const void* x, const int8_t* w, const int32_t* bias, const float* mult,
                       void* y, int16_t* scratch, int32_t c, int32_t h, int32_t wd, int32_t oc, int32_t kh,
                       int32_t kw, int32_t sh, int32_t sw, int32_t dh, int32_t dw, int32_t pt,
                       int32_t pl, int32_t oh, int32_t ow, int32_t x_zp, int32_t y_zp,
                       int32_t y_lo, int32_t y_hi, int32_t flags) {
  const int32_t depth = c * kh * kw, depth_pad = (depth + 3) & ~3;
  int16_t* col0 = scratch;
  int16_t* col1 = col0 + depth_pad;
  /* The columns' padding past K stays zero: the gathers write K values each. */
  for (int32_t k = depth; k < depth_pad; ++k) col0[k] = col1[k] = 0;
  const int32_t pixels = oh * ow;
  const float lo = (float)y_lo, hi = (float)y_hi;
  for (int32_t p = 0; p < pixels; p += 2) {
    const int32_t pair = p + 1 < pixels;
    gather(col0, x, flags, c, h, wd, kh, kw, dh, dw, (p / ow) * sh - pt, (p % ow) * sw - pl,
           x_zp);
    if (pair) {
      int32_t q = p + 1;
      gather(col1, x, flags, c, h, wd, kh, kw, dh, dw, (q / ow) * sh - pt,
             (q % ow) * sw - pl, x_zp);
    }
    int32_t o = 0;
    if (pair) {
      for (; o + 1 < oc; o += 2) {
        int32_t acc[4] = {bias[o], bias[o], bias[o + 1], bias[o + 1]};
        dot_2x2(w + o * depth_pad, w + (o + 1) * depth_pad, col0, col1, depth_pad, acc);
        store(y, o * pixels + p, requant(acc[0], mult[o], lo, hi, y_zp), flags);
        store(y, o * pixels + p + 1, requant(acc[1], mult[o], lo, hi, y_zp), flags);
        store(y, (o + 1) * pixels + p, requant(acc[2], mult[o + 1], lo, hi, y_zp), flags);
        store(y, (o + 1) * pixels + p + 1, requant(acc[3], mult[o + 1], lo, hi, y_zp), flags);
      }
    }
    for (; o < oc; ++o) {
      const int8_t* row = w + o * depth_pad;
      store(y, o * pixels + p,
            requant(dot_1x1(row, col0, depth_pad, bias[o]), mult[o], lo, hi, y_zp), flags);
      if (pair) {
        store(y, o * pixels + p + 1,
              requant(dot_1x1(row, col1, depth_pad, bias[o]), mult[o], lo, hi, y_zp), flags);
      }
    }
  }
  return 0;
}

/* Depthwise convolution over one input type T: per channel, the plane (copied into
 * `scratch` with its padding, the input zero point, where the layer pads) runs row by row
 * without bounds checks; 3x3 undilated windows keep their nine taps in registers. */
#define HWCOMP_Q8_DEPTHWISE(NAME, T)                                                        \
  static void NAME(const T* x, const int8_t* w, const int32_t* bias, const float* mult,    \
                   void* y, T* scratch, int32_t c, int32_t h, int32_t wd, int32_t kh,       \
                   int32_t kw, int32_t sh, int32_t sw, int32_t dh, int32_t dw, int32_t pt,  \
                   int32_t pl, int32_t pb, int32_t pr, int32_t oh, int32_t ow,              \
                   int32_t x_zp, int32_t y_zp, float lo, float hi, int32_t flags) {         \
    const int32_t taps = kh * kw, pixels = oh * ow;                                        \
    const int padded = pt || pl || pb || pr;                                               \
    const int32_t ph = h + pt + pb, pw = wd + pl + pr;                                     \
    const int fixed3 = kh == 3 && kw == 3 && dh == 1 && dw == 1;                           \
    for (int32_t ch = 0; ch < c; ++ch) {                                                   \
      const int8_t* wc = w + ch * taps;                                                    \
      const T* xc = x + ch * h * wd;                                                       \
      int32_t stride = wd;                                                                 \
      if (padded) {                                                                        \
        for (int32_t i = 0; i < ph * pw; ++i) scratch[i] = (T)x_zp;                        \
        for (int32_t r = 0; r < h; ++r) {                                                  \
          T* dst = scratch + (r + pt) * pw + pl;                                           \
          for (int32_t i = 0; i < wd; ++i) dst[i] = xc[r * wd + i];                        \
        }                                                                                  \
        xc = scratch;                                                                      \
        stride = pw;                                                                       \
      }                                                                                    \
      const int32_t b = bias[ch];                                                          \
      const float m = mult[ch];                                                            \
      const int32_t w0 = wc[0], w1 = wc[1 % taps], w2 = wc[2 % taps], w3 = wc[3 % taps],   \
                    w4 = wc[4 % taps], w5 = wc[5 % taps], w6 = wc[6 % taps],               \
                    w7 = wc[7 % taps], w8 = wc[8 % taps];                                  \
      int32_t out = ch * pixels;                                                           \
      for (int32_t oy = 0; oy < oh; ++oy, out += ow) {                                     \
        const T* r0 = xc + oy * sh * stride;                                               \
        if (fixed3) {                                                                      \
          const T* r1 = r0 + stride;                                                       \
          const T* r2 = r1 + stride;                                                       \
          for (int32_t ox = 0, ix = 0; ox < ow; ++ox, ix += sw) {                          \
            int32_t acc = b + r0[ix] * w0 + r0[ix + 1] * w1 + r0[ix + 2] * w2 +            \
                          r1[ix] * w3 + r1[ix + 1] * w4 + r1[ix + 2] * w5 + r2[ix] * w6 +  \
                          r2[ix + 1] * w7 + r2[ix + 2] * w8;                               \
            store(y, out + ox, requant(acc, m, lo, hi, y_zp), flags);                      \
          }                                                                                \
        } else {                                                                           \
          for (int32_t ox = 0; ox < ow; ++ox) {                                            \
            const T* p = r0 + ox * sw;                                                     \
            int32_t acc = b;                                                               \
            for (int32_t ky = 0; ky < kh; ++ky, p += dh * stride)                          \
              for (int32_t kx = 0; kx < kw; ++kx) acc += p[kx * dw] * wc[ky * kw + kx];    \
            store(y, out + ox, requant(acc, m, lo, hi, y_zp), flags);                      \
          }                                                                                \
        }                                                                                  \
      }                                                                                    \
    }                                                                                      \
  }

HWCOMP_Q8_DEPTHWISE(depthwise_u8, uint8_t)
HWCOMP_Q8_DEPTHWISE(depthwise_s8, int8_t)

int32_t hwcomp_q8_depthwise(const void* x, const int8_t* w, const int32_t* bias,
                            const float* mult, void* y, void* scratch, int32_t c, int32_t h,
                            int32_t wd, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                            int32_t dh, int32_t dw, int32_t pt, int32_t pl, int32_t pb,
                            int32_t pr, int32_t oh, int32_t ow, int32_t x_zp, int32_t y_zp,
                            int32_t y_lo, int32_t y_hi, int32_t flags) {
  const float lo = (float)y_lo, hi = (float)y_hi;
  if (flags & HWCOMP_Q8_X_S8) {
    depthwise_s8((const int8_t*)x, w, bias, mult, y, (int8_t*)scratch, c, h, wd, kh, kw, sh,
                 sw, dh, dw, pt, pl, pb, pr, oh, ow, x_zp, y_zp, lo, hi, flags);
  } else {
    depthwise_u8((const uint8_t*)x, w, bias, mult, y, (uint8_t*)scratch, c, h, wd, kh, kw, sh,
                 sw, dh, dw, pt, pl, pb, pr, oh, ow, x_zp, y_zp, lo, hi, flags);
  }
  return 0;
}

/* The entry points (hwcomp_q8.h): the typed names the generated kernels call. */
#define HWCOMP_Q8_ENTRIES(SUFFIX, TX, TY)                                                  \
  int32_t hwcomp_q8_conv_##SUFFIX HWCOMP_Q8_CONV_PARAMS(TX, TY) {                          \
    return hwcomp_q8_conv(x, w, bias, mult, y, scratch, c, h, wd, oc, kh, kw, sh, sw, dh,  \
                          dw, pt, pl, oh, ow, x_zp, y_zp, y_lo, y_hi, flags);              \
  }                                                                                        \
  int32_t hwcomp_q8_depthwise_##SUFFIX HWCOMP_Q8_DEPTHWISE_PARAMS(TX, TY) {                \
    return hwcomp_q8_depthwise(x, w, bias, mult, y, scratch, c, h, wd, kh, kw, sh, sw, dh, \
                               dw, pt, pl, pb, pr, oh, ow, x_zp, y_zp, y_lo, y_hi, flags); \
  }
HWCOMP_Q8_EACH_TYPE_PAIR(HWCOMP_Q8_ENTRIES)
