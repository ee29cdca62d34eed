/* The second model: ResNet-8 (prefix hwcomp_rn8), its header by name. */
#include "example_data.h"
#include "hwcomp_rn8.h"

static float out[HWCOMP_RN8_OUT0_COUNT];

double check_second(void) {
  if (hwcomp_rn8_run(example_in0, out) != 0) return -1.0;
  double worst = 0.0;
  for (unsigned i = 0; i < HWCOMP_RN8_OUT0_COUNT; ++i) {
    double d = (double)out[i] - (double)expected_out0[i];
    if (d < 0) d = -d;
    if (d > worst) worst = d;
  }
  return worst;
}
