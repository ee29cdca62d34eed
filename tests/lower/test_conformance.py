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
