"""Graph passes, one per file. Each takes and returns an ``onnx_ir`` model.

Legalisation (before TVM import):
    - :class:`BindInputsPass`: inputs that are parameters become constants.
    - :class:`ExpandFunctionsPass`: ops the backend lacks become their ONNX function bodies.
    - :class:`FoldConstantsPass`: constant subgraphs become initializers.
    - :class:`FoldIfPass`: an ``If`` whose condition folded to a constant becomes its branch.
    - :class:`ResizeToMatMulPass`: Resize nodes TVM mishandles become interpolation MatMuls.
    - :class:`ConvTransposePadsPass`: ConvTranspose ``output_shape`` becomes explicit pads.
    - :class:`SumToAddPass`: variadic Sum becomes a chain of Add (TVM stacks and reduces it).
    - :class:`EmptyTensorsPass`: empty Split parts become constants, empty Concat inputs go
      (TVM cannot compile a split with an empty output).
    - :class:`PowTypesPass`: Pow's operands cast to one float type (TVM takes no mixed or
      integer Pow).
    - :class:`ReduceInfinityPass`: float ReduceMax / ReduceMin return -inf / +inf over only
      that value (TVM starts them at the lowest / highest finite float).
    - :class:`UnrollRecurrentPass`: LSTM, GRU and RNN unrolled over their static sequence
      (TVM's frontend has no converter for them).

Compression (ONNX to ONNX, in this order in :mod:`hwcomp.compress.pipeline`):
    - :class:`FoldBatchNormPass`: BatchNormalization merges into the Conv/Gemm/MatMul before it
      (legalisation runs it too).
    - :class:`PruneChannelsPass`: structured pruning of coupled channel groups.
    - :class:`LowRankPass`: SVD splitting where the target's roofline says it pays.
    - :class:`ReconstructPass`: least-squares refit of the changed layers on calibration data.

onnx_ir's common passes are reused for identity removal, dead-node removal, lifting
Constant nodes to initializers and topological sorting. :mod:`hwcomp.passes.infra` runs a
list of passes and records each step, for legalisation and compression alike.
"""

from hwcomp.passes.bind_inputs import BindInputsPass
from hwcomp.passes.convtranspose_pads import ConvTransposePadsPass
from hwcomp.passes.empty_tensors import EmptyTensorsPass
from hwcomp.passes.expand_functions import ExpandFunctionsPass
from hwcomp.passes.fold_batchnorm import FoldBatchNormPass
from hwcomp.passes.fold_constants import FoldConstantsPass
from hwcomp.passes.fold_if import FoldIfPass
from hwcomp.passes.lowrank import LowRankPass
from hwcomp.passes.pow_types import PowTypesPass
from hwcomp.passes.prune_channels import PruneChannelsPass
from hwcomp.passes.reconstruct import ReconstructPass
from hwcomp.passes.reduce_infinity import ReduceInfinityPass
from hwcomp.passes.resize_to_matmul import ResizeToMatMulPass
from hwcomp.passes.sum_to_add import SumToAddPass
from hwcomp.passes.unroll_recurrent import UnrollRecurrentPass

__all__ = [
    "BindInputsPass",
    "ConvTransposePadsPass",
    "EmptyTensorsPass",
    "ExpandFunctionsPass",
    "FoldBatchNormPass",
    "FoldConstantsPass",
    "FoldIfPass",
    "LowRankPass",
    "PowTypesPass",
    "PruneChannelsPass",
    "ReconstructPass",
    "ResizeToMatMulPass",
    "ReduceInfinityPass",
    "SumToAddPass",
    "UnrollRecurrentPass",
]
