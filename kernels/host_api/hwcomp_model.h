/* hwcomp host bundle C API: load the compiled model (lib/model.so), run it, free it.
 *
 * A thin C layer over the TVM FFI (hwcomp_model.cc), for C and C++ applications that do
 * not want to call TVM's C++ API. Tensors are DLPack's DLTensor (dlpack/dlpack.h, in the
 * bundle's include/): dense, row-major, on the CPU (data, ndim, shape, dtype are read;
 * strides must be NULL). Not thread-safe per model: one run at a time on one model.
 *
 *   char error[256];
 *   hwcomp_model* m = hwcomp_model_load("out/model-host/lib/model.so", error, sizeof error);
 *   if (!m) { fprintf(stderr, "%s\n", error); return 1; }
 *   DLTensor in = {...}, out = {...};              // shapes as the bundle's manifest says
 *   if (hwcomp_model_run(m, &in, 1, &out, 1) != HWCOMP_MODEL_OK) puts(hwcomp_model_error(m));
 *   hwcomp_model_free(m);
 */
#ifndef HWCOMP_MODEL_H_
#define HWCOMP_MODEL_H_

#include <stddef.h>

#include "dlpack/dlpack.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hwcomp_model hwcomp_model;

enum hwcomp_model_status {
  HWCOMP_MODEL_OK = 0,
  HWCOMP_MODEL_ERR_ARGS = -1,    /* wrong tensor count, shape, dtype or a non-dense tensor */
  HWCOMP_MODEL_ERR_RUN = -2      /* the model raised an error while running */
};

/* Load the compiled model; NULL on failure, with the reason in `error` (if given). */
hwcomp_model* hwcomp_model_load(const char* library_path, char* error, size_t error_size);

/* Run once: `inputs` in the model's input order; `outputs` receive copies of its outputs
 * (their shapes and dtypes must match). Returns HWCOMP_MODEL_OK or a status above. */
int hwcomp_model_run(hwcomp_model* model, const DLTensor* inputs, int num_inputs,
                     DLTensor* outputs, int num_outputs);

/* The last error of `model` ("" when none). */
const char* hwcomp_model_error(const hwcomp_model* model);

void hwcomp_model_free(hwcomp_model* model);

#ifdef __cplusplus
}
#endif

#endif /* HWCOMP_MODEL_H_ */
