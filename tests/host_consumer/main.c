/* consumer MODEL.so IN.bin 1x3x32x32 OUT.bin 1x10: one float32 input, one float32 output. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "hwcomp_model.h"

static int parse_shape(const char* text, int64_t* shape) {
  int ndim = 0;
  char* end = NULL;
  while (*text && ndim < 8) {
    shape[ndim++] = strtoll(text, &end, 10);
    text = *end == 'x' ? end + 1 : end;
  }
  return ndim;
}

static int64_t count(const int64_t* shape, int ndim) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

int main(int argc, char** argv) {
  if (argc != 6) return 2;
  int64_t in_shape[8], out_shape[8];
  int in_ndim = parse_shape(argv[3], in_shape), out_ndim = parse_shape(argv[5], out_shape);
  float* in = malloc(sizeof(float) * count(in_shape, in_ndim));
  float* out = malloc(sizeof(float) * count(out_shape, out_ndim));
  FILE* f = fopen(argv[2], "rb");
  if (!f || fread(in, sizeof(float), count(in_shape, in_ndim), f) != (size_t)count(in_shape, in_ndim)) return 3;
  fclose(f);
  char error[512];
  hwcomp_model* model = hwcomp_model_load(argv[1], error, sizeof error);
  if (!model) {
    fprintf(stderr, "%s\n", error);
    return 4;
  }
  DLDataType f32 = {kDLFloat, 32, 1};
  DLDevice cpu = {kDLCPU, 0};
  DLTensor input = {in, cpu, in_ndim, f32, in_shape, NULL, 0};
  DLTensor output = {out, cpu, out_ndim, f32, out_shape, NULL, 0};
  /* A wrong output shape is refused with a status and a reason, nothing written. */
  int64_t wrong[8] = {1, 3};
  DLTensor bad = {out, cpu, 2, f32, wrong, NULL, 0};
  int refused = hwcomp_model_run(model, &input, 1, &bad, 1);
  printf("refused %d: %s\n", refused, hwcomp_model_error(model));
  int status = hwcomp_model_run(model, &input, 1, &output, 1);
  if (status != HWCOMP_MODEL_OK) {
    fprintf(stderr, "run failed (%d): %s\n", status, hwcomp_model_error(model));
    return 5;
  }
  f = fopen(argv[4], "wb");
  fwrite(out, sizeof(float), count(out_shape, out_ndim), f);
  fclose(f);
  hwcomp_model_free(model);
  free(in);
  free(out);
  return 0;
}
