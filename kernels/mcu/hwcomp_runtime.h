/* hwcomp microcontroller runtime shim: what TVM's C kernels need, without TVM's runtime.
 *
 * - TVMBackendAllocWorkspace/FreeWorkspace hand out a kernel's scratch space from the
 *   region of the arena the memory plan reserved for that step (no malloc);
 * - hwcomp_call passes DLTensors to a kernel in TVM's calling convention;
 * - hwcomp_on_error is called when a kernel fails; it is weak, so firmware can define its
 *   own (log, assert, reset).
 *
 * Not thread-safe: one model runs at a time per core, as on a single-core MCU.
 */
#ifndef HWCOMP_RUNTIME_H_
#define HWCOMP_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#include "dlpack/dlpack.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A kernel as TVM's C code generator emits it (arguments checked at compile time). */
typedef int32_t (*hwcomp_kernel_fn)(void* self, void* args, int32_t num_args, void* result);

/* Most arguments one kernel takes (fused kernels read a handful of tensors). */
#define HWCOMP_MAX_KERNEL_ARGS 32

/* Scratch space for the next kernel: [base, base + nbytes). */
void hwcomp_workspace_begin(void* base, size_t nbytes);

/* Call `kernel` on `count` tensors (inputs, then outputs). Returns 0 on success. */
int32_t hwcomp_call(hwcomp_kernel_fn kernel, DLTensor* tensors, int32_t count);

/* Called by hwcomp_call when a kernel returns; does nothing. hwcomp's build counts each
 * kernel call's instructions under qemu between the entries of hwcomp_call and of this
 * function (a TCG plugin marks both addresses; the manifest's "layer_counts"). */
void hwcomp_step_end(void);

/* Called with the model and kernel names and the step when a kernel fails. */
void hwcomp_on_error(const char* model, const char* kernel, int step, int32_t status);

/* Per-layer cycles: with the library compiled with -DHWCOMP_PROFILE, the executor reads
 * hwcomp_cycles() around each kernel call and passes the difference to hwcomp_on_step.
 * hwcomp_on_step is weak (it does nothing): firmware defines it to print or keep the figures.
 * hwcomp_cycles() is the DWT cycle counter (CYCCNT) on Cortex-M3 and up, started on first
 * use (DEMCR.TRCENA, DWT_CTRL.CYCCNTENA; the DWT lock of Cortex-M7 unlocked), 0 elsewhere
 * (Cortex-M0, the host build). Under qemu, which does not model the DWT, it reads 0. */
void hwcomp_on_step(const char* model, const char* kernel, int step, uint32_t cycles);
uint32_t hwcomp_cycles(void);

#ifdef __cplusplus
}
#endif

#endif /* HWCOMP_RUNTIME_H_ */
