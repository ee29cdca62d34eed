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

/* Helium (the M-profile Vector Extension with its floating point: Cortex-M55/M85): the
 * convolution takes 16 multiply-adds per VMLADAV, the depthwise kernel 4 lanes per VMLA, and
 * both requantize 4 outputs per vector. Integer-only MVE builds take the DSP path. */
#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 3) == 3
#include <arm_mve.h>
#define HWCOMP_Q8_MVE 1
#else
#define HWCOMP_Q8_MVE 0
#endif

/* 1.5 * 2^23: adding it to a float of magnitude below 2^22 leaves the value rounded to an
 * integer, half to even (the default rounding mode), in the low mantissa bits. */
#define HWCOMP_Q8_ROUND 12582912.0f

/* onnxruntime's requantization, in the TIR kernels' order: float multiply, min, max, round
 * half to even, add the zero point. The clamped value is within [-255, 255], so the
 * round trip through 1.5 * 2^23 is nearbyintf's result without a library call (Cortex-M4's
 * FPU has no VRINT). */
static inline int32_t requant(int32_t acc, float mult, float lo, float hi, int32_t zp) {
#if HWCOMP_Q8_DSP && defined(__ARM_FP) && (__ARM_FP & 4)
  /* On the Arm FPU: VCVTR rounds by the FPSCR mode (round to nearest even out of reset, as
   * onnxruntime's nearbyint rounds), and since y_lo, y_hi are the output type's range less
   * the zero point, clamping the rounded integer to the type (USAT on the value less the
   * type's minimum) equals clamping before rounding: 8 instructions for 17. */
  const int32_t q_min = (int32_t)lo + zp;
  (void)hi;
  float r;
  __asm__("vcvtr.s32.f32 %0, %1" : "=t"(r) : "t"((float)acc * mult));
  int32_t q;
  memcpy(&q, &r, sizeof q);
  return (int32_t)__usat(q + zp - q_min, 8) + q_min;
#else
  float v = (float)acc * mult;
  v = v < hi ? v : hi;
  v = v > lo ? v : lo;
  return (int32_t)((v + HWCOMP_Q8_ROUND) - HWCOMP_Q8_ROUND) + zp;
#endif
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

/* The SMLAD dot product's inner loop in assembly: GCC only, optimising (r7, which the loop
 * takes, is Thumb's frame pointer at -O0); elsewhere the C loop. */
#if HWCOMP_Q8_DSP && !HWCOMP_Q8_MVE && defined(__GNUC__) && !defined(__clang__) && \
    defined(__OPTIMIZE__) && defined(__thumb2__)
#define HWCOMP_Q8_DOT_ASM 1
#else
#define HWCOMP_Q8_DOT_ASM 0
#endif

/* The kernels in assembly that also requantize (VCVTR on the Arm FPU): the depthwise 3x3
 * stride-1 rows and the convolution's channel pairs. */
#if HWCOMP_Q8_DOT_ASM && defined(__ARM_FP) && (__ARM_FP & 4)
#define HWCOMP_Q8_REQUANT_ASM 1
#else
#define HWCOMP_Q8_REQUANT_ASM 0
#endif

#if HWCOMP_Q8_DSP
/* SXTB16 / UXTB16 of the word rotated right by 8 (bytes 1 and 3) in one instruction: GCC
 * emits a separate rotate for __sxtb16 of a rotated value. */
static inline uint32_t sxtb16_ror8(uint32_t v) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}
static inline uint32_t uxtb16_ror8(uint32_t v) {
  uint32_t r;
  __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
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

#if HWCOMP_Q8_DOT_ASM
/* One SMLAD step (4 of the depth) of two weight rows against two columns: the sums in
 * r0-r3 (a00 a01 a10 a11), the columns in r4, r5 and the weight rows in r6, r7, all
 * post-incremented; r8-r12 temporaries. dot_2x2 keeps its operands in these registers. */
#define HWCOMP_Q8_DOT_STEP \
  "ldr r9, [r6], #4\n\t"         \
  "sxtb16 r8, r9\n\t"            \
  "sxtb16 r9, r9, ror #8\n\t"    \
  "ldr r11, [r7], #4\n\t"        \
  "sxtb16 r10, r11\n\t"          \
  "sxtb16 r11, r11, ror #8\n\t"  \
  "ldr r12, [r4], #4\n\t"        \
  "smlad r0, r12, r8, r0\n\t"    \
  "smlad r2, r12, r10, r2\n\t"   \
  "ldr r12, [r4], #4\n\t"        \
  "smlad r0, r12, r9, r0\n\t"    \
  "smlad r2, r12, r11, r2\n\t"   \
  "ldr r12, [r5], #4\n\t"        \
  "smlad r1, r12, r8, r1\n\t"    \
  "smlad r3, r12, r10, r3\n\t"   \
  "ldr r12, [r5], #4\n\t"        \
  "smlad r1, r12, r9, r1\n\t"    \
  "smlad r3, r12, r11, r3\n\t"
#endif

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
#if HWCOMP_Q8_DOT_ASM
  /* Pairs of steps in assembly (below); an odd step first, in C. */
  end = p0 + ((depth_pad >> 2) & 1) * 2;
#endif
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
#if HWCOMP_Q8_DOT_ASM
  const uint32_t pairs = (uint32_t)(depth_pad >> 3);
  if (pairs) {
    /* Two steps per iteration: a step is the two weight words unpacked once (r8-r11) and
     * the four column words, each loaded into r12 and used by both rows: 18 instructions
     * for 16 multiply-adds, against GCC's 22. Every core register is taken (4 sums, 4
     * pointers, the count in LR, 5 temporaries), so the operands are pinned to the
     * registers HWCOMP_Q8_DOT_STEP names. */
    register int32_t r_a00 __asm__("r0") = a00;
    register int32_t r_a01 __asm__("r1") = a01;
    register int32_t r_a10 __asm__("r2") = a10;
    register int32_t r_a11 __asm__("r3") = a11;
    register const uint32_t* r_c0 __asm__("r4") = p0;
    register const uint32_t* r_c1 __asm__("r5") = p1;
    register const int8_t* r_w0 __asm__("r6") = w0;
    register const int8_t* r_w1 __asm__("r7") = w1;
    register uint32_t r_n __asm__("lr") = pairs;
    __asm__ volatile(
        "1:\n\t" HWCOMP_Q8_DOT_STEP HWCOMP_Q8_DOT_STEP
        "subs %[n], %[n], #1\n\t"
        "bne 1b\n\t"
        : [a00] "+r"(r_a00), [a01] "+r"(r_a01), [a10] "+r"(r_a10), [a11] "+r"(r_a11),
          [c0] "+r"(r_c0), [c1] "+r"(r_c1), [w0] "+r"(r_w0), [w1] "+r"(r_w1), [n] "+r"(r_n)
        :
        : "r8", "r9", "r10", "r11", "r12", "cc", "memory");
    a00 = r_a00;
    a01 = r_a01;
    a10 = r_a10;
    a11 = r_a11;
  }
#endif
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

#if HWCOMP_Q8_MVE
/* The Helium convolution. Per pair of output pixels the receptive fields are gathered into
 * two 8-bit columns of Kp values in the weights' order (positions 1 and 2 of each group of
 * four swapped, as the SXTB16 layout stores them; padding positions hold anything, their
 * weights are zero), u8 inputs flipped to s8 (x ^ 0x80 = x - 128, the accumulator corrected
 * by 128 * sum_k w). Pixels whose window lies inside the map are gathered 8 at a time by
 * VLDRB gathers over a table of 16-bit offsets built once per call; the others element by
 * element. Then 3 output channels x 2 pixels per step: 2 column loads, 3 weight loads and
 * 6 VMLADAV per 16 depth steps, into one accumulator array per pixel, each requantized 4
 * channels per vector.
 *
 * scratch (4-byte aligned): the two columns interleaved 16 by 16 (32 * ceil(Kp / 16) bytes),
 * the offsets (Kp uint16), the per-channel bias with the u8 correction (OC int32), then
 * the two pixels' accumulators (OC + 3 int32 each): at most 4 * Kp + 12 * OC + 56 bytes. */

/* Position of depth index k in a group-of-four-swapped row. */
static inline int32_t swapped(int32_t k) { return k ^ (((k ^ (k >> 1)) & 1) * 3); }

/* Position of column 0's entry j in the interleaved pair (column 1's is 16 further). */
static inline int32_t interleaved(int32_t j) { return ((j >> 4) << 5) + (j & 15); }

#define HWCOMP_Q8_GATHER8(NAME, T)                                                          \
  static void NAME(int8_t* cols, const T* x, int32_t c, int32_t h, int32_t wd, int32_t kh,  \
                   int32_t kw, int32_t dh, int32_t dw, int32_t iy0, int32_t ix0,           \
                   int32_t x_zp, int32_t flip) {                                           \
    int32_t k = 0;                                                                         \
    for (int32_t ch = 0; ch < c; ++ch) {                                                   \
      const T* xc = x + ch * h * wd;                                                       \
      for (int32_t ky = 0; ky < kh; ++ky) {                                                \
        const int32_t iy = iy0 + ky * dh;                                                  \
        const int row_in = iy >= 0 && iy < h;                                              \
        for (int32_t kx = 0, ix = ix0; kx < kw; ++kx, ix += dw, ++k) {                     \
          const int32_t v = row_in && ix >= 0 && ix < wd ? (int32_t)xc[iy * wd + ix] : x_zp; \
          cols[interleaved(swapped(k))] = (int8_t)(v ^ flip);                              \
        }                                                                                  \
      }                                                                                    \
    }                                                                                      \
  }

HWCOMP_Q8_GATHER8(gather8_u8, uint8_t)
HWCOMP_Q8_GATHER8(gather8_s8, int8_t)

/* Column 1 := column 0 (interleaved 16 by 16 over `chunks` chunks). */
static inline void memcpy_columns(int8_t* cols, int32_t chunks) {
  for (int32_t i = 0; i < chunks; ++i) vstrbq_s8(cols + 32 * i + 16, vldrbq_s8(cols + 32 * i));
}

/* cols[interleaved(j)] = base[offsets[j]] ^ flip for the Kp positions, 8 per VLDRB
 * gather. */
static inline void gather8_vector(int8_t* cols, const uint8_t* base, const uint16_t* offsets,
                                  int32_t depth_pad, uint16x8_t flip) {
  int32_t j = 0;
  uint8_t* out = (uint8_t*)cols;
  for (; j + 16 <= depth_pad; j += 16, out += 32) {
    uint16x8_t v = vldrbq_gather_offset_u16(base, vld1q_u16(offsets + j));
    vstrbq_u16(out, veorq_u16(v, flip));
    v = vldrbq_gather_offset_u16(base, vld1q_u16(offsets + j + 8));
    vstrbq_u16(out + 8, veorq_u16(v, flip));
  }
  for (; j < depth_pad; j += 8, out += 8) { /* Kp is a multiple of 4 */
    mve_pred16_t p = vctp16q((uint32_t)(depth_pad - j));
    uint16x8_t v = vldrbq_gather_offset_z_u16(base, vldrhq_z_u16(offsets + j, p), p);
    vstrbq_p_u16(out, veorq_u16(v, flip), p);
  }
}

/* acc_j[r] += column j . weight row r over the depth past the last multiple of 16 (Kp is a
 * multiple of 4: one predicated step), for `rows` rows. */
static void dot_tail_mve(const int8_t* w, int32_t depth_pad, int32_t rows, const int8_t* cols,
                         int32_t* acc0, int32_t* acc1) {
  const int32_t done = depth_pad & ~15;
  const mve_pred16_t p = vctp8q((uint32_t)(depth_pad - done));
  const int8x16_t x0 = vldrbq_z_s8(cols + 2 * done, p), x1 = vldrbq_z_s8(cols + 2 * done + 16, p);
  for (int32_t r = 0; r < rows; ++r, w += depth_pad) {
    const int8x16_t v = vldrbq_z_s8(w + done, p);
    acc0[r] = vmladavaq_s8(acc0[r], x0, v);
    acc1[r] = vmladavaq_s8(acc1[r], x1, v);
  }
}

/* One block of 3 weight rows against the 2 columns, interleaved 16 by 16 in `cols` (col0's
 * first 16, col1's first 16, ...), over the Kp's multiples of 16 (steps >= 1): the 6 sums
 * stored at *acc0_ and *acc1_, which advance by 3. Assembly whole: VMLADAV accumulates into
 * even registers only (6 sums, r0-r10), the 4 pointers take odd ones (not r7, Thumb's frame
 * pointer at -O0), the count LR, the output pointers r11 and r12; the first 16 steps without
 * accumulating (no zeroing), the rest in an LE loop. GCC spilled the pointers of a C version
 * (36 instructions for 8 VMLADAV; here 12 for 6). */
static inline __attribute__((always_inline)) void dot3_mve(
    const int8_t* row0, const int8_t* row1, const int8_t* row2, const int8_t* cols,
    uint32_t steps, int32_t** acc0_, int32_t** acc1_) {
  register int32_t* acc0 __asm__("r11") = *acc0_;
  register int32_t* acc1 __asm__("r12") = *acc1_;
  register const int8_t* c __asm__("r1") = cols;
  register const int8_t* w0 __asm__("r3") = row0;
  register const int8_t* w1 __asm__("r5") = row1;
  register const int8_t* w2 __asm__("r9") = row2;
  register int32_t a00 __asm__("r0");
  register int32_t a01 __asm__("r2");
  register int32_t a10 __asm__("r4");
  register int32_t a11 __asm__("r6");
  register int32_t a20 __asm__("r8");
  register int32_t a21 __asm__("r10");
  register uint32_t n __asm__("lr") = steps;
  __asm__ volatile(
      "vldrb.8 q0, [%[c], #16]\n\t"
      "vldrb.8 q1, [%[c]], #32\n\t"
      "vldrb.8 q2, [%[w0]], #16\n\t"
      "vmladav.s8 %[a00], q1, q2\n\t"
      "vmladav.s8 %[a01], q0, q2\n\t"
      "vldrb.8 q3, [%[w1]], #16\n\t"
      "vmladav.s8 %[a10], q1, q3\n\t"
      "vmladav.s8 %[a11], q0, q3\n\t"
      "vldrb.8 q2, [%[w2]], #16\n\t"
      "vmladav.s8 %[a20], q1, q2\n\t"
      "vmladav.s8 %[a21], q0, q2\n\t"
      "subs lr, lr, #1\n\t"
      "beq 2f\n"
      "1:\n\t"
      "vldrb.8 q0, [%[c], #16]\n\t"
      "vldrb.8 q1, [%[c]], #32\n\t"
      "vldrb.8 q2, [%[w0]], #16\n\t"
      "vmladava.s8 %[a00], q1, q2\n\t"
      "vmladava.s8 %[a01], q0, q2\n\t"
      "vldrb.8 q3, [%[w1]], #16\n\t"
      "vmladava.s8 %[a10], q1, q3\n\t"
      "vmladava.s8 %[a11], q0, q3\n\t"
      "vldrb.8 q2, [%[w2]], #16\n\t"
      "vmladava.s8 %[a20], q1, q2\n\t"
      "vmladava.s8 %[a21], q0, q2\n\t"
      "le lr, 1b\n"
      "2:\n\t"
      "str %[a00], [%[acc0]], #4\n\t"
      "str %[a10], [%[acc0]], #4\n\t"
      "str %[a20], [%[acc0]], #4\n\t"
      "str %[a01], [%[acc1]], #4\n\t"
      "str %[a11], [%[acc1]], #4\n\t"
      "str %[a21], [%[acc1]], #4\n\t"
      : [c] "+r"(c), [w0] "+r"(w0), [w1] "+r"(w1), [w2] "+r"(w2), [a00] "=&r"(a00),
        [a01] "=&r"(a01), [a10] "=&r"(a10), [a11] "=&r"(a11), [a20] "=&r"(a20),
        [a21] "=&r"(a21), [n] "+r"(n), [acc0] "+r"(acc0), [acc1] "+r"(acc1)
      :
      : "q0", "q1", "q2", "q3", "memory", "cc");
  *acc0_ = acc0;
  *acc1_ = acc1;
}

/* acc_j[r] = column j . weight row r for the OC rows of Kp, 3 rows a block; a last block of
 * fewer rows repeats its last row (3 entries of each array past OC: the caller's slack). */
static void dot_rows_mve(const int8_t* w, int32_t depth_pad, int32_t oc, const int8_t* cols,
                         int32_t* acc0, int32_t* acc1) {
  const uint32_t steps = (uint32_t)(depth_pad >> 4);
  if (steps == 0) { /* Kp < 16: only the tail */
    for (int32_t r = 0; r < oc + 3; ++r) acc0[r] = acc1[r] = 0;
  } else {
    int32_t *out0 = acc0, *out1 = acc1, o = 0;
    const int8_t* row = w;
    for (; o + 3 <= oc; o += 3, row += 3 * depth_pad)
      dot3_mve(row, row + depth_pad, row + 2 * depth_pad, cols, steps, &out0, &out1);
    if (o < oc) {
      const int8_t* row1 = o + 1 < oc ? row + depth_pad : row;
      dot3_mve(row, row1, row1, cols, steps, &out0, &out1);
    }
  }
  if (depth_pad & 15) dot_tail_mve(w, depth_pad, oc, cols, acc0, acc1);
}

/* onnxruntime's requantization of 4 sums (see requant), each by its multiplier: float
 * multiply, clamp to [lo, hi], round to nearest even (VCVTN), add the zero point. */
static inline int32x4_t requant4_mve(int32x4_t acc, float32x4_t mult, float lo, float hi,
                                     int32_t zp) {
  const float32x4_t v = vmaxnmq_f32(vminnmq_f32(vmulq_f32(vcvtq_f32_s32(acc), mult),
                                                vdupq_n_f32(hi)), vdupq_n_f32(lo));
  return vaddq_n_s32(vcvtnq_s32_f32(v), zp);
}

/* Requantize one pixel's OC accumulators (plus the bias), 4 channels per vector, and store
 * them `pixels` apart from y on. */
static void requant_channels_mve(const int32_t* acc, const int32_t* bias, const float* mult,
                                 int32_t oc, uint8_t* y, int32_t pixels, float lo, float hi,
                                 int32_t zp) {
  const uint32x4_t stores = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)pixels);
  int32_t o = 0;
  for (; o + 4 <= oc; o += 4, y += 4 * pixels) {
    const int32x4_t a = vaddq_s32(vldrwq_s32(acc + o), vldrwq_s32(bias + o));
    const int32x4_t q = requant4_mve(a, vldrwq_f32(mult + o), lo, hi, zp);
    vstrbq_scatter_offset_u32(y, stores, vreinterpretq_u32_s32(q));
  }
  if (o < oc) {
    const mve_pred16_t p = vctp32q((uint32_t)(oc - o));
    const int32x4_t a = vaddq_s32(vldrwq_z_s32(acc + o, p), vldrwq_z_s32(bias + o, p));
    const int32x4_t q = requant4_mve(a, vldrwq_z_f32(mult + o, p), lo, hi, zp);
    vstrbq_scatter_offset_p_u32(y, stores, vreinterpretq_u32_s32(q), p);
  }
}

