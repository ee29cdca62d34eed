/* Runs a single-input, single-output hwcomp MCU bundle on many samples (host build only).
 *
 * Reads float32 samples of MODEL_IN_COUNT values from stdin until EOF and writes
 * MODEL_OUT_COUNT float32 outputs per sample to stdout. The test compiles it with
 *   -DMODEL_RUN=hwcomp_<model>_run -DMODEL_IN_COUNT=... -DMODEL_OUT_COUNT=...
 */
#include <stdio.h>

#include "model.h"

int main(void) {
  static float input[MODEL_IN_COUNT];
  static float output[MODEL_OUT_COUNT];
  while (fread(input, sizeof(float), MODEL_IN_COUNT, stdin) == MODEL_IN_COUNT) {
    int status = MODEL_RUN(input, output);
    if (status != 0) {
      fprintf(stderr, "run failed: %d\n", status);
      return 2;
    }
    fwrite(output, sizeof(float), MODEL_OUT_COUNT, stdout);
  }
  return 0;
}
