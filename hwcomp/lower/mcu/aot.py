r"""Ahead-of-time program for microcontrollers: TVM's C kernels plus hwcomp's call sequence.

TVM 0.27 has no AOT executor or C runtime any more, only the ``c`` code generator. hwcomp
runs TVM's Relax passes up to fused TIR functions (with a single-core default schedule),
turns each TIR function into C with the ``c`` target, and reads the call sequence out of
the Relax ``main`` function itself:

* ``R.call_tir(kernel, args)`` is a kernel call; its output is a new buffer;
* ``R.reshape`` (what TVM's ``RewriteDataflowReshape`` leaves of copy-only kernels) is a view:
  the result shares its source's bytes, which stay alive as long as either is used;
* tuple outputs and ``TupleGetItem`` name a kernel's several outputs;
* a model output that is not written by a kernel (a view, an input, a constant) is copied
  into the caller's buffer at the end.

Kernels keep TVM's calling convention (``__tvm_ffi_<name>(self, args, n, result)`` over
``DLTensor``\\s) with its argument checks compiled out (``tirx.disable_assert``): the
executor passes exactly the shapes the kernels were compiled for.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from hwcomp.errors import LoweringError, UnsupportedOpError
from hwcomp.lower.cpu.pipeline import fusion_passes
from hwcomp.lower.cpu.rules import default_rules
from hwcomp.lower.mcu.c_literals import exact_float_literals, float32_constants
from hwcomp.lower.mcu.memory_plan import ArenaPlan, Buffer, plan_arena
from hwcomp.lower.relax_match import mutate_functions
from hwcomp.targets import Target

logger = logging.getLogger(__name__)

INPUT, OUTPUT, ARENA, CONSTANT = "input", "output", "arena", "constant"

# ONNX ops the C path cannot lower, and why (everything else legalises to plain TIR loops).
MCU_UNSUPPORTED = {
    "TopK": "sorting lowers to a call into TVM's C++ runtime, which microcontrollers lack",
    "NonZero": "its output shape depends on the data; the arena needs static shapes",
    "NonMaxSuppression": "its output shape depends on the data; the arena needs static shapes",
    "Unique": "its output shape depends on the data; the arena needs static shapes",
    "Multinomial": "random sampling lowers to TVM's C++ runtime",
    "RandomNormal": "random sampling lowers to TVM's C++ runtime",
    "RandomUniform": "random sampling lowers to TVM's C++ runtime",
    "RandomNormalLike": "random sampling lowers to TVM's C++ runtime",
    "RandomUniformLike": "random sampling lowers to TVM's C++ runtime",
    "Loop": "control flow has no C lowering in hwcomp yet",
    "If": "control flow has no C lowering in hwcomp yet",
    "Scan": "control flow has no C lowering in hwcomp yet",
}
_C_TYPES = {
    "float32": "float", "float64": "double", "int8": "int8_t", "uint8": "uint8_t",
    "int16": "int16_t", "uint16": "uint16_t", "int32": "int32_t", "uint32": "uint32_t",
    "int64": "int64_t", "uint64": "uint64_t", "bool": "uint8_t",
}
_DL_CODES = {"int": "kDLInt", "uint": "kDLUInt", "float": "kDLFloat", "bool": "kDLBool"}


@dataclass(frozen=True)
class TensorInfo:
    """A tensor the executor passes to kernels; ``storage`` names whose bytes it uses."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    storage: str
    kind: str
    index: int = 0

    @property
    def count(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        return self.count * np.dtype(self.dtype).itemsize

    @property
    def ctype(self) -> str:
        """The C element type."""
        return _C_TYPES[self.dtype]

    @property
    def dl_dtype(self) -> tuple[str, int]:
        """DLPack type code and bits."""
        if self.dtype == "bool":
            return "kDLBool", 8
        match = re.fullmatch(r"([a-z]+)(\d+)", self.dtype)
        assert match, self.dtype
        return _DL_CODES[match.group(1)], int(match.group(2))


@dataclass(frozen=True)
class KernelCall:
    """One step: a kernel reading ``inputs`` and writing ``outputs``."""

    kernel: str
    symbol: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    workspace_bytes: int

    @property
    def args(self) -> tuple[str, ...]:
        """The kernel's arguments in TVM's order: inputs, then outputs."""
        return self.inputs + self.outputs


@dataclass
class AotProgram:
    """Everything ``model.c`` is generated from."""

    kernels_source: str
    tensors: dict[str, TensorInfo]
    calls: list[KernelCall]
    constants: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]
    output_copies: list[tuple[str, str]]
    plan: ArenaPlan

    def workspace_offset(self, step: int) -> int | None:
        """Arena offset of step ``step``'s kernel scratch, None if it needs none."""
        return self.plan.offsets.get(_workspace(step))