static int32_t conv_mve(const void* x, const int8_t* w, const int32_t* bias, const float* mult,
                        void* y, int16_t* scratch, int32_t c, int32_t h, int32_t wd, int32_t oc,
                        int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t dh, int32_t dw,
                        int32_t pt, int32_t pl, int32_t oh, int32_t ow, int32_t x_zp,
                        int32_t y_zp, int32_t y_lo, int32_t y_hi, int32_t flags) {
  const int32_t depth = c * kh * kw, depth_pad = (depth + 3) & ~3;
  int8_t* cols = (int8_t*)scratch;
  const int32_t chunks = (depth_pad + 15) >> 4;
  uint16_t* offsets = (uint16_t*)(void*)(cols + 32 * chunks);
  int32_t* bias_c = (int32_t*)(void*)(offsets + depth_pad);
  int32_t* acc0 = bias_c + oc;  /* 3 entries of slack after each: dot_rows_mve's last block */
  int32_t* acc1 = acc0 + oc + 3;
  const int32_t x_s8 = flags & HWCOMP_Q8_X_S8, flip = x_s8 ? 0 : 0x80;
  const int32_t plane = h * wd;
  /* The offsets of a window inside the map, relative to its first element, in the
   * columns' order; the padding positions read the first element (their weights are 0). */
  const int32_t span = (c - 1) * plane + (kh - 1) * dh * wd + (kw - 1) * dw;
  const int vector_gather = span < 65536;
  if (vector_gather) {
    for (int32_t j = depth; j < depth_pad; ++j) offsets[swapped(j)] = 0;
    int32_t k = 0;
    for (int32_t ch = 0; ch < c; ++ch)
      for (int32_t ky = 0; ky < kh; ++ky)
        for (int32_t kx = 0; kx < kw; ++kx, ++k)
          offsets[swapped(k)] = (uint16_t)(ch * plane + ky * dh * wd + kx * dw);
  }
  for (int32_t j = 0; j < 32 * chunks; ++j) cols[j] = 0;
  for (int32_t o = 0; o < oc; ++o) {
    int32_t sum = 0;
    if (!x_s8) {
      const int8_t* row = w + o * depth_pad;
      int32_t k = 0;
      for (; k + 16 <= depth_pad; k += 16) sum = vaddvaq_s8(sum, vldrbq_s8(row + k));
      if (k < depth_pad) {
        const mve_pred16_t p = vctp8q((uint32_t)(depth_pad - k));
        sum = vaddvaq_p_s8(sum, vldrbq_z_s8(row + k, p), p);
      }
    }
    bias_c[o] = bias[o] + 128 * sum;
  }
  const uint16x8_t flip_v = vdupq_n_u16((uint16_t)flip);
  const int32_t pixels = oh * ow;
  const float lo = (float)y_lo, hi = (float)y_hi;
  for (int32_t p = 0; p < pixels; p += 2) {
    const int32_t pair = p + 1 < pixels;
    for (int32_t j = 0; j <= pair; ++j) {
      const int32_t q = p + j, iy0 = (q / ow) * sh - pt, ix0 = (q % ow) * sw - pl;
      int8_t* col = cols + 16 * j;
      const int inside = iy0 >= 0 && iy0 + (kh - 1) * dh < h && ix0 >= 0 &&
                         ix0 + (kw - 1) * dw < wd;
      if (inside && vector_gather) {
        gather8_vector(col, (const uint8_t*)x + iy0 * wd + ix0, offsets, depth_pad, flip_v);
      } else if (x_s8) {
        gather8_s8(col, (const int8_t*)x, c, h, wd, kh, kw, dh, dw, iy0, ix0, x_zp, 0);
      } else {
        gather8_u8(col, (const uint8_t*)x, c, h, wd, kh, kw, dh, dw, iy0, ix0, x_zp, flip);
      }
    }
    /* A lone last pixel: the second column repeats the first, its results unused. */
    if (!pair) memcpy_columns(cols, chunks);
    dot_rows_mve(w, depth_pad, oc, cols, acc0, acc1);
    requant_channels_mve(acc0, bias_c, mult, oc, (uint8_t*)y + p, pixels, lo, hi, y_zp);
    if (pair)
      requant_channels_mve(acc1, bias_c, mult, oc, (uint8_t*)y + p + 1, pixels, lo, hi, y_zp);
  }
  return 0;
}
#endif

