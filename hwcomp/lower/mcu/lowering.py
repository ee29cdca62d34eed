"""Lowering for Cortex-M microcontrollers (``family = "mcu"``): C sources, not a library.

``compile`` turns the Relax module into an :class:`~hwcomp.lower.mcu.aot.AotProgram` (TVM's
``c`` kernels, hwcomp's call sequence and arena plan). ``package`` writes the sources,
compiles the library for the target to measure flash, RAM and stack against the profile's
budgets, and links the example firmware for the emulated board. ``execute`` runs that
firmware under ``qemu-system-arm`` and the same C built for this machine; both are compared
with onnxruntime.

Why C from TVM's ``c`` target rather than object code from LLVM ``thumbv7em``: the bundle is
source a firmware team builds with its own compiler, flags and linker script (and can
read); the ``c`` kernels need only two runtime symbols, which the shim provides.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hwcomp.errors import MemoryBudgetError, ToolchainError
from hwcomp.lower.frontend.relax_import import import_checked
from hwcomp.lower.kernel_spec import KernelSpec
from hwcomp.lower.mcu import firmware
from hwcomp.lower.mcu.aot import AotProgram, build_program, check_mcu_supported
from hwcomp.lower.mcu.fp32 import rewrite_fp32_layers
from hwcomp.lower.mcu.int8 import C_INT8, rewrite_int8_layers
from hwcomp.lower.mcu.sources import Sources, c_prefix, sources_in, write_sources
from hwcomp.lower.types import BundleInfo, Compiled, Prepared, RunnerResult
from hwcomp.targets import Target

logger = logging.getLogger(__name__)


class McuLowering:
    """Arm Cortex-M (``family = "mcu"``)."""

    family = "mcu"
    builds_runner = False
    tunable = False
    kernel_timing = "counted"  # C for a board: its build counts each call's instructions
    # hwcomp's C kernels fold BatchNorm, clamp (ReLU, ReLU6, Clip) and requantize as they
    # store; a residual add or another activation is a kernel call of its own.
    epilogue_ops = frozenset({"BatchNormalization", "Relu", "Clip", "QuantizeLinear",
                              "DequantizeLinear"})
    rpc_device = ""  # C sources for a firmware: flash the example on a board instead

    def required_tools(self, target: Target) -> list[tuple[str, str]]:
        """Return the cross compiler (sizes, firmware) and the host compiler (host check)."""
        return [(target.cross_compiler, target.cross_package), ("gcc", "gcc")]

    def int8_kernel(self, target: Target) -> KernelSpec | None:
        """Hwcomp's int8 C kernels (u8 x s8, requantization fused), on every Cortex-M."""
        return C_INT8

    def prepare(self, legal: onnx.ModelProto, target: Target) -> Prepared:
        """Refuse what the executor cannot run or flash cannot hold; import; C kernels.

        int8 layers on hwcomp_q8.c, the float layers left on hwcomp_f32.c.
        """
        check_mcu_supported(legal)
        _check_weights_fit(legal, target)
        module, kernels = rewrite_int8_layers(import_checked(legal), target)
        module, kernels.float_ops, float_macs = rewrite_fp32_layers(module)
        kernels.macs.update(float_macs)
        return Prepared(module, kernels)

    def compile(self, mod: Any, target: Target, database: Path | None = None,
                name: str = "model") -> Compiled:
        """Generate C kernels and the call sequence (tuning databases do not apply)."""
        return Compiled(build_program(mod, target, c_prefix(name)))

    def package(self, executable: AotProgram, target: Target, staging: Path,
                info: BundleInfo) -> dict[str, Any]:
        """Write the sources, check the budgets, link the example firmware."""
        prefix = c_prefix(info.model_name)
        sources = write_sources(
            staging, executable, target, prefix=prefix, model_file=info.model_file,
            inputs=info.inputs, outputs=info.outputs, example_inputs=info.example_inputs,
            example_outputs=info.example_outputs, tolerance=info.tolerance,
            model_sha256=info.model_sha256, macs=info.macs, kernel_macs=info.kernel_macs)
        plan = executable.plan
        with firmware.scratch_dir() as scratch:
            objects = firmware.compile_library(sources, target, Path(scratch))
            sizes = firmware.library_sizes(objects, target)
            report = {
                "prefix": prefix,
                "arena": plan.to_dict(),
                "library": sizes.to_dict(),
                "budget": {"flash_bytes": target.flash_bytes, "sram_bytes": target.sram_bytes},
                "weights_bytes": sum(int(a.nbytes) for a in executable.constants.values()),
                "kernels": len(executable.calls),
            }
            kernel_args = {call.kernel: [_arg_type(executable.tensors[name]) for name in call.args]
                           for call in executable.calls}
            _check_budget(info.model_file, target, sizes, plan.arena_bytes)
            machine = firmware.board_for(target)
            if machine is not None:
                report["firmware"] = _firmware(objects, sources, target, staging, machine, sizes)
        logger.info("flash %d bytes, RAM %d bytes (arena %d) of %d / %d", sizes.flash, sizes.ram,
                    plan.arena_bytes, target.flash_bytes, target.sram_bytes)
        return {"mcu": report, "kernel_args": kernel_args}

    def not_run_reason(self, target: Target) -> str | None:
        """Verification always runs: on this machine, and on the emulated board if known."""
        return None

    def verify_ways(self, target: Target) -> dict[str, str | None]:
        """Say which ways run: the C built here (``host``), the firmware on qemu (``emulator``)."""
        emulator = None
        if not target.emulator:
            emulator = f"target '{target.name}' names no emulated board"
        elif not shutil.which(target.emulator):
            emulator = f"{target.emulator} is missing (apt-get install {target.emulator_package})"
        return {"host": None, "emulator": emulator}

    def execute(self, bundle: Path, target: Target, inputs: list[np.ndarray],
                way: str = "auto") -> RunnerResult:
        """Run the example (it embeds the verification inputs) under qemu and on the host.

        ``auto``: both where qemu is here (the emulated board's outputs compared first, the
        host build's in ``also``); ``host`` / ``emulator``: that one only.
        """
        del inputs  # compiled into example/example_data.h by package()
        shapes, dtypes = _output_layout(bundle)
        sources = sources_in(bundle)
        elf = bundle / "bin" / "firmware.elf"
        board_reason = self.verify_ways(target)["emulator"]
        if way == "emulator" and not elf.is_file():
            raise ToolchainError("--verify emulator: no firmware for the emulated board (the "
                                 "model does not fit it, or the profile names none: see the "
                                 "warning above); use --verify host")
        host_outputs = None
        if way != "emulator":
            with firmware.scratch_dir() as scratch:
                host = firmware.run_on_host(sources, Path(scratch))
            host_outputs = firmware.parse_outputs(host, dtypes, shapes)
        if way == "host" or not elf.is_file() or (way == "auto" and board_reason):
            if way == "auto" and board_reason and elf.is_file():
                logger.warning("the emulated board does not run here (%s): verified on the "
                               "host build of the C only", board_reason)
            assert host_outputs is not None
            return RunnerResult(outputs=host_outputs, timing="host build of the C (no board)")
        board = " ".join([target.emulator, *target.emulator_args])
        try:
            counted = firmware.count_firmware(elf, target)
            output = counted.output
            steps = [(step.kernel, step.instructions) for step in counted.steps]
            how = (f"qemu TCG plugin (kernels/qemu/insn_count.c) on {board}: each kernel call "
                   "from hwcomp_call's entry to hwcomp_step_end's")
        except ToolchainError as error:  # no plugin here: run it uncounted
            logger.warning("no per-layer instruction counts: %s", error)
            output, steps, how = firmware.run_firmware(elf, target), [], ""
        return RunnerResult(
            outputs=firmware.parse_outputs(output, dtypes, shapes),
            timing=f"{board} (emulated, not a latency)",
            also={} if host_outputs is None else {"host build": host_outputs},
            step_counts=steps, counted_by=how)

