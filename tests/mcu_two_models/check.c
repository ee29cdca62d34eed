/* One model's check, compiled once per model (see CMakeLists.txt): runs it on its bundle's
 * verification input and returns the largest difference from onnxruntime's outputs.
 * HEADER, RUN, OUT_COUNT and CHECK name the model's header, run function, output count and
 * this checker. */
#include "example_data.h"
#include HEADER

static float out[OUT_COUNT];

double CHECK(void) {
  if (RUN(example_in0, out) != 0) return -1.0;
  double worst = 0.0;
  for (unsigned i = 0; i < OUT_COUNT; ++i) {
    double d = (double)out[i] - (double)expected_out0[i];
    if (d < 0) d = -d;
    if (d > worst) worst = d;
  }
  return worst;
}
