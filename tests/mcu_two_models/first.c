/* The first model: DS-CNN (prefix hwcomp_kws), its header by name. */
#include "example_data.h"
#include "hwcomp_kws.h"

static float out[HWCOMP_KWS_OUT0_COUNT];

double check_first(void) {
  if (hwcomp_kws_run(example_in0, out) != 0) return -1.0;
  double worst = 0.0;
  for (unsigned i = 0; i < HWCOMP_KWS_OUT0_COUNT; ++i) {
    double d = (double)out[i] - (double)expected_out0[i];
    if (d < 0) d = -d;
    if (d > worst) worst = d;
  }
  return worst;
}
