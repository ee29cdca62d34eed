/* Measured fp32 FMA throughput of this CPU: the "peak" bench/compare_ort.py reports against.
 *
 * Each thread runs ACC independent vector FMA chains (enough to cover the FMA latency of two
 * pipes) entirely in registers; no memory traffic. Build and run (VBYTES: vector bytes):
 *   cc -O2 -march=native -fopenmp -DVBYTES=64 bench/peak_fma.c -o peak && OMP_NUM_THREADS=2 ./peak
 * Prints GFLOP/s (2 per FMA lane) summed over the threads, best of 5 runs.
 */
#include <omp.h>
#include <stdio.h>
#include <time.h>

#ifndef VBYTES
#define VBYTES 32
#endif
#define ACC 12
#define LANES (VBYTES / 4)

typedef float vf __attribute__((vector_size(VBYTES)));

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  const long iterations = 20000000;
  double best = 0.0;
  float sink = 0.0f;
  int threads = omp_get_max_threads();
  for (int run = 0; run < 5; run++) {
    double start = now();
#pragma omp parallel reduction(+ : sink)
    {
      vf acc[ACC], x, y;
      for (int l = 0; l < LANES; l++) {
        x[l] = 0.999f;
        y[l] = 0.001f;
      }
      for (int i = 0; i < ACC; i++) acc[i] = x * (float)i;
      for (long it = 0; it < iterations; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < ACC; i++) acc[i] = acc[i] * x + y;
      }
      for (int i = 0; i < ACC; i++)
        for (int l = 0; l < LANES; l++) sink += acc[i][l];
    }
    double seconds = now() - start;
    double gflops = 2.0 * LANES * ACC * (double)iterations * threads / seconds / 1e9;
    if (gflops > best) best = gflops;
  }
  printf("%.1f\n", best);
  return sink == 12345.0f; /* keeps the chains live */
}