#if HWCOMP_Q8_REQUANT_ASM
/* The two columns of a pixel pair interleaved for conv_rows: per 4 of the depth, column 0's
 * two words then column 1's, so that one LDM loads a step's four column words. */
static void interleave_columns(int16_t* out, const int16_t* c0, const int16_t* c1,
                               int32_t depth_pad) {
  const uint32_t* a = (const uint32_t*)(const void*)c0;
  const uint32_t* b = (const uint32_t*)(const void*)c1;
  uint32_t* o = (uint32_t*)(void*)out;
  for (int32_t k = 0; k < depth_pad; k += 4, a += 2, b += 2, o += 4) {
    o[0] = a[0];
    o[1] = a[1];
    o[2] = b[0];
    o[3] = b[1];
  }
}

/* Two int32 sums in core registers R0, R1 requantized in place (onnxruntime's arithmetic:
 * float multiply by M0 / M1, VCVTR rounding half to even, the zero point ZP added, SAT
 * (usat / ssat) to 8 bits), through the FPU registers F0, F1; interleaved for the FPU's
 * latencies. The assembly loops below requantize with it. */
#define HWCOMP_Q8_REQUANT2(SAT, R0, R1, F0, F1, M0, M1, ZP)                                 \
  "vmov " F0 ", " R0 "\n\t"                                                                 \
  "vmov " F1 ", " R1 "\n\t"                                                                 \
  "vcvt.f32.s32 " F0 ", " F0 "\n\t"                                                         \
  "vcvt.f32.s32 " F1 ", " F1 "\n\t"                                                         \
  "vmul.f32 " F0 ", " F0 ", " M0 "\n\t"                                                     \
  "vmul.f32 " F1 ", " F1 ", " M1 "\n\t"                                                     \
  "vcvtr.s32.f32 " F0 ", " F0 "\n\t"                                                        \
  "vcvtr.s32.f32 " F1 ", " F1 "\n\t"                                                        \
  "vmov " R0 ", " F0 "\n\t"                                                                 \
  "vmov " R1 ", " F1 "\n\t"                                                                 \
  "add " R0 ", " R0 ", " ZP "\n\t"                                                          \
  "add " R1 ", " R1 ", " ZP "\n\t"                                                          \
  SAT " " R0 ", #8, " R0 "\n\t"                                                             \
  SAT " " R1 ", #8, " R1 "\n\t"

/* Two pixels' 1x1 receptive fields (the channels at offsets off0 and off1 of each plane)
 * straight into interleave_columns' layout; the depth past c (to a multiple of 4) meets zero
 * weights, so it is left as it is. T: the input's element type. */
#define HWCOMP_Q8_GATHER_PAIR_1X1(NAME, T)                                                  \
  static void NAME(int16_t* out, const T* x, int32_t c, int32_t plane, int32_t off0,        \
                   int32_t off1) {                                                         \
    const T* a = x + off0;                                                                 \
    const T* b = x + off1;                                                                 \
    const int32_t p2 = 2 * plane, p3 = 3 * plane, p4 = 4 * plane;                          \
    int32_t k = 0;                                                                         \
    for (; k + 4 <= c; k += 4, a += p4, b += p4, out += 8) {                               \
      out[0] = a[0];                                                                       \
      out[1] = a[plane];                                                                   \
      out[2] = a[p2];                                                                      \
      out[3] = a[p3];                                                                      \
      out[4] = b[0];                                                                       \
      out[5] = b[plane];                                                                   \
      out[6] = b[p2];                                                                      \
      out[7] = b[p3];                                                                      \
    }                                                                                      \
    for (int32_t j = 0; k < c; ++k, ++j, a += plane, b += plane) {                         \
      out[j] = a[0];                                                                       \
      out[4 + j] = b[0];                                                                   \
    }                                                                                      \
  }
HWCOMP_Q8_GATHER_PAIR_1X1(gather_pair_1x1_u8, uint8_t)
HWCOMP_Q8_GATHER_PAIR_1X1(gather_pair_1x1_s8, int8_t)

static void gather_pair_1x1(int16_t* out, const void* x, int32_t flags, int32_t c,
                            int32_t plane, int32_t off0, int32_t off1) {
  if (flags & HWCOMP_Q8_X_S8) {
    gather_pair_1x1_s8(out, (const int8_t*)x, c, plane, off0, off1);
  } else {
    gather_pair_1x1_u8(out, (const uint8_t*)x, c, plane, off0, off1);
  }
}

/* One step (4 of the depth) of two weight rows (r5, r6) against the interleaved columns
 * (r4): one LDM of the four column words (r7-r10), each row's word unpacked into r11, r12;
 * the sums a00 a01 a10 a11 in r0-r3. 15 instructions for 16 multiply-adds. */
#define HWCOMP_Q8_ROWS_STEP           \
  "ldmia r4!, {r7, r8, r9, r10}\n\t"  \
  "ldr r12, [r5], #4\n\t"             \
  "sxtb16 r11, r12\n\t"               \
  "sxtb16 r12, r12, ror #8\n\t"       \
  "smlad r0, r7, r11, r0\n\t"         \
  "smlad r0, r8, r12, r0\n\t"         \
  "smlad r1, r9, r11, r1\n\t"         \
  "smlad r1, r10, r12, r1\n\t"        \
  "ldr r12, [r6], #4\n\t"             \
  "sxtb16 r11, r12\n\t"               \
  "sxtb16 r12, r12, ror #8\n\t"       \
  "smlad r2, r7, r11, r2\n\t"         \
  "smlad r2, r8, r12, r2\n\t"         \
  "smlad r3, r9, r11, r3\n\t"         \
  "smlad r3, r10, r12, r3\n\t"

/* Every pair of output channels against the interleaved columns of a pixel pair, in one
 * assembly loop: per pair the four sums start from the bias, take the steps (ODD: one step
 * first, for a depth of 4 mod 8; then two per iteration, depth_pad >= 8), are requantized
 * (VCVTR, the zero point, SAT) and stored at y[0], y[1], y[pixels], y[pixels + 1], y
 * advancing by 2 * pixels. The loop's state waits in FPU registers while the steps take
 * every core register: 54 instructions a block besides the steps (the C around dot_2x2
 * took 96) and 15 per step (dot_2x2: 18). SAT: usat / ssat (the output type). */