def _firmware(objects: list[Path], sources: Sources, target: Target, staging: Path,
              machine: str, sizes: firmware.LibrarySizes) -> dict[str, str]:
    """Link the example firmware for the emulated board, unless the model does not fit it."""
    too_small = firmware.board_too_small(machine, sizes)
    if too_small:
        logger.warning("no emulated run: %s; the host build is still checked", too_small)
        return {"board": machine, "skipped": too_small}
    elf = firmware.build_firmware(objects, sources, target, staging, machine)
    return {"board": machine, "elf": str(elf.relative_to(staging))}


def _arg_type(tensor: Any) -> str:
    """``uint8[1x64x25x5]``: a kernel argument's dtype and shape, for latency signatures."""
    return f"{tensor.dtype}[{'x'.join(str(d) for d in tensor.shape)}]"


def _check_weights_fit(legal: onnx.ModelProto, target: Target) -> None:
    """Refuse a model whose weights alone exceed the flash, before any code is generated.

    The weights go to flash as they are (int8 layers' weights are int8 already in a QDQ
    model); compiling C for a model that cannot fit would take the cross compiler minutes
    and gigabytes (VGG-19's 548 MB of weights) to reach the same answer.
    """
    weights = sum(_initializer_bytes(t) for t in legal.graph.initializer)
    if weights > target.flash_bytes:
        raise MemoryBudgetError(
            f"the model does not fit {target.name}: its weights alone are {weights} bytes > "
            f"flash {target.flash_bytes} bytes (refused before generating any code). Try "
            "--precision int8 (4x smaller weights), --prune to cut channels, --lowrank to split "
            "large layers, or a part with more flash; nothing was written")


def _initializer_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of an initializer's values (raw, typed or external) without loading them."""
    import math

    from onnx import helper

    count = math.prod(tensor.dims)
    return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _check_budget(model_file: str, target: Target, sizes: firmware.LibrarySizes,
                  arena: int) -> None:
    over = []
    if sizes.flash > target.flash_bytes:
        over.append(f"flash {sizes.flash} bytes (code {sizes.text}, constants {sizes.rodata}, "
                    f"data {sizes.data}) > {target.flash_bytes}")
    if sizes.ram > target.sram_bytes:
        over.append(f"RAM {sizes.ram} bytes (arena {arena}, other data+bss "
                    f"{sizes.data + sizes.bss - arena}, stack {sizes.stack}) > {target.sram_bytes}")
    if over:
        raise MemoryBudgetError(
            f"{model_file} does not fit {target.name}: {'; '.join(over)}. Try --precision int8 "
            "(4x smaller weights and activations), --prune to cut channels, or a larger part; "
            "nothing was written")


def _output_layout(bundle: Path) -> tuple[list[tuple[int, ...]], list[str]]:
    """Shapes and dtypes of the outputs, from the expected outputs saved in ``verify/``."""
    expected = sorted((bundle / "verify").glob("expected_output_*.npy"))
    arrays = [np.load(path) for path in expected]
    return [a.shape for a in arrays], [str(a.dtype) for a in arrays]