def check_mcu_supported(proto: onnx.ModelProto) -> None:
    """Raise :class:`UnsupportedOpError` for the first node the C path cannot lower."""
    float16 = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    typed = {v.name: v.type.tensor_type.elem_type
             for v in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]}
    for node in proto.graph.node:
        name = node.name or node.output[0]
        if node.op_type in MCU_UNSUPPORTED:
            raise UnsupportedOpError(
                f"node '{name}' (op {node.op_type}) cannot be lowered for a microcontroller: "
                f"{MCU_UNSUPPORTED[node.op_type]}; remove it from the exported graph or run it "
                "in application code")
        if any(typed.get(out) in float16 for out in node.output):
            raise UnsupportedOpError(
                f"node '{name}' (op {node.op_type}) computes in 16-bit floats, which TVM's C "
                "code generator cannot emit; build with --precision fp32 or int8")


# The attribute of a kernel whose output may overwrite its same-shaped input.
IN_PLACE_ATTR = "hwcomp.in_place"


def build_program(mod: Any, target: Target, prefix: str) -> AotProgram:
    """Lower a Relax module (from the MCU lowering's ``prepare``) to an AOT program.

    ``prefix`` makes the kernel symbols unique per model, so two models link into one
    firmware.
    """
    import tvm

    tvm_target = target.tvm()
    with tvm_target:
        mod = tvm.transform.Sequential(mcu_passes(target))(mod)
    walker = _MainWalker(mod)
    walker.walk()
    kernels = sorted({call.kernel for call in walker.calls})
    source, workspaces = _kernels_to_c(mod, kernels, tvm_target, prefix)
    calls = [KernelCall(kernel=c.kernel, symbol=f"__tvm_ffi_{prefix}_{c.kernel}", inputs=c.inputs,
                        outputs=c.outputs, workspace_bytes=workspaces[c.kernel])
             for c in walker.calls]
    buffers = _buffers(walker, calls)
    # Elementwise kernels, and hwcomp's opaque ones that read each element only to write the
    # same element of their output (an int8 activation's lookup table) or read a channel
    # whole before they write it (a padded depthwise convolution, its plane copied first).
    elementwise = {gv.name_hint for gv, func in mod.functions_items()
                   if isinstance(func, tvm.tirx.PrimFunc)
                   and (int(func.attrs.get("op_pattern", _OPAQUE)) <= _BROADCAST
                        or bool(func.attrs.get(IN_PLACE_ATTR, False)))}
    # A step's tensors by their storage (a reshaped tensor is a view of its source's).
    storage = {name: tensor.storage for name, tensor in walker.tensors.items()}
    plan = plan_arena(buffers, [tuple(storage.get(n, n) for n in call.args) for call in calls],
                      _in_place(walker, calls, buffers, elementwise))
    return AotProgram(
        kernels_source=source, tensors=walker.tensors, calls=calls,
        constants=walker.constants, inputs=walker.inputs, outputs=walker.outputs,
        output_copies=walker.output_copies, plan=plan,
    )