#define HWCOMP_Q8_CONV_ROWS(NAME, SAT, ODD)                                                 \
  static void __attribute__((noinline)) NAME(const int8_t* w, const int16_t* cols,        \
                                             int32_t depth_pad, const int32_t* bias,        \
                                             const float* mult, uint8_t* y, int32_t pixels, \
                                             int32_t pairs, int32_t zp) {                   \
    float s_c, s_w, s_dp, s_b, s_n, s_m, s_zp, s_y, s_px, s_o;                             \
    const int32_t steps = depth_pad >> 3;                                                  \
    memcpy(&s_c, &cols, 4);                                                                \
    memcpy(&s_w, &w, 4);                                                                   \
    memcpy(&s_dp, &depth_pad, 4);                                                          \
    memcpy(&s_b, &bias, 4);                                                                \
    memcpy(&s_n, &steps, 4);                                                               \
    memcpy(&s_m, &mult, 4);                                                                \
    memcpy(&s_zp, &zp, 4);                                                                 \
    memcpy(&s_y, &y, 4);                                                                   \
    memcpy(&s_px, &pixels, 4);                                                             \
    memcpy(&s_o, &pairs, 4);                                                               \
    float f0, f1, f2, f3, m0, m1;                                                          \
    __asm__ volatile(                                                                      \
        "2:\n\t"                                                                           \
        "vmov r4, %[c]\n\t"                                                                \
        "vmov r5, %[w]\n\t"                                                                \
        "vmov r8, %[dp]\n\t"                                                               \
        "add r6, r5, r8\n\t"                                                               \
        "vmov r9, %[b]\n\t"                                                                \
        "ldrd r0, r2, [r9], #8\n\t"                                                        \
        "vmov %[b], r9\n\t"                                                                \
        "mov r1, r0\n\t"                                                                   \
        "mov r3, r2\n\t"                                                                   \
        ODD                                                                                \
        "vmov lr, %[n]\n\t"                                                                \
        "1:\n\t" HWCOMP_Q8_ROWS_STEP HWCOMP_Q8_ROWS_STEP                                   \
        "subs lr, lr, #1\n\t"                                                              \
        "bne 1b\n\t"                                                                       \
        "vmov %[w], r6\n\t"                                                                \
        "vmov r8, %[m]\n\t"                                                                \
        "vldr %[m0], [r8]\n\t"                                                             \
        "vldr %[m1], [r8, #4]\n\t"                                                         \
        "add r8, r8, #8\n\t"                                                               \
        "vmov %[m], r8\n\t"                                                                \
        "vmov r9, %[zp]\n\t"                                                               \
        HWCOMP_Q8_REQUANT2(SAT, "r0", "r1", "%[f0]", "%[f1]", "%[m0]", "%[m0]", "r9")           \
        HWCOMP_Q8_REQUANT2(SAT, "r2", "r3", "%[f2]", "%[f3]", "%[m1]", "%[m1]", "r9")           \
        "vmov r8, %[y]\n\t"                                                                \
        "vmov r9, %[px]\n\t"                                                               \
        "strb r0, [r8]\n\t"                                                                \
        "strb r1, [r8, #1]\n\t"                                                            \
        "add r8, r8, r9\n\t"                                                               \
        "strb r2, [r8]\n\t"                                                                \
        "strb r3, [r8, #1]\n\t"                                                            \
        "add r8, r8, r9\n\t"                                                               \
        "vmov %[y], r8\n\t"                                                                \
        "vmov r8, %[o]\n\t"                                                                \
        "subs r8, r8, #1\n\t"                                                              \
        "vmov %[o], r8\n\t"                                                                \
        "bne 2b\n\t"                                                                       \
        : [w] "+t"(s_w), [b] "+t"(s_b), [m] "+t"(s_m), [y] "+t"(s_y), [o] "+t"(s_o),         \
          [f0] "=&t"(f0), [f1] "=&t"(f1), [f2] "=&t"(f2), [f3] "=&t"(f3), [m0] "=&t"(m0),    \
          [m1] "=&t"(m1)                                                                   \
        : [c] "t"(s_c), [dp] "t"(s_dp), [n] "t"(s_n), [zp] "t"(s_zp),                        \
          [px] "t"(s_px)                                                                   \
        : "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12",  \
          "lr", "cc", "memory");                                                           \
  }
HWCOMP_Q8_CONV_ROWS(conv_rows_u8, "usat", "")
HWCOMP_Q8_CONV_ROWS(conv_rows_s8, "ssat", "")
HWCOMP_Q8_CONV_ROWS(conv_rows_odd_u8, "usat", HWCOMP_Q8_ROWS_STEP)
HWCOMP_Q8_CONV_ROWS(conv_rows_odd_s8, "ssat", HWCOMP_Q8_ROWS_STEP)
#endif

