/* hwcomp's fp32 layer kernels for microcontrollers (see hwcomp_f32.h). */
#include "hwcomp_f32.h"

#include <math.h>
#include <string.h>

/* a * b + c in one rounding: VFMA on a Cortex-M FPU (GCC does not contract a * b + c under
 * -std=c99), libm's exact fmaf on the host check: the same results on both. */
#define FMA(a, b, c) fmaf((a), (b), (c))

static inline float clamp(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

/* One output pixel's receptive field in (c, ky, kx) order, padding read as 0. */
static void gather(float* col, const float* x, int32_t c, int32_t h, int32_t wd, int32_t kh,
                   int32_t kw, int32_t dh, int32_t dw, int32_t iy0, int32_t ix0) {
  const int32_t plane = h * wd;
  const int inside =
      iy0 >= 0 && iy0 + (kh - 1) * dh < h && ix0 >= 0 && ix0 + (kw - 1) * dw < wd;
  if (inside && kh == 1 && kw == 1) {
    const float* p = x + iy0 * wd + ix0;
    for (int32_t ch = 0; ch < c; ++ch, p += plane) *col++ = *p;
    return;
  }
  for (int32_t ch = 0; ch < c; ++ch) {
    const float* xc = x + ch * plane;
    for (int32_t ky = 0; ky < kh; ++ky) {
      const int32_t iy = iy0 + ky * dh;
      if (iy < 0 || iy >= h) {
        for (int32_t kx = 0; kx < kw; ++kx) *col++ = 0.0f;
        continue;
      }
      const float* row = xc + iy * wd;
      if (inside) {
        for (int32_t kx = 0, ix = ix0; kx < kw; ++kx, ix += dw) *col++ = row[ix];
      } else {
        for (int32_t kx = 0, ix = ix0; kx < kw; ++kx, ix += dw)
          *col++ = (ix >= 0 && ix < wd) ? row[ix] : 0.0f;
      }
    }
  }
}

/* Four weight rows against two columns: 8 sums, per step of the depth 6 loads and 8
 * multiply-adds (VFMA). */
static void dot_4x2(const float* w, int32_t depth, const float* c0, const float* c1,
                    float* acc) {
  const float *w0 = w, *w1 = w + depth, *w2 = w1 + depth, *w3 = w2 + depth;
  float a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
  float a20 = acc[4], a21 = acc[5], a30 = acc[6], a31 = acc[7];
  for (int32_t k = 0; k < depth; ++k) {
    const float x0 = c0[k], x1 = c1[k];
    const float u0 = w0[k], u1 = w1[k], u2 = w2[k], u3 = w3[k];
    a00 = FMA(u0, x0, a00);
    a01 = FMA(u0, x1, a01);
    a10 = FMA(u1, x0, a10);
    a11 = FMA(u1, x1, a11);
    a20 = FMA(u2, x0, a20);
    a21 = FMA(u2, x1, a21);
    a30 = FMA(u3, x0, a30);
    a31 = FMA(u3, x1, a31);
  }
  acc[0] = a00;
  acc[1] = a01;
  acc[2] = a10;
  acc[3] = a11;
  acc[4] = a20;
  acc[5] = a21;
  acc[6] = a30;
  acc[7] = a31;
}

/* One weight row against one or two columns (c1 NULL: one). */
static void dot_1x2(const float* w, int32_t depth, const float* c0, const float* c1,
                    float* acc) {
  float a0 = acc[0], a1 = acc[1];
  if (c1) {
    for (int32_t k = 0; k < depth; ++k) {
      a0 = FMA(w[k], c0[k], a0);
      a1 = FMA(w[k], c1[k], a1);
    }
  } else {
    for (int32_t k = 0; k < depth; ++k) a0 = FMA(w[k], c0[k], a0);
  }
  acc[0] = a0;
  acc[1] = a1;
}

int32_t hwcomp_f32_conv(float* x, float* w, float* bias, float* y, float* scratch, int32_t c,
                        int32_t h, int32_t wd, int32_t oc, int32_t kh, int32_t kw, int32_t sh,
                        int32_t sw, int32_t dh, int32_t dw, int32_t pt, int32_t pl, int32_t oh,
                        int32_t ow, float lo, float hi) {
  const int32_t depth = c * kh * kw, pixels = oh * ow;
  float* col0 = scratch;
  float* col1 = scratch + depth;
  for (int32_t p = 0; p < pixels; p += 2) {
    const int32_t pair = p + 1 < pixels;
    gather(col0, x, c, h, wd, kh, kw, dh, dw, (p / ow) * sh - pt, (p % ow) * sw - pl);
    if (pair) {
      const int32_t q = p + 1;
      gather(col1, x, c, h, wd, kh, kw, dh, dw, (q / ow) * sh - pt, (q % ow) * sw - pl);
    } else {
      /* The last pixel alone: its partner column repeats it (the sums are not stored). */
      memcpy(col1, col0, (size_t)depth * sizeof(float));
    }
    float* out = y + p;
    int32_t o = 0;
    for (; o + 4 <= oc; o += 4, out += 4 * pixels) {
      float acc[8] = {bias[o], bias[o], bias[o + 1], bias[o + 1],
                      bias[o + 2], bias[o + 2], bias[o + 3], bias[o + 3]};
      dot_4x2(w + o * depth, depth, col0, col1, acc);
      for (int32_t r = 0; r < 4; ++r) {
        out[r * pixels] = clamp(acc[2 * r], lo, hi);
        if (pair) out[r * pixels + 1] = clamp(acc[2 * r + 1], lo, hi);
      }
    }
    for (; o < oc; ++o, out += pixels) {
      float acc[2] = {bias[o], bias[o]};
      dot_1x2(w + o * depth, depth, col0, pair ? col1 : 0, acc);
      out[0] = clamp(acc[0], lo, hi);
      if (pair) out[1] = clamp(acc[1], lo, hi);
    }
  }
  return 0;
}

int32_t hwcomp_f32_depthwise(float* x, float* w, float* bias, float* y, float* scratch,
                             int32_t c, int32_t h, int32_t wd, int32_t kh, int32_t kw,
                             int32_t sh, int32_t sw, int32_t dh, int32_t dw, int32_t pt,
                             int32_t pl, int32_t pb, int32_t pr, int32_t oh, int32_t ow,
                             float lo, float hi) {
  const int32_t taps = kh * kw;
  const int padded = pt || pl || pb || pr;
  const int32_t ph = h + pt + pb, pw = wd + pl + pr;
  const int fixed3 = kh == 3 && kw == 3 && dh == 1 && dw == 1;
  for (int32_t ch = 0; ch < c; ++ch) {
    const float* xc = x + ch * h * wd;
    int32_t stride = wd;
    if (padded) {
      for (int32_t i = 0; i < ph * pw; ++i) scratch[i] = 0.0f;
      for (int32_t r = 0; r < h; ++r)
        memcpy(scratch + (r + pt) * pw + pl, xc + r * wd, (size_t)wd * sizeof(float));
      xc = scratch;
      stride = pw;
    }
    const float* wc = w + ch * taps;
    const float b = bias[ch];
    float* out = y + ch * oh * ow;
    if (fixed3) {
      const float w0 = wc[0], w1 = wc[1], w2 = wc[2], w3 = wc[3], w4 = wc[4], w5 = wc[5],
                  w6 = wc[6], w7 = wc[7], w8 = wc[8];
      for (int32_t oy = 0; oy < oh; ++oy) {
        const float* r0 = xc + oy * sh * stride;
        const float* r1 = r0 + stride;
        const float* r2 = r1 + stride;
        for (int32_t ox = 0; ox < ow; ++ox, r0 += sw, r1 += sw, r2 += sw) {
          float acc = FMA(r0[0], w0, b);
          acc = FMA(r0[1], w1, acc);
          acc = FMA(r0[2], w2, acc);
          acc = FMA(r1[0], w3, acc);
          acc = FMA(r1[1], w4, acc);
          acc = FMA(r1[2], w5, acc);
          acc = FMA(r2[0], w6, acc);
          acc = FMA(r2[1], w7, acc);
          acc = FMA(r2[2], w8, acc);
          *out++ = clamp(acc, lo, hi);
        }
      }
    } else {
      for (int32_t oy = 0; oy < oh; ++oy) {
        for (int32_t ox = 0; ox < ow; ++ox) {
          const float* p = xc + oy * sh * stride + ox * sw;
          float acc = b;
          for (int32_t ky = 0; ky < kh; ++ky, p += dh * stride)
            for (int32_t kx = 0; kx < kw; ++kx) acc = FMA(p[kx * dw], wc[ky * kw + kx], acc);
          *out++ = clamp(acc, lo, hi);
        }
      }
    }
  }
  return 0;
}

int32_t hwcomp_f32_dense(float* x, float* w, float* bias, float* y, int32_t rows,
                         int32_t depth, int32_t cols, float lo, float hi) {
  for (int32_t r = 0; r < rows; ++r, x += depth, y += cols) {
    int32_t n = 0;
    for (; n + 4 <= cols; n += 4) {
      const float *w0 = w + n * depth, *w1 = w0 + depth, *w2 = w1 + depth, *w3 = w2 + depth;
      float a0 = bias[n], a1 = bias[n + 1], a2 = bias[n + 2], a3 = bias[n + 3];
      for (int32_t k = 0; k < depth; ++k) {
        const float v = x[k];
        a0 = FMA(w0[k], v, a0);
        a1 = FMA(w1[k], v, a1);
        a2 = FMA(w2[k], v, a2);
        a3 = FMA(w3[k], v, a3);
      }
      y[n] = clamp(a0, lo, hi);
      y[n + 1] = clamp(a1, lo, hi);
      y[n + 2] = clamp(a2, lo, hi);
      y[n + 3] = clamp(a3, lo, hi);
    }
    for (; n < cols; ++n) {
      const float* wn = w + n * depth;
      float a = bias[n];
      for (int32_t k = 0; k < depth; ++k) a = FMA(wn[k], x[k], a);
      y[n] = clamp(a, lo, hi);
    }
  }
  return 0;
}
