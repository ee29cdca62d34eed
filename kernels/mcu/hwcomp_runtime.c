/* hwcomp microcontroller runtime shim (see hwcomp_runtime.h). */
#include "hwcomp_runtime.h"

#include "tvm/ffi/c_api.h"

static uint8_t* workspace_base;
static size_t workspace_size;
static size_t workspace_used;

void hwcomp_workspace_begin(void* base, size_t nbytes) {
  workspace_base = (uint8_t*)base;
  workspace_size = nbytes;
  workspace_used = 0;
}

/* Bump allocation inside the step's region; TVM frees in reverse order (LIFO). */
void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                               int dtype_code_hint, int dtype_bits_hint) {
  (void)device_type; (void)device_id; (void)dtype_code_hint; (void)dtype_bits_hint;
  size_t aligned = (size_t)((nbytes + 15u) & ~(uint64_t)15u);
  if (workspace_base == NULL || workspace_used + aligned > workspace_size) {
    return NULL;  /* the kernel returns an error; the plan reserved too little */
  }
  void* ptr = workspace_base + workspace_used;
  workspace_used += aligned;
  return ptr;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  if (ptr != NULL && (uint8_t*)ptr >= workspace_base &&
      (uint8_t*)ptr < workspace_base + workspace_used) {
    workspace_used = (size_t)((uint8_t*)ptr - workspace_base);
  }
  return 0;
}

int32_t hwcomp_call(hwcomp_kernel_fn kernel, DLTensor* tensors, int32_t count) {
  TVMFFIAny args[HWCOMP_MAX_KERNEL_ARGS];
  TVMFFIAny result;
  if (count > HWCOMP_MAX_KERNEL_ARGS) {
    return -2; /* HWCOMP_ERR_KERNEL_ARGS (the model headers' enum) */
  }
  for (int32_t i = 0; i < count; ++i) {
    args[i].type_index = kTVMFFIDLTensorPtr;
    args[i].zero_padding = 0;
    args[i].v_ptr = &tensors[i];
  }
  result.type_index = kTVMFFINone;
  result.zero_padding = 0;
  result.v_int64 = 0;
  const int32_t status = kernel(NULL, args, count, &result);
  hwcomp_step_end();
  return status;
}

/* Not inlined, and its body not empty to the compiler: a fixed address to mark. */
__attribute__((noinline)) void hwcomp_step_end(void) { __asm__ volatile(""); }

__attribute__((weak)) void hwcomp_on_error(const char* model, const char* kernel, int step,
                                           int32_t status) {
  (void)model; (void)kernel; (void)step; (void)status;
}

__attribute__((weak)) void hwcomp_on_step(const char* model, const char* kernel, int step,
                                          uint32_t cycles) {
  (void)model; (void)kernel; (void)step; (void)cycles;
}

uint32_t hwcomp_cycles(void) {
#if defined(__ARM_ARCH_7M__) || defined(__ARM_ARCH_7EM__) || defined(__ARM_ARCH_8M_MAIN__) || \
    defined(__ARM_ARCH_8_1M_MAIN__)
  volatile uint32_t* const demcr = (volatile uint32_t*)0xE000EDFCu;
  volatile uint32_t* const dwt_ctrl = (volatile uint32_t*)0xE0001000u;
  volatile uint32_t* const dwt_cyccnt = (volatile uint32_t*)0xE0001004u;
  volatile uint32_t* const dwt_lar = (volatile uint32_t*)0xE0001FB0u;
  static int started = 0;
  if (!started) {
    *demcr |= 1u << 24;      /* TRCENA: the DWT on */
    *dwt_lar = 0xC5ACCE55u;  /* unlock (Cortex-M7; ignored where there is no lock) */
    *dwt_cyccnt = 0;
    *dwt_ctrl |= 1u;         /* CYCCNTENA */
    started = 1;
  }
  return *dwt_cyccnt;
#else
  return 0;
#endif
}
