"""Cortex-M microcontrollers: C kernels, hwcomp's AOT executor over a planned arena, firmware.

``lowering`` is the family's entry in :data:`hwcomp.lower.LOWERINGS`; ``int8`` the integer
conv/matmul kernels; ``aot`` the call sequence; ``memory_plan`` the arena; ``sources`` the
bundle's C files; ``firmware`` the cross build and the emulated run; ``c_literals`` exact
float constants in C.
"""
