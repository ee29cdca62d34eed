"""Shared-library bundles (x86, Arm Cortex-A, CUDA): the ``.so``, TVM runtime libraries, runner.

``bundle`` writes a library bundle's files; ``runtime_libs`` finds the TVM runtime for the
host or for aarch64 (from the PyPI wheels); ``runner`` builds and runs the C++ runner,
natively or under qemu.
"""
