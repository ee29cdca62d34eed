"""ONNX backend node tests for the common inference ops, through hwcomp's lowering path."""

import pytest

from tests import conformance

# Measured when the rewrites landed: 320 of the 324 cases onnxruntime passes. A drop
# below this is a regression; the four left are MaxPool's Indices output and Split
# into empty outputs, rejected with UnsupportedOpError.
MIN_COMMON_PASSES = 320


@pytest.mark.slow
def test_common_ops_pass_or_fail_clearly():
    cases = conformance.load_cases()
    ops = conformance.all_op_names()
    names = sorted(n for n in cases if conformance.op_of(n, ops) in conformance.COMMON_OPS)
    assert len(names) > 300
    results = conformance.run_suite(names, workers=2)
    assert len(results) == len(names)
    summary = conformance.summarize(results)
    bad = [r for r in results if r["hwcomp"] in ("crash", "hang")]
    assert not bad, bad[:5]
    for result in results:
        if result["ort"] != "pass" or result["hwcomp"] == "pass":
            continue
        assert result["hwcomp"] == "hwcomp-error", result
        assert result["op"] in result["detail"], result
    assert summary["hwcomp_pass_where_ort_passes"] >= MIN_COMMON_PASSES, summary


# The standard Attention op (opset 23/24) through its function body: 70 of the 73 cases
# onnxruntime passes (session 19; 0 before: TVM's converter of that name is
# com.microsoft's). The three left are fp16: TVM computes the body in fp16 throughout and
# lands ~1e-3 from the float32-accumulated reference, beyond the cases' tolerance.
MIN_ATTENTION_PASSES = 70
ATTENTION_FP16 = {"test_attention_4d_fp16", "test_attention_4d_gqa_causal_nonpad_decode_fp16",
                  "test_attention_4d_gqa_with_past_and_present_fp16"}


@pytest.mark.slow
def test_standard_attention_passes_through_its_body():
    cases = conformance.load_cases()
    names = sorted(n for n in cases
                   if n.startswith("test_attention") and not n.endswith("_expanded"))
    results = conformance.run_suite(names, workers=2)
    passing = [r for r in results if r["ort"] == "pass"]
    assert sum(r["hwcomp"] == "pass" for r in passing) >= MIN_ATTENTION_PASSES
    assert {r["name"] for r in passing if r["hwcomp"] != "pass"} <= ATTENTION_FP16


@pytest.mark.slow
def test_rotary_embedding_passes_through_its_body():
    """All 16 RotaryEmbedding cases (6 before session 19: a fully rotated head left an empty
    Split part, which TVM cannot compile; hwcomp.passes.empty_tensors)."""
    cases = conformance.load_cases()
    names = sorted(n for n in cases if n.startswith("test_rotary_embedding"))
    results = conformance.run_suite(names, workers=2)
    assert len(results) == 16
    assert all(r["hwcomp"] == "pass" for r in results if r["ort"] == "pass"), results


@pytest.mark.slow
def test_recurrent_ops_pass_through_their_unrolling():
    """LSTM, GRU and RNN (no TVM converter): all 13 node tests pass, the 11 onnxruntime
    passes among them (0 before session 21; hwcomp.passes.unroll_recurrent)."""
    cases = conformance.load_cases()
    ops = conformance.all_op_names()
    names = sorted(n for n in cases if conformance.op_of(n, ops) in {"LSTM", "GRU", "RNN"})
    results = conformance.run_suite(names, workers=2)
    assert len(results) == 13
    assert all(r["hwcomp"] == "pass" for r in results), [r for r in results
                                                          if r["hwcomp"] != "pass"]
