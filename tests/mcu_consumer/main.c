/* Firmware code calling a model through the bundle's C API, with its own arena. */
#include <stdint.h>

#include "model.h"

static uint8_t arena[HWCOMP_KWS_ARENA_BYTES] __attribute__((aligned(HWCOMP_KWS_ARENA_ALIGNMENT)));
static float features[HWCOMP_KWS_IN0_COUNT];
static float scores[HWCOMP_KWS_OUT0_COUNT];

int main(void) {
  return hwcomp_kws_run_with_arena(features, scores, arena);
}