def mcu_passes(target: Target) -> list[Any]:
    """Relax passes from the imported module to fused, scheduled TIR functions."""
    from tvm import relax
    from tvm.s_tir import dlight

    return [
        mean_as_sum_divide(),
        *fusion_passes(target.tvm()),
        # Fused functions carry no pattern; the planner's in-place reuse needs to know which
        # ones are elementwise.
        relax.transform.AnnotateTIROpPattern(),
        # One core, no SIMD types in C: the rule only inlines producers (pads, bias adds) into
        # their consumers, which keeps kernels' scratch buffers small.
        dlight.ApplyDefaultSchedule(*default_rules(lanes=1, cores=1)),
        relax.transform.RewriteDataflowReshape(),
        relax.transform.DeadCodeElimination(),
    ]


def mean_as_sum_divide() -> Any:
    """Relax pass: ``mean(x)`` becomes ``sum(x) / n``, the arithmetic TVM's mean lowers to.

    TVM marks its mean kernel "out-elementwise fusable", so FuseOps will not fuse producers
    into it: a global average pool after ``dequantize -> relu`` would materialise that float
    tensor (four times the int8 one) in the arena. A plain ``sum`` takes them in.
    """
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class MeanRewriter(relax.PyExprMutator):  # type: ignore[misc, name-defined]
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if getattr(call.op, "name", "") != "relax.mean" or call.attrs.axis is None:
                return call
            data = call.args[0]
            shape = [int(v) for v in data.ty.shape]
            count = int(np.prod([shape[int(a)] for a in call.attrs.axis]))
            total = self.builder_.emit(relax.op.sum(data, call.attrs.axis, call.attrs.keepdims))
            return relax.op.divide(total, relax.const(count, str(data.ty.dtype)))

    @tvm.transform.module_pass(opt_level=0, name="MeanAsSumDivide")
    def rewrite(mod: Any, _ctx: Any) -> Any:
        return mutate_functions(MeanRewriter(mod), mod)

    return rewrite


_BROADCAST = 1  # TVM's op patterns: 0 elementwise, 1 broadcast, ..., 8 opaque
_OPAQUE = 8