int32_t hwcomp_q8_conv(const void* x, const int8_t* w, const int32_t* bias, const float* mult,
                       void* y, int16_t* scratch, int32_t c, int32_t h, int32_t wd, int32_t oc, int32_t kh,
                       int32_t kw, int32_t sh, int32_t sw, int32_t dh, int32_t dw, int32_t pt,
                       int32_t pl, int32_t oh, int32_t ow, int32_t x_zp, int32_t y_zp,
                       int32_t y_lo, int32_t y_hi, int32_t flags) {
#if HWCOMP_Q8_MVE
  return conv_mve(x, w, bias, mult, y, scratch, c, h, wd, oc, kh, kw, sh, sw, dh, dw, pt, pl,
                  oh, ow, x_zp, y_zp, y_lo, y_hi, flags);
#endif
  const int32_t depth = c * kh * kw, depth_pad = (depth + 3) & ~3;
  int16_t* col0 = scratch;
  int16_t* col1 = col0 + depth_pad;
  /* The columns' padding past K stays zero: the gathers write K values each. */
  for (int32_t k = depth; k < depth_pad; ++k) col0[k] = col1[k] = 0;
  const int32_t pixels = oh * ow;
  const float lo = (float)y_lo, hi = (float)y_hi;
  for (int32_t p = 0; p < pixels; p += 2) {
    const int32_t pair = p + 1 < pixels, q = p + 1;
    const int32_t iy0 = (p / ow) * sh - pt, ix0 = (p % ow) * sw - pl;
    const int32_t iy1 = (q / ow) * sh - pt, ix1 = (q % ow) * sw - pl;
    int32_t o = 0;
#if HWCOMP_Q8_REQUANT_ASM
    /* A 1x1 window inside the map, every channel in pairs: both pixels' values straight
     * into the interleaved columns (no separate columns for the C loops below). */
    const int rows_asm = oc >= 2 && depth_pad >= 8;
    const int direct = pair && rows_asm && kh == 1 && kw == 1 && (oc & 1) == 0 && iy0 >= 0 &&
                       iy0 < h && ix0 >= 0 && ix0 < wd && iy1 >= 0 && iy1 < h && ix1 >= 0 &&
                       ix1 < wd;
#else
    const int direct = 0;
#endif
    if (!direct) {
      gather(col0, x, flags, c, h, wd, kh, kw, dh, dw, iy0, ix0, x_zp);
      if (pair) gather(col1, x, flags, c, h, wd, kh, kw, dh, dw, iy1, ix1, x_zp);
    }
#if HWCOMP_Q8_REQUANT_ASM
    if (pair && rows_asm) {
      /* The interleaved columns after the two (the scratch holds 4 x depth_pad); the
       * type's clamp (y_lo, y_hi are its range less the zero point). */
      int16_t* cols = col1 + depth_pad;
      if (direct) {
        gather_pair_1x1(cols, x, flags, c, h * wd, iy0 * wd + ix0, iy1 * wd + ix1);
      } else {
        interleave_columns(cols, col0, col1, depth_pad);
      }
      /* Depth 4 mod 8: one step before the loop's pairs (the odd variants). */
      const int odd = (depth_pad >> 2) & 1;
      (flags & HWCOMP_Q8_Y_S8 ? (odd ? conv_rows_odd_s8 : conv_rows_s8)
                              : (odd ? conv_rows_odd_u8 : conv_rows_u8))(
          w, cols, depth_pad, bias, mult, (uint8_t*)y + p, pixels, oc / 2, y_zp);
      o = oc & ~1;
    }
#endif
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

#if HWCOMP_Q8_DSP
/* Two outputs of a 3x3 stride-1 row at a time on the DSP extension: one word of each input
 * row (x0 x1 x2 x3) unpacks into (x0, x2) and (x1, x3); with the row's weights as (w0, w2)
 * and w1, out[0] = SMLAD((x0, x2), (w0, w2)) + SMLABB((x1, x3), w1) and out[1] =
 * SMLAD((x1, x3), (w0, w2)) + SMLATB((x0, x2), w1): 18 multiply-adds in 21 instructions.
 * The word ends at ox + 3 <= ow + 1, inside the padded row. Outputs `ostep` apart. */
#define HWCOMP_Q8_DEPTHWISE_PAIRS(T, EXT, EXT_ROR8)                                          \
  if (sw == 1) {                                                                           \
    for (; ox + 1 < len; ox += 2, ix += 2) {                                               \
      int32_t a0 = b, a1 = b;                                                              \
      uint32_t v = load32(r0 + ix), e = EXT(v), o = EXT_ROR8(v);                           \
      a0 = __smlad(e, p02_0, a0);                                                         \
      a0 = __smlabb(o, p1_0, a0);                                                         \
      a1 = __smlad(o, p02_0, a1);                                                         \
      a1 = __smlatb(e, p1_0, a1);                                                         \
      v = load32(r1 + ix), e = EXT(v), o = EXT_ROR8(v);                                    \
      a0 = __smlad(e, p02_1, a0);                                                         \
      a0 = __smlabb(o, p1_1, a0);                                                         \
      a1 = __smlad(o, p02_1, a1);                                                         \
      a1 = __smlatb(e, p1_1, a1);                                                         \
      v = load32(r2 + ix), e = EXT(v), o = EXT_ROR8(v);                                    \
      a0 = __smlad(e, p02_2, a0);                                                         \
      a0 = __smlabb(o, p1_2, a0);                                                         \
      a1 = __smlad(o, p02_2, a1);                                                         \
      a1 = __smlatb(e, p1_2, a1);                                                         \
      store(y, out + ox * ostep, requant(a0, m, lo, hi, y_zp), flags);                     \
      store(y, out + (ox + 1) * ostep, requant(a1, m, lo, hi, y_zp), flags);               \
    }                                                                                      \
  }
#define HWCOMP_Q8_PAIR(A, B) ((uint32_t)(uint16_t)(int16_t)(A) | ((uint32_t)(uint16_t)(int16_t)(B) << 16))
#define HWCOMP_Q8_DEPTHWISE_PACK                                                             \
  const uint32_t p02_0 = HWCOMP_Q8_PAIR(w0, w2), p02_1 = HWCOMP_Q8_PAIR(w3, w5),            \
                 p02_2 = HWCOMP_Q8_PAIR(w6, w8), p1_0 = (uint32_t)(uint16_t)(int16_t)w1,    \
                 p1_1 = (uint32_t)(uint16_t)(int16_t)w4, p1_2 = (uint32_t)(uint16_t)(int16_t)w7;
#else
#define HWCOMP_Q8_DEPTHWISE_PAIRS(T, EXT, EXT_ROR8)
#define HWCOMP_Q8_DEPTHWISE_PACK
#endif

#if HWCOMP_Q8_REQUANT_ASM
/* A channel's 3x3 undilated rows with unit stride along them, in assembly: `rows` rows
 * `rstep` apart from p, each `pairs` pairs of outputs (44 instructions per pair for 18
 * multiply-adds, where GCC's C spills the nine taps and takes 61) and, `odd`, one output
 * more; the three input rows of an output `stride` apart, the taps as in
 * HWCOMP_Q8_DEPTHWISE_PAIRS with w1 and w4 in one word (SMLABT / SMLATT take its top).
 * Each output is requantized (VCVTR, the zero point, USAT / SSAT) and stored `ostep` after
 * the previous one, rows `orow` apart. The odd output reads its rows' word like a pair,
 * one byte past its window (the caller's plane has that byte). Every core register is
 * taken, so the operands are named; the row loop's state waits in FPU registers. EXT:
 * uxtb16 / sxtb16 (the input type), SAT: usat / ssat (the output's). */
#define HWCOMP_Q8_DW3_STEP(EXT, WORD, W, Q, BOT, TOP)                                      \
  "ldr r10, " WORD "\n\t" EXT " r9, r10\n\t" EXT " r10, r10, ror #8\n\t"                    \
  "smlad r7, r9, " W ", r7\n\t"                                                            \
  "smla" BOT " r7, r10, " Q ", r7\n\t"                                                     \
  "smlad r8, r10, " W ", r8\n\t"                                                           \
  "smla" TOP " r8, r9, " Q ", r8\n\t"
#define HWCOMP_Q8_DW3_STEP1(EXT, WORD, W, Q, BOT)                                          \
  "ldr r10, " WORD "\n\t" EXT " r9, r10\n\t" EXT " r10, r10, ror #8\n\t"                    \
  "smlad r7, r9, " W ", r7\n\t"                                                            \
  "smla" BOT " r7, r10, " Q ", r7\n\t"
#define HWCOMP_Q8_DW3_PLANE(NAME, T, EXT, SAT)                                             \
  static void __attribute__((noinline)) NAME(                                              \
      const T* p, int32_t stride, uint32_t p02_0, uint32_t p02_1, uint32_t p02_2,          \
      uint32_t p14, uint32_t p7, int32_t bias, float m, int32_t zp, uint8_t* out,          \
      int32_t ostep, int32_t orow, int32_t pairs, int32_t odd, int32_t rows,               \
      int32_t rstep) {                                                                     \
    float s_bias, s_prow, s_orow, s_rows, s_span, s_odd, s_ostride, s_rstep, s_end;        \
    const int32_t span = 2 * ostep * pairs;                                                \
    memcpy(&s_bias, &bias, 4);                                                             \
    memcpy(&s_prow, &p, 4);                                                                \
    memcpy(&s_orow, &out, 4);                                                              \
    memcpy(&s_rows, &rows, 4);                                                             \
    memcpy(&s_span, &span, 4);                                                             \
    memcpy(&s_odd, &odd, 4);                                                               \
    memcpy(&s_ostride, &orow, 4);                                                          \
    memcpy(&s_rstep, &rstep, 4);                                                           \
    register int32_t r_s __asm__("r1") = stride;                                           \
    register uint32_t r_w0 __asm__("r2") = p02_0;                                          \
    register uint32_t r_w1 __asm__("r3") = p02_1;                                          \
    register uint32_t r_w2 __asm__("r4") = p02_2;                                          \
    register uint32_t r_q1 __asm__("r5") = p14;                                            \
    register uint32_t r_q2 __asm__("r6") = p7;                                             \
    register int32_t r_zp __asm__("r11") = zp;                                             \
    register int32_t r_os __asm__("lr") = ostep;                                           \
    float f0, f1;                                                                          \
    __asm__ volatile(                                                                      \
        "3:\n\t"                                                                           \
        "vmov r0, %[prow]\n\t"                                                             \
        "vmov r12, %[orow]\n\t"                                                            \
        "vmov r9, %[span]\n\t"                                                             \
        "add r9, r12, r9\n\t"                                                              \
        "vmov %[end], r9\n\t"                                                              \
        "1:\n\t"                                                                           \
        "vmov r7, %[sb]\n\t"                                                               \
        "mov r8, r7\n\t"                                                                   \
        HWCOMP_Q8_DW3_STEP(EXT, "[r0]", "%[w0]", "%[q1]", "bb", "tb")                       \
        HWCOMP_Q8_DW3_STEP(EXT, "[r0, %[s]]", "%[w1]", "%[q1]", "bt", "tt")                 \
        HWCOMP_Q8_DW3_STEP(EXT, "[r0, %[s], lsl #1]", "%[w2]", "%[q2]", "bb", "tb")         \
        "adds r0, r0, #2\n\t"                                                              \
        HWCOMP_Q8_REQUANT2(SAT, "r7", "r8", "%[f0]", "%[f1]", "%[m]", "%[m]", "%[zp]")          \
        "strb r8, [r12, %[os]]\n\t"                                                        \
        "strb r7, [r12]\n\t"                                                               \
        "add r12, r12, %[os], lsl #1\n\t"                                                  \
        "vmov r9, %[end]\n\t"                                                              \
        "cmp r12, r9\n\t"                                                                  \
        "bne 1b\n\t"                                                                       \
        "vmov r9, %[odd]\n\t"                                                              \
        "cmp r9, #0\n\t"                                                                   \
        "beq 2f\n\t"                                                                       \
        "vmov r7, %[sb]\n\t"                                                               \
        HWCOMP_Q8_DW3_STEP1(EXT, "[r0]", "%[w0]", "%[q1]", "bb")                             \
        HWCOMP_Q8_DW3_STEP1(EXT, "[r0, %[s]]", "%[w1]", "%[q1]", "bt")                       \
        HWCOMP_Q8_DW3_STEP1(EXT, "[r0, %[s], lsl #1]", "%[w2]", "%[q2]", "bb")               \
        "vmov %[f0], r7\n\t"                                                               \
        "vcvt.f32.s32 %[f0], %[f0]\n\t"                                                    \
        "vmul.f32 %[f0], %[f0], %[m]\n\t"                                                  \
        "vcvtr.s32.f32 %[f0], %[f0]\n\t"                                                   \
        "vmov r7, %[f0]\n\t"                                                               \
        "add r7, r7, %[zp]\n\t"                                                            \
        SAT " r7, #8, r7\n\t"                                                              \
        "strb r7, [r12]\n\t"                                                               \
        "2:\n\t"                                                                           \
        "vmov r9, %[prow]\n\t"                                                             \
        "vmov r10, %[rstep]\n\t"                                                           \
        "add r9, r9, r10\n\t"                                                              \
        "vmov %[prow], r9\n\t"                                                             \
        "vmov r9, %[orow]\n\t"                                                             \
        "vmov r10, %[ostride]\n\t"                                                         \
        "add r9, r9, r10\n\t"                                                              \
        "vmov %[orow], r9\n\t"                                                             \
        "vmov r9, %[rows]\n\t"                                                             \
        "subs r9, r9, #1\n\t"                                                              \
        "vmov %[rows], r9\n\t"                                                             \
        "bne 3b\n\t"                                                                       \
        : [prow] "+t"(s_prow), [orow] "+t"(s_orow), [rows] "+t"(s_rows),                   \
          [end] "=&t"(s_end), [f0] "=&t"(f0), [f1] "=&t"(f1)                                \
        : [s] "r"(r_s), [w0] "r"(r_w0), [w1] "r"(r_w1), [w2] "r"(r_w2), [q1] "r"(r_q1),      \
          [q2] "r"(r_q2), [zp] "r"(r_zp), [os] "r"(r_os), [m] "t"(m), [sb] "t"(s_bias),     \
          [span] "t"(s_span), [odd] "t"(s_odd), [ostride] "t"(s_ostride),                  \
          [rstep] "t"(s_rstep)                                                             \
        : "r0", "r7", "r8", "r9", "r10", "r12", "cc", "memory");                           \
  }
HWCOMP_Q8_DW3_PLANE(dw3_plane_u8u8, uint8_t, "uxtb16", "usat")
HWCOMP_Q8_DW3_PLANE(dw3_plane_u8s8, uint8_t, "uxtb16", "ssat")
HWCOMP_Q8_DW3_PLANE(dw3_plane_s8u8, int8_t, "sxtb16", "usat")
HWCOMP_Q8_DW3_PLANE(dw3_plane_s8s8, int8_t, "sxtb16", "ssat")
/* The whole channel in assembly where its rows have pairs and an odd output's extra byte is
 * inside the plane (the padded copy has it); then on to the next channel. The clamp is the
 * output type's (y_lo, y_hi are its range less the zero point). */
#define HWCOMP_Q8_DW3_CALL(PLANE_U8, PLANE_S8)                                              \
  if (fixed3 && sw == 1 && len >= 2 && (padded || (len & 1) == 0)) {                       \
    (flags & HWCOMP_Q8_Y_S8 ? PLANE_S8 : PLANE_U8)(                                        \
        xc, stride, p02_0, p02_1, p02_2, p1_0 | (p1_1 << 16), p1_2, b, m, y_zp,            \
        (uint8_t*)y + ch * pixels, ostep, orow, len / 2, len & 1, rows, sh * stride);      \
    continue;                                                                              \
  }
#define HWCOMP_Q8_DW3(T) HWCOMP_Q8_DW3_##T
#define HWCOMP_Q8_DW3_uint8_t HWCOMP_Q8_DW3_CALL(dw3_plane_u8u8, dw3_plane_u8s8)
#define HWCOMP_Q8_DW3_int8_t HWCOMP_Q8_DW3_CALL(dw3_plane_s8u8, dw3_plane_s8s8)
#else
#define HWCOMP_Q8_DW3(T)
#endif

/* Depthwise convolution over one input type T: per channel, the plane (copied into
 * `scratch` with its padding, the input zero point, where the layer pads) runs row by row
 * without bounds checks; 3x3 undilated windows keep their nine taps in registers. A padded
 * 3x3 stride-1 plane taller than wide (DS-CNN's 25x5) is copied transposed, with the taps
 * transposed, so that its rows are the long side: fewer rows and fewer odd outputs, the
 * outputs stored `ow` apart. */
#define HWCOMP_Q8_DEPTHWISE(NAME, T, EXT, EXT_ROR8)                                         \
  static void NAME(const T* x, const int8_t* w, const int32_t* bias, const float* mult,    \
                   void* y, T* scratch, int32_t c, int32_t h, int32_t wd, int32_t kh,       \
                   int32_t kw, int32_t sh, int32_t sw, int32_t dh, int32_t dw, int32_t pt,  \
                   int32_t pl, int32_t pb, int32_t pr, int32_t oh, int32_t ow,              \
                   int32_t x_zp, int32_t y_zp, float lo, float hi, int32_t flags) {         \
    const int32_t taps = kh * kw, pixels = oh * ow;                                        \
    const int padded = pt || pl || pb || pr;                                               \
    const int32_t ph = h + pt + pb, pw = wd + pl + pr;                                     \
    const int fixed3 = kh == 3 && kw == 3 && dh == 1 && dw == 1;                           \
    const int tr = fixed3 && padded && sh == 1 && sw == 1 && ow < oh;                      \
    const int32_t rows = tr ? ow : oh, len = tr ? oh : ow;                                 \
    const int32_t ostep = tr ? ow : 1, orow = tr ? 1 : ow;                                 \
    for (int32_t ch = 0; ch < c; ++ch) {                                                   \
      const int8_t* wc = w + ch * taps;                                                    \
      const T* xc = x + ch * h * wd;                                                       \
      int32_t stride = wd;                                                                 \
      if (padded) {                                                                        \
        memset(scratch, (int)(T)x_zp, (size_t)(ph * pw));                                  \
        for (int32_t r = 0; r < h; ++r) {                                                  \
          const T* src = xc + r * wd;                                                      \
          if (tr) {                                                                        \
            T* dst = scratch + pl * ph + r + pt;                                           \
            for (int32_t i = 0; i < wd; ++i, dst += ph) *dst = src[i];                     \
          } else {                                                                         \
            memcpy(scratch + (r + pt) * pw + pl, src, (size_t)wd * sizeof(T));             \
          }                                                                                \
        }                                                                                  \
        xc = scratch;                                                                      \
        stride = tr ? ph : pw;                                                             \
      }                                                                                    \
      const int32_t b = bias[ch];                                                          \
      const float m = mult[ch];                                                            \
      /* The nine taps, transposed with the plane. */                                      \
      const int32_t w0 = wc[0], w1 = wc[(tr ? 3 : 1) % taps], w2 = wc[(tr ? 6 : 2) % taps],\
                    w3 = wc[(tr ? 1 : 3) % taps], w4 = wc[4 % taps],                       \
                    w5 = wc[(tr ? 7 : 5) % taps], w6 = wc[(tr ? 2 : 6) % taps],            \
                    w7 = wc[(tr ? 5 : 7) % taps], w8 = wc[8 % taps];                       \
      HWCOMP_Q8_DEPTHWISE_PACK                                                             \
      HWCOMP_Q8_DW3(T)                                                                     \
      int32_t out = ch * pixels;                                                           \
      for (int32_t row = 0; row < rows; ++row, out += orow) {                              \
        const T* r0 = xc + row * sh * stride;                                              \
        if (fixed3) {                                                                      \
          const T* r1 = r0 + stride;                                                       \
          const T* r2 = r1 + stride;                                                       \
          int32_t ox = 0, ix = 0;                                                          \
          HWCOMP_Q8_DEPTHWISE_PAIRS(T, EXT, EXT_ROR8)                                      \
          for (; ox < len; ++ox, ix += sw) {                                               \
            int32_t acc = b + r0[ix] * w0 + r0[ix + 1] * w1 + r0[ix + 2] * w2 +            \
                          r1[ix] * w3 + r1[ix + 1] * w4 + r1[ix + 2] * w5 + r2[ix] * w6 +  \
                          r2[ix + 1] * w7 + r2[ix + 2] * w8;                               \
            store(y, out + ox * ostep, requant(acc, m, lo, hi, y_zp), flags);              \
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

HWCOMP_Q8_DEPTHWISE(depthwise_u8, uint8_t, __uxtb16, uxtb16_ror8)
HWCOMP_Q8_DEPTHWISE(depthwise_s8, int8_t, __sxtb16, sxtb16_ror8)

#if HWCOMP_Q8_MVE
/* The Helium depthwise convolution over one input type: per channel the plane (padded into
 * `scratch` as in the scalar kernel), then each output row 4 pixels per vector: per tap one
 * widening load (a gather for strides above 1) and one VMLA by the tap's weight, then the 4
 * pixels requantized and narrowed into their bytes. LOAD(p): 4 consecutive elements as
 * int32; GATHER(p, offsets): 4 elements `offsets` apart. */
#define HWCOMP_Q8_DEPTHWISE_MVE(NAME, T, LOAD, LOAD_Z, GATHER)                              \
  static void NAME(const T* x, const int8_t* w, const int32_t* bias, const float* mult,    \
                   uint8_t* y, T* scratch, int32_t c, int32_t h, int32_t wd, int32_t kh,    \
                   int32_t kw, int32_t sh, int32_t sw, int32_t dh, int32_t dw, int32_t pt,  \
                   int32_t pl, int32_t pb, int32_t pr, int32_t oh, int32_t ow,              \
                   int32_t x_zp, int32_t y_zp, float lo, float hi) {                        \
    const int32_t taps = kh * kw, pixels = oh * ow;                                        \
    const int padded = pt || pl || pb || pr;                                               \
    const int32_t ph = h + pt + pb, pw = wd + pl + pr;                                     \
    const int fixed3 = kh == 3 && kw == 3 && dh == 1 && dw == 1 && sw == 1;                \
    const uint32x4_t lanes = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)sw);                \
    const int32_t full = ow & ~3;                                                          \
    const mve_pred16_t tail = vctp32q((uint32_t)(ow - full));                              \
    for (int32_t ch = 0; ch < c; ++ch) {                                                   \
      const int8_t* wc = w + ch * taps;                                                    \
      const T* xc = x + ch * h * wd;                                                       \
      int32_t stride = wd;                                                                 \
      if (padded) {                                                                        \
        memset(scratch, (uint8_t)x_zp, (size_t)(ph * pw));                                 \
        for (int32_t r = 0; r < h; ++r)                                                    \
          memcpy(scratch + (r + pt) * pw + pl, xc + r * wd, (size_t)wd);                   \
        xc = scratch;                                                                      \
        stride = pw;                                                                       \
      }                                                                                    \
      const int32_t b = bias[ch];                                                          \
      const float m = mult[ch];                                                            \
      uint8_t* out = y + ch * pixels;                                                      \
      for (int32_t oy = 0; oy < oh; ++oy, out += ow) {                                     \
        const T* r0 = xc + oy * sh * stride;                                               \
        for (int32_t ox = 0; ox < ow; ox += 4) {                                           \
          const T* p = r0 + ox * sw;                                                       \
          int32x4_t acc = vdupq_n_s32(b);                                                  \
          if (fixed3 && ox < full) {                                                       \
            const T* q = p + stride;                                                       \
            const T* u = q + stride;                                                       \
            acc = vmlaq_n_s32(acc, LOAD(p), wc[0]);                                        \
            acc = vmlaq_n_s32(acc, LOAD(p + 1), wc[1]);                                    \
            acc = vmlaq_n_s32(acc, LOAD(p + 2), wc[2]);                                    \
            acc = vmlaq_n_s32(acc, LOAD(q), wc[3]);                                        \
            acc = vmlaq_n_s32(acc, LOAD(q + 1), wc[4]);                                    \
            acc = vmlaq_n_s32(acc, LOAD(q + 2), wc[5]);                                    \
            acc = vmlaq_n_s32(acc, LOAD(u), wc[6]);                                        \
            acc = vmlaq_n_s32(acc, LOAD(u + 1), wc[7]);                                    \
            acc = vmlaq_n_s32(acc, LOAD(u + 2), wc[8]);                                    \
          } else if (sw == 1 && ox < full) {                                               \
            for (int32_t ky = 0; ky < kh; ++ky)                                            \
              for (int32_t kx = 0; kx < kw; ++kx)                                          \
                acc = vmlaq_n_s32(acc, LOAD(p + ky * dh * stride + kx * dw),               \
                                  wc[ky * kw + kx]);                                       \
          } else if (sw == 1) {                                                            \
            for (int32_t ky = 0; ky < kh; ++ky)                                            \
              for (int32_t kx = 0; kx < kw; ++kx)                                          \
                acc = vmlaq_n_s32(acc, LOAD_Z(p + ky * dh * stride + kx * dw, tail),       \
                                  wc[ky * kw + kx]);                                       \
          } else {                                                                         \
            for (int32_t ky = 0; ky < kh; ++ky)                                            \
              for (int32_t kx = 0; kx < kw; ++kx)                                          \
                acc = vmlaq_n_s32(acc, GATHER(p + ky * dh * stride + kx * dw, lanes,       \
                                              ox < full ? vctp32q(4) : tail),              \
                                  wc[ky * kw + kx]);                                       \
          }                                                                                \
          const int32x4_t q8 = requant4_mve(acc, vdupq_n_f32(m), lo, hi, y_zp);             \
          if (ox < full)                                                                   \
            vstrbq_s32((int8_t*)out + ox, q8);                                             \
          else                                                                             \
            vstrbq_p_s32((int8_t*)out + ox, q8, tail);                                     \
        }                                                                                  \
      }                                                                                    \
    }                                                                                      \
  }

#define HWCOMP_Q8_LOAD_U8(p) vreinterpretq_s32_u32(vldrbq_u32(p))
#define HWCOMP_Q8_LOAD_Z_U8(p, m) vreinterpretq_s32_u32(vldrbq_z_u32(p, m))
#define HWCOMP_Q8_GATHER_U8(p, o, m) \
  vreinterpretq_s32_u32(vldrbq_gather_offset_z_u32(p, o, m))
#define HWCOMP_Q8_LOAD_S8(p) vldrbq_s32(p)
#define HWCOMP_Q8_LOAD_Z_S8(p, m) vldrbq_z_s32(p, m)
#define HWCOMP_Q8_GATHER_S8(p, o, m) vldrbq_gather_offset_z_s32(p, o, m)
HWCOMP_Q8_DEPTHWISE_MVE(depthwise_mve_u8, uint8_t, HWCOMP_Q8_LOAD_U8, HWCOMP_Q8_LOAD_Z_U8,
                        HWCOMP_Q8_GATHER_U8)
HWCOMP_Q8_DEPTHWISE_MVE(depthwise_mve_s8, int8_t, HWCOMP_Q8_LOAD_S8, HWCOMP_Q8_LOAD_Z_S8,
                        HWCOMP_Q8_GATHER_S8)
/* The window kernel's accumulators for `rows` output rows from `row` on (`row_stride`
 * apart in the plane), ow per row at `accs`: `groups` windows of n outputs per row, `step`
 * bytes apart. A row's last window may compute up to n - 1 outputs past it: they land on
 * the next row's first accumulators, which that row then writes (4 of slack after the
 * last). Out of line, with only the loop's state: inlined, GCC spilled it around the loop. */
static void __attribute__((noinline)) window_rows3(const int8_t* row, int32_t row_stride,
                                                   int32_t rows, int32_t groups, int32_t step,
                                                   int32_t ow, uint8x16_t offsets, int8x16_t w0,
                                                   int8x16_t w1, int8x16_t w2, int32_t* accs) {
  for (int32_t r = 0; r < rows; ++r, row += row_stride, accs += ow) {
    const int8_t* p = row;
    int32_t* acc = accs;
    for (int32_t g = 0; g < groups; ++g, p += step, acc += 3) {
      const int8x16_t v = vldrbq_gather_offset_s8(p, offsets);
      acc[0] = vmladavq_s8(v, w0);
      acc[1] = vmladavq_s8(v, w1);
      acc[2] = vmladavq_s8(v, w2);
    }
  }
}

static void __attribute__((noinline)) window_rows(int32_t n, const int8_t* row,
                                                  int32_t row_stride, int32_t rows,
                                                  int32_t groups, int32_t step, int32_t ow,
                                                  uint8x16_t offsets, int8x16_t w0,
                                                  int8x16_t w1, int8x16_t w2, int8x16_t w3,
                                                  int32_t* accs) {
  for (int32_t r = 0; r < rows; ++r, row += row_stride, accs += ow) {
    const int8_t* p = row;
    int32_t* acc = accs;
    for (int32_t g = 0; g < groups; ++g, p += step, acc += n) {
      const int8x16_t v = vldrbq_gather_offset_s8(p, offsets);
      acc[0] = vmladavq_s8(v, w0);
      if (n > 1) acc[1] = vmladavq_s8(v, w1);
      if (n > 2) acc[2] = vmladavq_s8(v, w2);
      if (n > 3) acc[3] = vmladavq_s8(v, w3);
    }
  }
}

/* The Helium depthwise convolution by windows: the channel's plane is copied, padded and
 * flipped to s8 (u8 inputs: x ^ 0x80, the bias corrected by 128 * sum w), into `scratch`;
 * then one VLDRB gather with 8-bit offsets loads the kh x W window of n neighbouring outputs
 * (kh * W <= 16 lanes, W = (kw - 1) * dw + 1 + (n - 1) * sw) and n VMLADAV against the
 * channel's n weight vectors (each output's taps at its columns, zeros elsewhere) give the n
 * accumulators: 3x3 stride 1 takes 3 outputs per gather, 27 multiply-adds in 4 vector
 * instructions. The accumulators of about 64 outputs (whole rows) are requantized 4 per
 * vector. Returns 0 where the window does not fit 16 lanes or 8-bit offsets (the caller
 * then takes the row kernel).
 *
 * scratch: the padded plane (ph * pw bytes + 64 of slack the last windows may read past
 * it), rounded up to 4, then max(ow, 64) + 4 int32 accumulators. */
static int __attribute__((noinline)) depthwise_window_mve(const uint8_t* x, int32_t flip, const int8_t* w,
                                const int32_t* bias, const float* mult, uint8_t* y,
                                uint8_t* scratch, int32_t c, int32_t h, int32_t wd, int32_t kh,
                                int32_t kw, int32_t sh, int32_t sw, int32_t dh, int32_t dw,
                                int32_t pt, int32_t pl, int32_t pb, int32_t pr, int32_t oh,
                                int32_t ow, int32_t x_zp, int32_t y_zp, float lo, float hi) {
  const int32_t ph = h + pt + pb, pw = wd + pl + pr, span = (kw - 1) * dw + 1;
  int32_t n = 0;
  while (n < 4 && kh * (span + n * sw) <= 16) ++n;
  if (n == 0) return 0;
  const int32_t cols = span + (n - 1) * sw;
  if ((kh - 1) * dh * pw + cols - 1 > 255) return 0;
  uint8_t lane_offsets[16] = {0};
  for (int32_t r = 0; r < kh; ++r)
    for (int32_t j = 0; j < cols; ++j) lane_offsets[r * cols + j] = (uint8_t)(r * dh * pw + j);
  const uint8x16_t offsets = vldrbq_u8(lane_offsets);
  /* Accumulators of whole output rows, about 64 at a time: rows are contiguous in y, so
   * the requantization runs over all of them in one vector loop. */
  int32_t* accs = (int32_t*)(void*)(scratch + ((ph * pw + 64 + 3) & ~3));
  const int32_t rows_per_chunk = ow >= 64 ? 1 : 64 / ow;
  const int32_t taps = kh * kw, pixels = oh * ow, step = n * sw, groups = (ow + n - 1) / n;
  const uint8x16_t flip_v = vdupq_n_u8((uint8_t)flip);
  const mve_pred16_t row_lanes = vctp8q((uint32_t)(wd < 16 ? wd : 16));
  /* The border keeps the (flipped) zero point for every channel: written once. */
  if (pt || pb || pl || pr) memset(scratch, (uint8_t)(x_zp ^ flip), (size_t)(ph * pw));
  for (int32_t ch = 0; ch < c; ++ch) {
    /* The plane's interior, flipped. */
    const uint8_t* src = x + ch * h * wd;
    uint8_t* dst = scratch + pt * pw + pl;
    if (wd <= 16) { /* a row per predicated vector, the predicate set once */
      for (int32_t r = 0; r < h; ++r, src += wd, dst += pw)
        vstrbq_p_u8(dst, veorq_u8(vldrbq_z_u8(src, row_lanes), flip_v), row_lanes);
    } else {
      for (int32_t r = 0; r < h; ++r, src += wd, dst += pw) {
        int32_t i = 0;
        for (; i + 16 <= wd; i += 16) vstrbq_u8(dst + i, veorq_u8(vldrbq_u8(src + i), flip_v));
        if (i < wd) {
          const mve_pred16_t p = vctp8q((uint32_t)(wd - i));
          vstrbq_p_u8(dst + i, veorq_u8(vldrbq_z_u8(src + i, p), flip_v), p);
        }
      }
    }
    /* The n weight vectors and the corrected bias. */
    const int8_t* wc = w + ch * taps;
    int8_t lanes[4][16];
    memset(lanes, 0, sizeof lanes);
    int32_t sum = 0;
    for (int32_t ky = 0; ky < kh; ++ky)
      for (int32_t kx = 0; kx < kw; ++kx) {
        const int8_t v = wc[ky * kw + kx];
        sum += v;
        for (int32_t j = 0; j < n; ++j) lanes[j][ky * cols + j * sw + kx * dw] = v;
      }
    const int8x16_t w0 = vldrbq_s8(lanes[0]), w1 = vldrbq_s8(lanes[1]),
                    w2 = vldrbq_s8(lanes[2]), w3 = vldrbq_s8(lanes[3]);
    const int32_t b = bias[ch] + (flip ? 128 * sum : 0);
    const float m = mult[ch];
    uint8_t* out = y + ch * pixels;
    for (int32_t oy0 = 0; oy0 < oh; oy0 += rows_per_chunk) {
      const int32_t rows = oh - oy0 < rows_per_chunk ? oh - oy0 : rows_per_chunk;
      /* A row's last window may compute up to n - 1 outputs past it: they land on the next
       * row's first accumulators, which that row then writes (4 of slack after the last). */
      if (n == 3) {
        window_rows3((const int8_t*)scratch + oy0 * sh * pw, sh * pw, rows, groups, step, ow,
                     offsets, w0, w1, w2, accs);
      } else {
        window_rows(n, (const int8_t*)scratch + oy0 * sh * pw, sh * pw, rows, groups, step, ow,
                    offsets, w0, w1, w2, w3, accs);
      }
      const int32_t count = rows * ow;
      int8_t* o8 = (int8_t*)out + oy0 * ow;
      int32_t i = 0;
      const float32x4_t m_v = vdupq_n_f32(m);
      for (; i + 4 <= count; i += 4)
        vstrbq_s32(o8 + i, requant4_mve(vaddq_n_s32(vldrwq_s32(accs + i), b), m_v, lo, hi, y_zp));
      if (i < count) {
        const mve_pred16_t p = vctp32q((uint32_t)(count - i));
        vstrbq_p_s32(o8 + i, requant4_mve(vaddq_n_s32(vldrwq_s32(accs + i), b), m_v, lo, hi, y_zp),
                     p);
      }
    }
  }
  return 1;
}
#endif

int32_t hwcomp_q8_depthwise(const void* x, const int8_t* w, const int32_t* bias,
                            const float* mult, void* y, void* scratch, int32_t c, int32_t h,
                            int32_t wd, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                            int32_t dh, int32_t dw, int32_t pt, int32_t pl, int32_t pb,
                            int32_t pr, int32_t oh, int32_t ow, int32_t x_zp, int32_t y_zp,
                            int32_t y_lo, int32_t y_hi, int32_t flags) {
  const float lo = (float)y_lo, hi = (float)y_hi;
#if HWCOMP_Q8_MVE
  if (depthwise_window_mve((const uint8_t*)x, flags & HWCOMP_Q8_X_S8 ? 0 : 0x80, w, bias, mult,
                           (uint8_t*)y, (uint8_t*)scratch, c, h, wd, kh, kw, sh, sw, dh, dw,
                           pt, pl, pb, pr, oh, ow, x_zp, y_zp, lo, hi))
    return 0;
  if (flags & HWCOMP_Q8_X_S8) {
    depthwise_mve_s8((const int8_t*)x, w, bias, mult, (uint8_t*)y, (int8_t*)scratch, c, h,
                     wd, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow, x_zp, y_zp, lo, hi);
  } else {
    depthwise_mve_u8((const uint8_t*)x, w, bias, mult, (uint8_t*)y, (uint8_t*)scratch, c, h,
                     wd, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow, x_zp, y_zp, lo, hi);
  }
  return 0;
#endif
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

/* y[i] = table[x[i] (+ 128 for s8 inputs)]: an activation between quantized layers as its
 * 256-entry table; x and y may be the same buffer. On Helium 16 elements per VLDRB gather
 * with the bytes as offsets. */
int32_t hwcomp_q8_lut(const void* x, const void* table, void* y, int32_t count, int32_t flags) {
  const uint8_t* in = (const uint8_t*)x;
  const uint8_t* t = (const uint8_t*)table;
  uint8_t* out = (uint8_t*)y;
  const uint8_t flip = flags & HWCOMP_Q8_X_S8 ? 0x80 : 0;
#if HWCOMP_Q8_MVE
  const uint8x16_t flip_v = vdupq_n_u8(flip);
  int32_t i = 0;
  for (; i + 16 <= count; i += 16)
    vstrbq_u8(out + i, vldrbq_gather_offset_u8(t, veorq_u8(vldrbq_u8(in + i), flip_v)));
  if (i < count) {
    const mve_pred16_t p = vctp8q((uint32_t)(count - i));
    const uint8x16_t v = veorq_u8(vldrbq_z_u8(in + i, p), flip_v);
    vstrbq_p_u8(out + i, vldrbq_gather_offset_z_u8(t, v, p), p);
  }
#else
  int32_t i = 0;
  for (; i + 4 <= count; i += 4) { /* four loads before four stores: x and y may alias */
    const uint8_t a = t[in[i] ^ flip], b = t[in[i + 1] ^ flip], c = t[in[i + 2] ^ flip],
                  d = t[in[i + 3] ^ flip];
    out[i] = a;
    out[i + 1] = b;
    out[i + 2] = c;
    out[i + 3] = d;
  }
  for (; i < count; ++i) out[i] = t[in[i] ^ flip];
#endif
  return 0;
}

#define HWCOMP_Q8_LUT_ENTRY(SUFFIX, TX, TY)                                              \
  int32_t hwcomp_q8_lut_##SUFFIX HWCOMP_Q8_LUT_PARAMS(TX, TY) {                          \
    return hwcomp_q8_lut(x, table, y, count, flags);                                     \
  }
HWCOMP_Q8_EACH_TYPE_PAIR(HWCOMP_Q8_LUT_ENTRY)

/* The float steps between layers (hwcomp_q8.h): each as TVM's float code wrote it, the
 * dequantized values read from the table, so no product is formed (or fused) here.
 *
 * Min and max: VMAXNM / VMINNM where the FPU has them (FPv5: Cortex-M7 with the
 * double-precision unit, Armv8.1-M), a compare elsewhere; they differ only on NaN (none
 * here) and on which zero they return (both quantize to the zero point). */
#if defined(__arm__) && defined(__ARM_FP) && ((__ARM_FP & 8) || __ARM_ARCH >= 8)
#define HWCOMP_Q8_FMAX(a, b) __builtin_fmaxf(a, b)
#define HWCOMP_Q8_FMIN(a, b) __builtin_fminf(a, b)
#else
#define HWCOMP_Q8_FMAX(a, b) ((a) < (b) ? (b) : (a))
#define HWCOMP_Q8_FMIN(a, b) ((a) > (b) ? (b) : (a))
#endif

/* nearbyint of w, |w| <= 255 after the clamp: VCVTR (the FPSCR's round to nearest even) on
 * the Arm FPU, the 1.5 * 2^23 round trip elsewhere. */
static inline int32_t round_small(float w) {
#if defined(__arm__) && defined(__ARM_FP) && (__ARM_FP & 4)
  float r;
  __asm__("vcvtr.s32.f32 %0, %1" : "=t"(r) : "t"(w));
  int32_t q;
  memcpy(&q, &r, sizeof q);
  return q;
#else
  return (int32_t)((w + HWCOMP_Q8_ROUND) - HWCOMP_Q8_ROUND);
#endif
}

/* Elementwise: the activation's clamp of v and the output type's clamp of v / y_scale are
 * one clamp of v / y_scale, to [max(lo / s, w_lo), min(hi / s, w_hi)]: dividing by s > 0
 * rounds monotonically, so fl(v / s) is below fl(lo / s) exactly when v is below lo. */
#define HWCOMP_Q8_ELEMENTWISE_LOOP(NAME, T, VALUE)                                         \
  static void NAME(const uint8_t* pa, const uint8_t* pb, const float* ta, const float* tb, \
                   T* out, int32_t count, float y_scale, float w_lo, float w_hi,           \
                   int32_t y_zp) {                                                         \
    (void)pb, (void)tb;                                                                    \
    for (int32_t i = 0; i < count; ++i) {                                                  \
      const float w = HWCOMP_Q8_FMIN(HWCOMP_Q8_FMAX((VALUE) / y_scale, w_lo), w_hi);       \
      out[i] = (T)(round_small(w) + y_zp);                                                 \
    }                                                                                      \
  }
HWCOMP_Q8_ELEMENTWISE_LOOP(add_u8, uint8_t, ta[pa[i]] + tb[pb[i]])
HWCOMP_Q8_ELEMENTWISE_LOOP(add_s8, int8_t, ta[pa[i]] + tb[pb[i]])
HWCOMP_Q8_ELEMENTWISE_LOOP(one_u8, uint8_t, ta[pa[i]])
HWCOMP_Q8_ELEMENTWISE_LOOP(one_s8, int8_t, ta[pa[i]])

/* One channel's sum for the mean, in order from 0 as TVM's reduction adds; specialised by
 * the constant add / clamp of each call site. */
static inline __attribute__((always_inline)) float plane_sum(const uint8_t* pa,
                                                             const uint8_t* pb,
                                                             const float* ta, const float* tb,
                                                             int32_t n, int add, int clamp,
                                                             float lo, float hi) {
  float acc = 0.0f;
  for (int32_t i = 0; i < n; ++i) {
    float v = add ? ta[pa[i]] + tb[pb[i]] : ta[pa[i]];
    if (clamp) v = HWCOMP_Q8_FMIN(HWCOMP_Q8_FMAX(v, lo), hi);
    acc = acc + v;
  }
  return acc;
}

int32_t hwcomp_q8_elementwise(const void* a, const void* b, const float* table, void* y,
                              int32_t channels, int32_t plane, float divisor, float y_scale,
                              float lo, float hi, int32_t y_zp, int32_t flags) {
  const uint8_t* pa = (const uint8_t*)a;
  const uint8_t* pb = (const uint8_t*)b;
  const float* tb = table + 256;
  const int32_t q_min = flags & HWCOMP_Q8_Y_S8 ? -128 : 0;
  float w_lo = (float)(q_min - y_zp), w_hi = (float)(q_min + 255 - y_zp);
  const int add = (flags & HWCOMP_Q8_ADD) != 0;
  if (flags & HWCOMP_Q8_MEAN) {
    const int clamp = (flags & HWCOMP_Q8_CLAMP) != 0;
    for (int32_t ch = 0; ch < channels; ++ch) {
      const uint8_t* ca = pa + ch * plane;
      const uint8_t* cb = add ? pb + ch * plane : pb;
      const float acc =
          add ? (clamp ? plane_sum(ca, cb, table, tb, plane, 1, 1, lo, hi)
                       : plane_sum(ca, cb, table, tb, plane, 1, 0, lo, hi))
              : (clamp ? plane_sum(ca, cb, table, tb, plane, 0, 1, lo, hi)
                       : plane_sum(ca, cb, table, tb, plane, 0, 0, lo, hi));
      const float w = HWCOMP_Q8_FMIN(HWCOMP_Q8_FMAX((acc / divisor) / y_scale, w_lo), w_hi);
      store(y, ch, round_small(w) + y_zp, flags);
    }
    return 0;
  }
  w_lo = HWCOMP_Q8_FMAX(lo / y_scale, w_lo);
  w_hi = HWCOMP_Q8_FMIN(hi / y_scale, w_hi);
  const int32_t count = channels * plane;
  if (flags & HWCOMP_Q8_Y_S8) {
    (add ? add_s8 : one_s8)(pa, pb, table, tb, (int8_t*)y, count, y_scale, w_lo, w_hi, y_zp);
  } else {
    (add ? add_u8 : one_u8)(pa, pb, table, tb, (uint8_t*)y, count, y_scale, w_lo, w_hi, y_zp);
  }
  return 0;
}

int32_t hwcomp_q8_maxpool(const void* x, const void* table, void* y, int32_t c, int32_t h,
                          int32_t wd, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                          int32_t dh, int32_t dw, int32_t pt, int32_t pl, int32_t oh,
                          int32_t ow, int32_t flags) {
  /* Unsigned compares on the bytes XOR the flip order s8 values too. */
  const uint8_t* in = (const uint8_t*)x;
  const uint8_t* t = (const uint8_t*)table;
  uint8_t* out = (uint8_t*)y;
  const uint8_t flip = flags & HWCOMP_Q8_X_S8 ? 0x80 : 0;
  for (int32_t ch = 0; ch < c; ++ch) {
    const uint8_t* plane = in + ch * h * wd;
    for (int32_t oy = 0; oy < oh; ++oy) {
      for (int32_t ox = 0; ox < ow; ++ox) {
        uint8_t best = 0;
        for (int32_t ky = 0; ky < kh; ++ky) {
          const int32_t iy = oy * sh - pt + ky * dh;
          if (iy < 0 || iy >= h) continue;
          for (int32_t kx = 0; kx < kw; ++kx) {
            const int32_t ix = ox * sw - pl + kx * dw;
            if (ix < 0 || ix >= wd) continue;
            const uint8_t v = plane[iy * wd + ix] ^ flip;
            best = v > best ? v : best;
          }
        }
        out[(ch * oh + oy) * ow + ox] = t[best];
      }
    }
  }
  return 0;
}

#define HWCOMP_Q8_FLOAT_STEP_ENTRIES(SUFFIX, TX, TY)                                       \
  int32_t hwcomp_q8_elementwise_##SUFFIX HWCOMP_Q8_ELEMENTWISE_PARAMS(TX, TY) {            \
    return hwcomp_q8_elementwise(a, b, table, y, channels, plane, divisor, y_scale, lo, hi, \
                                 y_zp, flags);                                             \
  }                                                                                        \
  int32_t hwcomp_q8_maxpool_##SUFFIX HWCOMP_Q8_MAXPOOL_PARAMS(TX, TY) {                    \
    return hwcomp_q8_maxpool(x, table, y, c, h, wd, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, \
                             flags);                                                       \
  }
HWCOMP_Q8_EACH_TYPE_PAIR(HWCOMP_Q8_FLOAT_STEP_ENTRIES)
