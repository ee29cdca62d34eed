/* Minimal Cortex-M startup for hwcomp's example firmware on Arm MPS2/MPS3 boards (and qemu).
 *
 * Reset: copy .data from flash, zero .bss, enable the FPU (the code is built for the hard
 * float ABI), open the semihosting console, run constructors, call main, exit through
 * semihosting (qemu ends). A real product replaces this with its vendor's startup file.
 */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__;
extern uint32_t __stack_top__;
extern int main(void);
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);

void Reset_Handler(void);
/* Linked with -nostartfiles: the C library's init/fini hooks have nothing to do here. */
void _init(void) {}
void _fini(void) {}
static void Fault_Handler(void) { exit(3); }

__attribute__((section(".isr_vector"), used))
static void (*const vector_table[16])(void) = {
  (void (*)(void))&__stack_top__, Reset_Handler, Fault_Handler, Fault_Handler,
  Fault_Handler, Fault_Handler, Fault_Handler, 0, 0, 0, 0,
  Fault_Handler, Fault_Handler, 0, Fault_Handler, Fault_Handler,
};

void Reset_Handler(void) {
  uint32_t* src = &__data_load__;
  for (uint32_t* dst = &__data_start__; dst < &__data_end__;) *dst++ = *src++;
  for (uint32_t* dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
#if defined(__ARM_FP)
  /* CPACR: full access to coprocessors 10 and 11 (the FPU). */
  *(volatile uint32_t*)0xE000ED88u |= (0xFu << 20);
  __asm volatile("dsb\n\tisb" ::: "memory");
#endif
  initialise_monitor_handles();
  __libc_init_array();
  exit(main());
}