@dataclass
class _Call:
    kernel: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class _MainWalker:
    """Reads tensors, constants and kernel calls out of the Relax ``main`` function."""

    def __init__(self, mod: Any) -> None:
        self.mod = mod
        self.tensors: dict[str, TensorInfo] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.calls: list[_Call] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.output_copies: list[tuple[str, str]] = []
        self._names: dict[Any, Any] = {}

    def walk(self) -> None:
        from tvm import relax

        main = self.mod["main"]
        for index, param in enumerate(main.params):
            name = f"in{index}"
            self._names[param] = name
            self.inputs.append(name)
            self._add(name, param.ty, storage=name, kind=INPUT, index=index)
        body = main.body
        for block in body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    raise LoweringError("the Relax program has a match_cast binding; the "
                                        "microcontroller path needs static shapes")
                self._bind(binding.var, binding.value)
        self._set_outputs(body.body)

    def _bind(self, var: Any, value: Any) -> None:
        import tvm
        from tvm import relax
        from tvm.ir.expr import Constant

        if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir"):
            kernel = value.args[0].name_hint
            args = tuple(self._tensor(a) for a in value.args[1].fields)
            outs = value.ty_args[0]
            infos = list(outs.fields) if isinstance(outs, relax.TupleType) else [outs]
            names = tuple(f"t{len(self.tensors) + i}" for i in range(len(infos)))
            for name, info in zip(names, infos, strict=True):
                self._add(name, info, storage=name, kind=ARENA)
            self._names[var] = names if isinstance(outs, relax.TupleType) else names[0]
            self.calls.append(_Call(kernel, args, names))
        elif isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.reshape"):
            source = self.tensors[self._tensor(value.args[0])]
            name = f"t{len(self.tensors)}"
            self._add(name, var.ty, storage=source.storage, kind=source.kind,
                      index=source.index)
            self._names[var] = name
        elif isinstance(value, relax.TupleGetItem):
            self._names[var] = self._names[value.tuple_value][value.index]
        elif isinstance(value, relax.Tuple):
            self._names[var] = tuple(self._tensor(f) for f in value.fields)
        elif isinstance(value, (relax.Var, Constant)):
            self._names[var] = self._tensor(value)
        else:
            raise LoweringError(
                f"the microcontroller path cannot run '{value.op if hasattr(value, 'op') else value}' "
                "(not a TIR kernel after legalisation); it needs TVM's C++ runtime")

    def _tensor(self, expr: Any) -> str:
        from tvm.ir.expr import Constant

        if isinstance(expr, Constant):
            if expr not in self._names:
                name = f"c{len(self.constants)}"
                self.constants[name] = expr.value.numpy()
                self._add(name, expr.ty, storage=name, kind=CONSTANT)
                self._names[expr] = name
            return str(self._names[expr])
        name = self._names[expr]
        if not isinstance(name, str):
            raise LoweringError("a kernel takes a tuple argument; the microcontroller path "
                                "passes tensors only")
        return name

    def _add(self, name: str, sinfo: Any, *, storage: str, kind: str, index: int = 0) -> None:
        shape = tuple(int(v) for v in sinfo.shape)
        self.tensors[name] = TensorInfo(name=name, shape=shape, dtype=str(sinfo.dtype),
                                        storage=storage, kind=kind, index=index)

    def _set_outputs(self, expr: Any) -> None:
        from tvm import relax

        fields = list(expr.fields) if isinstance(expr, relax.Tuple) else [expr]
        names: list[str] = []
        for item in fields:
            found = self._names.get(item) if isinstance(item, relax.Var) else None
            names.extend(found if isinstance(found, tuple) else [self._tensor(item)])
        written: set[str] = set()
        for index, name in enumerate(names):
            out = f"out{index}"
            info = self.tensors[name]
            self.outputs.append(out)
            if info.kind == ARENA and info.storage == name and name not in written:
                # A kernel writes this output: point its storage at the caller's buffer.
                written.add(name)
                self._retarget(name, out, index)
            else:
                self.tensors[out] = TensorInfo(out, info.shape, info.dtype, out, OUTPUT, index)
                self.output_copies.append((name, out))

    def _retarget(self, storage: str, out: str, index: int) -> None:
        for name, info in list(self.tensors.items()):
            if info.storage == storage:
                self.tensors[name] = TensorInfo(name, info.shape, info.dtype, out, OUTPUT, index)
        self.tensors[out] = TensorInfo(out, self.tensors[storage].shape,
                                       self.tensors[storage].dtype, out, OUTPUT, index)


def _workspace(step: int) -> str:
    return f"ws{step}"


