"""The microcontroller bundle's sources, rendered from the templates under ``kernels/mcu/``.

Layout written into the bundle:

    lib/<prefix>.h, lib/model.c  the C API and the AOT executor (call sequence + arena plan);
                                 lib/model.h includes <prefix>.h
    lib/kernels.c                TVM's C kernels
    lib/weights.c                weights and other constants (``const``: flash)
    lib/hwcomp_runtime.[ch]      workspace allocator, calling helper, error hook } the same in
    lib/hwcomp_q8.[ch]           hwcomp's int8 kernels (Helium, SMLAD, C)     } every bundle
    lib/hwcomp_f32.[ch]          hwcomp's fp32 kernels (register-blocked C)   }
    include/                     the DLPack and TVM FFI headers the kernels include
    example/main.c, example/example_data.h   runs the verification input, checks it
    CMakeLists.txt, hwcomp.mk    static library target / Makefile fragment
    zephyr/, library.json        a Zephyr module / a PlatformIO library manifest
    cmake/arm-none-eabi-<target>.cmake       toolchain file with the profile's flags
    board/                       startup code and linker script for the emulated board
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import hwcomp
from hwcomp.lower.library.runtime_libs import ffi_include_dir, tvm_include_dir
from hwcomp.lower.mcu.aot import ARENA, CONSTANT, INPUT, OUTPUT, AotProgram, TensorInfo
from hwcomp.lower.mcu.memory_plan import ALIGNMENT
from hwcomp.lower.types import model_id
from hwcomp.model import TensorSpec
from hwcomp.resources import kernels_path
from hwcomp.targets import Target
from hwcomp.templates import render_source

# The headers TVM's C kernels include (found with gcc -M), relative to TVM's include dirs.
_FFI_HEADERS = ("tvm/ffi/c_api.h", "tvm/ffi/extra/c_env_api.h", "dlpack/dlpack.h")
_TVM_HEADERS = ("tvm/runtime/base.h", "tvm/runtime/c_backend_api.h")
_LIBRARY = ("model.c", "kernels.c", "weights.c", "hwcomp_runtime.c", "hwcomp_q8.c",
            "hwcomp_f32.c")


@dataclass(frozen=True)
class Sources:
    """What was written, for the build steps that follow."""

    library: tuple[Path, ...]
    example: Path
    include_dirs: tuple[Path, ...]


def sources_in(bundle: Path) -> Sources:
    """Return the sources of a written bundle."""
    lib = bundle / "lib"
    return Sources(library=tuple(lib / n for n in _LIBRARY), example=bundle / "example" / "main.c",
                   include_dirs=(lib, bundle / "include"))


def c_prefix(model_name: str) -> str:
    """``hwcomp_<model>`` as a C identifier (the API's and the kernels' prefix)."""
    return f"hwcomp_{model_id(model_name)}"


def write_sources(
    staging: Path, program: AotProgram, target: Target, *, prefix: str, model_file: str,
    inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
    example_inputs: Sequence[np.ndarray], example_outputs: Sequence[np.ndarray], tolerance: float,
    model_sha256: str = "", macs: int = 0, kernel_macs: Mapping[str, int] | None = None,
) -> Sources:
    """Render every source file of the bundle into ``staging``.

    ``macs`` (the model's) and ``kernel_macs`` (each layer kernel's) go into the report
    struct ``<prefix>_report``.
    """
    lib, example = staging / "lib", staging / "example"
    lib.mkdir(exist_ok=True)
    example.mkdir()
    common = {"prefix": prefix, "model_file": model_file, "target": target.name,
              "version": hwcomp.__version__, "alignment": ALIGNMENT, "model_sha256": model_sha256}
    api_in = [_api_tensor(program.tensors[n], spec)
              for n, spec in zip(program.inputs, inputs, strict=True)]
    api_out = [_api_tensor(program.tensors[n], spec)
               for n, spec in zip(program.outputs, outputs, strict=True)]
    constants = [_constant(prefix, name, array) for name, array in program.constants.items()]
    # The API header named by the model, so two bundles of one firmware are included by
    # name; model.h includes it, for single-model projects.
    (lib / f"{prefix}.h").write_text(render_source(
        "mcu/model.h.j2", inputs=api_in, outputs=api_out, arena_bytes=program.plan.arena_bytes,
        **common))
    (lib / "model.h").write_text(
        f"/* {prefix}: the API is in {prefix}.h (by name, for firmware with several models). */\n"
        f'#include "{prefix}.h"\n')
    weight_bytes = sum(a.nbytes for a in program.constants.values())
    report = {"macs": macs, "weight_bytes": weight_bytes, "model_file": c_string(model_file),
              "steps": [{"kernel": c_string(c.kernel), "macs": (kernel_macs or {}).get(c.kernel, 0)}
                        for c in program.calls]}
    (lib / "model.c").write_text(render_source(
        "mcu/model.c.j2", inputs=api_in, outputs=api_out, plan=program.plan.to_dict(),
        report=report,
        kernels=sorted({c.symbol for c in program.calls}), constants=constants,
        shapes=_shapes(program), calls=_calls(program, prefix), copies=_copies(program, prefix),
        **common))
    (lib / "weights.c").write_text(render_source(
        "mcu/weights.c.j2", constants=constants,
        constant_bytes=weight_bytes, **common))
    (lib / "kernels.c").write_text(program.kernels_source)
    for name in ("hwcomp_runtime.h", "hwcomp_runtime.c", "hwcomp_q8.h", "hwcomp_q8.c",
                 "hwcomp_f32.h", "hwcomp_f32.c"):
        shutil.copy2(kernels_path("mcu", name), lib / name)
    include_dirs = _copy_headers(staging / "include")
    (example / "main.c").write_text(render_source(
        "mcu/main.c.j2", inputs=api_in, outputs=api_out, tolerance=repr(float(tolerance)),
        **common))
    (example / "example_data.h").write_text(render_source(
        "mcu/example_data.h.j2",
        inputs=[_with_values(t, a) for t, a in zip(api_in, example_inputs, strict=True)],
        outputs=[_with_values(t, a) for t, a in zip(api_out, example_outputs, strict=True)],
        **common))
    (staging / "CMakeLists.txt").write_text(render_source("mcu/CMakeLists.txt.j2", **common))
    (staging / "hwcomp.mk").write_text(render_source(
        "mcu/hwcomp.mk.j2", cflags=target.cflags, arena_bytes=program.plan.arena_bytes, **common))
    _write_integrations(staging, common)
    toolchain = staging / "cmake" / f"arm-none-eabi-{target.name}.cmake"
    toolchain.parent.mkdir()
    toolchain.write_text(render_source(
        "mcu/toolchain.cmake.j2", compiler=target.cross_compiler, cflags=target.cflags,
        description=target.description, **common))
    library = tuple(lib / n for n in _LIBRARY)
    return Sources(library=library, example=example / "main.c",
                   include_dirs=(lib, include_dirs))


def _api_tensor(info: TensorInfo, spec: TensorSpec) -> dict[str, Any]:
    # scale 0: not quantized (a float tensor, or an integer one without a scale)
    return {"c_name": info.name, "onnx_name": spec.name, "c_string": c_string(spec.name),
            "ctype": info.ctype, "dtype": info.dtype, "shape": info.shape, "count": info.count,
            "nbytes": info.nbytes, "is_float": info.dtype.startswith("float"),
            "quantized": spec.scale is not None,
            "scale": _c_float(float(spec.scale or 0.0)), "zero_point": int(spec.zero_point or 0)}


def c_string(text: str) -> str:
    """Return ``text`` as a C string literal that round-trips any tensor name.

    Printable ASCII stays; every other byte of its UTF-8 (and the double quote, backslash
    and question mark) becomes a three-digit octal escape.
    """
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\?' or not 32 <= byte < 127:
            out.append(f"\\{byte:03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _constant(prefix: str, name: str, array: np.ndarray) -> dict[str, Any]:
    info_dtype = "bool" if array.dtype == np.bool_ else str(array.dtype)
    info = TensorInfo(name, tuple(array.shape), info_dtype, name, CONSTANT)
    return {"symbol": f"{prefix}_{name}", "ctype": info.ctype, "dtype": info_dtype,
            "shape": array.shape, "count": max(1, array.size), "initializer": _c_values(array)}


def _with_values(tensor: dict[str, Any], array: np.ndarray) -> dict[str, Any]:
    return {**tensor, "initializer": _c_values(np.asarray(array))}


def _c_values(array: np.ndarray) -> str:
    """C initializer text; floats with 9 significant digits (exact for float32)."""
    flat = array.reshape(-1) if array.size else np.zeros(1, array.dtype)
    if flat.dtype.kind == "f":
        text = [_c_float(float(v)) if np.isfinite(v) else
                ("(0.0f/0.0f)" if np.isnan(v) else ("(1.0f/0.0f)" if v > 0 else "(-1.0f/0.0f)"))
                for v in flat.astype(np.float32)]
    elif flat.dtype.kind == "b":
        text = [str(int(v)) for v in flat]
    elif flat.dtype == np.int64:
        text = [f"{int(v)}LL" for v in flat]
    else:
        text = [str(int(v)) for v in flat]
    rows = [", ".join(text[i:i + 12]) for i in range(0, len(text), 12)]
    return ",\n".join(f"  {row}" for row in rows)


def _c_float(value: float) -> str:
    text = f"{value:.9g}"
    return f"{text}f" if any(c in text for c in ".e") else f"{text}.0f"


def _shapes(program: AotProgram) -> list[dict[str, Any]]:
    used = {name for call in program.calls for name in call.args}
    return [{"symbol": f"shape_{name}", "dims": list(program.tensors[name].shape) or [1]}
            for name in program.tensors if name in used]


def _data(program: AotProgram, name: str, prefix: str) -> str:
    info = program.tensors[name]
    storage = program.tensors[info.storage]
    if storage.kind == ARENA:
        return f"arena + {program.plan.offsets[info.storage]}"
    if storage.kind == CONSTANT:
        return f"(void*){prefix}_{info.storage}"
    assert storage.kind in (INPUT, OUTPUT), storage
    return f"(void*){info.storage}"


def _calls(program: AotProgram, prefix: str) -> list[dict[str, Any]]:
    calls = []
    for index, call in enumerate(program.calls):
        tensors = []
        for name in call.args:
            info = program.tensors[name]
            code, bits = info.dl_dtype
            tensors.append({"data": _data(program, name, prefix), "ndim": len(info.shape),
                            "code": code, "bits": bits, "shape": f"(int64_t*)shape_{name}"})
        offset = program.workspace_offset(index)
        calls.append({
            "index": index, "kernel": call.kernel, "symbol": call.symbol, "args": call.args,
            "tensors": tensors, "workspace_bytes": call.workspace_bytes,
            "workspace": "NULL" if offset is None else f"arena + {offset}",
        })
    return calls


def _write_integrations(staging: Path, common: dict[str, Any]) -> None:
    """Write the Zephyr module (``zephyr/``) and the PlatformIO manifest (``library.json``).

    Both build the same sources with the same flags as the bundle's CMakeLists.txt: -O2 (what
    flash was measured at) and -ffp-contract=off (what was verified).
    """
    zephyr = staging / "zephyr"
    zephyr.mkdir()
    for name in ("module.yml", "Kconfig", "CMakeLists.txt"):
        (zephyr / name).write_text(render_source(f"mcu/zephyr/{name}.j2", **common))
    prefix = common["prefix"]
    manifest = {
        "name": prefix, "version": common["version"],
        "description": (f"{common['model_file']} compiled by hwcomp {common['version']} for "
                        f"{common['target']}: #include \"{prefix}.h\" and call {prefix}_run"),
        "keywords": ["hwcomp", "onnx", "inference", common["target"]],
        "frameworks": "*", "platforms": "*",
        # lib/ holds the model, hwcomp's runtime and the API header; include/ the DLPack
        # and TVM headers the kernels include. Archived, so two models' copies of the
        # runtime resolve to one.
        "build": {"srcDir": "lib", "includeDir": "lib", "srcFilter": ["+<*.c>"],
                  "flags": ["-I include", "-O2", "-ffp-contract=off", "-std=c99"],
                  "libArchive": True},
    }
    (staging / "library.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _copies(program: AotProgram, prefix: str) -> list[dict[str, Any]]:
    return [{"source": _data(program, source, prefix), "dest": dest,
             "nbytes": program.tensors[dest].nbytes, "index": program.tensors[dest].index}
            for source, dest in program.output_copies]


def _copy_headers(include: Path) -> Path:

    for root, headers in ((ffi_include_dir(), _FFI_HEADERS), (tvm_include_dir(), _TVM_HEADERS)):
        for header in headers:
            (include / header).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / header, include / header)
    return include
