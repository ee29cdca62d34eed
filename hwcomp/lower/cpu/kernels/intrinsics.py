"""TIR tensor intrinsics for the int8 dot-product instructions (registered once per process)."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

from hwcomp.lower.cpu.kernels.spec import VNNI
from hwcomp.lower.kernel_spec import KernelSpec

_REGISTERED: set[str] = set()


def register_intrinsic(instruction: KernelSpec, name: str = "", scope: str = "local") -> None:
    """Register the instruction's TIR tensor intrinsic (once per process and name).

    ``name`` defaults to the spec's own; ``scope`` is the accumulator buffer's (hwcomp's
    kernels accumulate in ``local``; MetaSchedule's rules tensorize ``global`` buffers).

    Written here rather than imported: TVM's ``tvm.s_tir.tensor_intrin`` package parses
    hundreds of intrinsics for every backend on import (40 s or more), and its
    ``dot_16x4_vnni`` passes i32 vectors where LLVM 20+ declares ``vpdpbusd`` on
    ``<64 x i8>`` operands, which fails LLVM verification.
    """
    name = name or instruction.intrin
    if name in _REGISTERED:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    lanes, act = instruction.lanes, instruction.activation_dtype
    bytes_ = lanes * 4

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), act, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), act, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            word = T.reinterpret(A.vload([0], f"{act}x4"), dtype="int32")
            a_bytes = T.reinterpret(T.broadcast(word, lanes), dtype=f"int8x{bytes_}")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(instruction.llvm),
                C.vload([0], dtype=f"int32x{lanes}"), a_bytes,
                B.vload([0, 0], dtype=f"int8x{bytes_}"), dtype=f"int32x{lanes}",
            )

    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED.add(name)


FMA_BY_ELEMENT = "hwcomp_fma_by_element_4x4"


def register_fma_by_element(lanes: int = 4, scope: str = "local") -> str:
    """Register the fp32 update of ``lanes`` accumulators by 4 reduction steps (once).

    ``C[i] += sum_j A[j] * W[j, i]``, written as one vector load of the 4 A values and 4
    multiply-adds by one of its lanes each: NEON's FMLA (by element). The A values of 4
    steps come in one load instead of 4, and the loop runs a quarter as many times.
    """
    name = f"{FMA_BY_ELEMENT}_{lanes}_{scope}"
    if name in _REGISTERED:
        return name
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, w: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "float32", offset_factor=1)
        W = T.match_buffer(w, (4, lanes, 1), "float32", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "float32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], W[0:4, 0:lanes, 0])
            T.writes(C[0:lanes])
            for k in T.serial(0, 4):
                for i in T.serial(0, lanes):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + A[vk] * W[vk, vi, 0]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, w: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "float32", offset_factor=1)
        W = T.match_buffer(w, (4, lanes, 1), "float32", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "float32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], W[0:4, 0:lanes, 0])
            T.writes(C[0:lanes])
            values = A.vload([0], "float32x4")
            C[T.ramp(T.int32(0), 1, lanes)] = (
                C.vload([0], dtype=f"float32x{lanes}")
                + T.Shuffle([values], [0] * lanes) * W.vload([0, 0, 0], dtype=f"float32x{lanes}")
                + T.Shuffle([values], [1] * lanes) * W.vload([1, 0, 0], dtype=f"float32x{lanes}")
                + T.Shuffle([values], [2] * lanes) * W.vload([2, 0, 0], dtype=f"float32x{lanes}")
                + T.Shuffle([values], [3] * lanes) * W.vload([3, 0, 0], dtype=f"float32x{lanes}"))

    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED.add(name)
    return name


def register_dot_by_element(instruction: KernelSpec, scope: str = "local") -> str:
    """Register the int8 update of ``lanes`` accumulators by 4 dot-product groups (once).

    ``C[i] += sum_k A[k] * W[k // 4, i, k % 4]`` over 16 bytes of A, written as one 16-byte
    load of A and 4 dot products, each with one 4-byte lane of it: Arm's SDOT (by element).
    The A bytes of 4 groups come in one load instead of 4 broadcasts.
    """
    name = f"{instruction.intrin}_by_element_{scope}"
    if name in _REGISTERED:
        return name
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    lanes, act, weight = instruction.lanes, instruction.activation_dtype, instruction.weight_dtype

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, w: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16,), act, offset_factor=1)
        W = T.match_buffer(w, (4, lanes, 4), weight, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:16], W[0:4, 0:lanes, 0:4])
            T.writes(C[0:lanes])
            for g, i, kk in T.grid(4, lanes, 4):
                with T.sblock("update"):
                    vi = T.axis.spatial(lanes, i)
                    vk = T.axis.reduce(16, g * 4 + kk)
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(W[vk // 4, vi, vk % 4], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, w: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16,), act, offset_factor=1)
        W = T.match_buffer(w, (4, lanes, 4), weight, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:16], W[0:4, 0:lanes, 0:4])
            T.writes(C[0:lanes])
            words = T.reinterpret(A.vload([0], f"{act}x16"), dtype="int32x4")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(instruction.llvm), T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(instruction.llvm), T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(instruction.llvm), T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(instruction.llvm),
                            C.vload([0], dtype=f"int32x{lanes}"),
                            W.vload([0, 0, 0], dtype=f"{weight}x{lanes * 4}"),
                            T.reinterpret(T.Shuffle([words], [0] * 4), dtype=f"{act}x16"),
                            dtype=f"int32x{lanes}"),
                        W.vload([1, 0, 0], dtype=f"{weight}x{lanes * 4}"),
                        T.reinterpret(T.Shuffle([words], [1] * 4), dtype=f"{act}x16"),
                        dtype=f"int32x{lanes}"),
                    W.vload([2, 0, 0], dtype=f"{weight}x{lanes * 4}"),
                    T.reinterpret(T.Shuffle([words], [2] * 4), dtype=f"{act}x16"),
                    dtype=f"int32x{lanes}"),
                W.vload([3, 0, 0], dtype=f"{weight}x{lanes * 4}"),
                T.reinterpret(T.Shuffle([words], [3] * 4), dtype=f"{act}x16"),
                dtype=f"int32x{lanes}")

    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED.add(name)
    return name


def by_element_intrinsic(instruction: KernelSpec) -> str:
    """Return the registered by-element intrinsic of ``instruction`` (fp32 FMLA or int8 SDOT)."""
    if instruction.intrin:
        return register_dot_by_element(instruction)
    return register_fma_by_element(instruction.lanes)


def light_tensor_intrin() -> None:
    """Make ``tvm.s_tir.tensor_intrin`` importable without its 40 s of CUDA/ROCm intrinsics."""
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        import tvm.s_tir

        package = types.ModuleType(name)
        package.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
        sys.modules[name] = package
        tvm.s_tir.tensor_intrin = package  # type: ignore[attr-defined]
        for sub in ("x86", "arm_cpu"):
            setattr(package, sub, importlib.import_module(f"{name}.{sub}"))
    register_intrinsic(VNNI, "dot_16x4_vnni", scope="global")