def _buffers(walker: _MainWalker, calls: list[KernelCall]) -> list[Buffer]:
    """Arena buffers with lifetimes; views extend their storage's lifetime."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for step, call in enumerate(calls):
        for name in call.args:
            storage = walker.tensors[name].storage
            first.setdefault(storage, step)
            last[storage] = step
    for source, _ in walker.output_copies:
        last[walker.tensors[source].storage] = len(calls)
    buffers = [Buffer(storage, walker.tensors[storage].nbytes, first[storage], last[storage])
               for storage in first if walker.tensors[storage].kind == ARENA]
    buffers += [Buffer(_workspace(step), call.workspace_bytes, step, step)
                for step, call in enumerate(calls) if call.workspace_bytes]
    return buffers


def _in_place(walker: _MainWalker, calls: list[KernelCall], buffers: list[Buffer],
              elementwise: set[str]) -> dict[str, str]:
    """Pair outputs of elementwise kernels with an input dying at that step to overwrite.

    The input must have the output's shape and dtype: an elementwise or broadcast kernel
    then reads each of its elements only to write the same element of the output.
    """
    spans = {b.name: b for b in buffers}
    pairs: dict[str, str] = {}
    for step, call in enumerate(calls):
        if call.kernel not in elementwise or len(call.outputs) != 1:
            continue
        out = walker.tensors[call.outputs[0]]
        if out.storage not in spans:
            continue
        for name in call.inputs:
            source = walker.tensors[name]
            span = spans.get(source.storage)
            if (span is not None and span.last == step and source.shape == out.shape
                    and source.dtype == out.dtype and source.storage not in pairs.values()
                    and span.nbytes == spans[out.storage].nbytes):
                pairs[out.storage] = source.storage
                break
    return pairs


def _kernels_to_c(mod: Any, kernels: list[str], tvm_target: Any, prefix: str
                  ) -> tuple[str, dict[str, int]]:
    """C source of ``kernels`` and each one's scratch bytes (``TVMBackendAllocWorkspace``)."""
    import tvm
    from tvm.s_tir.analysis import calculate_allocated_bytes
    from tvm.tirx.build import codegen_build

    funcs = {}
    for gv, func in mod.functions.items():
        if gv.name_hint in kernels:
            funcs[tvm.ir.GlobalVar(gv.name_hint)] = func.with_attr(
                "global_symbol", f"{prefix}_{gv.name_hint}")
    target = tvm.target.Target(tvm_target, host=tvm_target)
    tir = tvm.tirx.transform.BindTarget(target)(tvm.IRModule(funcs))
    pipeline, finalize_host, _ = tvm.tirx.get_default_tir_pipeline(target)
    try:
        flat = pipeline(tir)
        workspaces = {}
        # Measured before LowerTVMBuiltin turns allocations into workspace calls.
        for gv, func in flat.functions.items():
            name = gv.name_hint
            if name in kernels:
                # Every allocation counts, even those C puts on the stack: an upper bound.
                # Rounded up to 16: the runtime's allocator hands out 16-byte multiples.
                scopes = calculate_allocated_bytes(func)["main"]
                workspaces[name] = -(-int(sum(int(v) for v in scopes.values())) // 16) * 16
        lowered = finalize_host()(flat)
        with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
            source = codegen_build(lowered, target).inspect_source()
        source = exact_float_literals(source, float32_constants(lowered.functions.values()))
    except Exception as exc:  # noqa: BLE001 - any TVM failure is a lowering failure
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise LoweringError(f"TVM could not generate C kernels: {lines[-1][:300] if lines else exc}"
                            ) from None
    # One firmware may link several models: the library context TVM defines becomes private.
    source = source.replace("void* __tvm_ffi__library_ctx = NULL;",
                            "static void* __tvm_ffi__library_ctx = NULL;")
    return _QUIET_UNUSED + _inline_nearbyint(source), workspaces


# TVM's calling convention passes every kernel arguments it does not read (self_handle,
# num_args, result) and the generator declares shape arrays and device ids some kernels do
# not use: the generated file says so to the compiler, so a firmware built with -Wall
# -Wextra -Werror takes it (tested).
_QUIET_UNUSED = """\
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#endif
"""


# nearbyintf without a library call on a single-precision Arm FPU: newlib's is a software
# rintf (about 32 instructions a call on Cortex-M4, whose FPv4 has no VRINT; GCC inlines
# VRINTR where the FPU has double precision: FPv5-D16, Cortex-M55). VCVTR rounds by FPSCR's
# mode, round to nearest even unless the program changes it, as nearbyintf does; values of
# 2^23 and above are integers already, and a zero result keeps the argument's sign.
_NEARBYINT = """\
static inline float hwcomp_nearbyintf(float x) {
#if defined(__arm__) && defined(__ARM_FP) && (__ARM_FP & 4) && !(__ARM_FP & 8)
  float r;
  if (!(fabsf(x) < 8388608.0f)) return x;
  __asm__("vcvtr.s32.f32 %0, %1\\n\\tvcvt.f32.s32 %0, %0" : "=t"(r) : "t"(x));
  return copysignf(r, x);
#else
  return nearbyintf(x);
#endif
}
"""


def _inline_nearbyint(source: str) -> str:
    """Route the generated code's ``nearbyintf`` calls through :data:`_NEARBYINT`."""
    if "nearbyintf(" not in source:
        return source
    source = re.sub(r"^TVM_DLL float nearbyintf\(float\);\n", "", source, flags=re.M)
    source = re.sub(r"\bnearbyintf\(", "hwcomp_nearbyintf(", source)
    return source.replace("#include <math.h>\n", "#include <math.h>\n" + _NEARBYINT, 1)
