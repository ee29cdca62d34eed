"""hwcomp compress through the CLI: the report, the file it writes, and bad input."""

import re

import onnx

from tests import model_zoo
from tests.conftest import REPO, run_cli
from tests.test_cli import _assert_clean_error

EXAMPLE = str(REPO / "tests" / "data" / "example_cnn.onnx")


def test_compress_writes_a_smaller_valid_model(tmp_path):
    out = tmp_path / "small.onnx"
    proc = run_cli("compress", EXAMPLE, "-o", str(out), "--target", "arm-a72", "--prune", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "Conv28+Conv4" in proc.stdout and "fold-batchnorm*" in proc.stdout
    assert "frozen: Gemm82: model output 'logits' keeps its shape" in proc.stdout
    assert "MACs: 8,831,296 ->" in proc.stdout and "SQNR" in proc.stdout
    onnx.checker.check_model(onnx.load(str(out)))
    assert out.stat().st_size < (REPO / "tests" / "data" / "example_cnn.onnx").stat().st_size
    again = run_cli("compress", EXAMPLE, "-o", str(out), "--target", "arm-a72", "--prune", "0.5")
    _assert_clean_error(again, "small.onnx", "--force")


def test_ratio_out_of_range(tmp_path):
    proc = run_cli("compress", EXAMPLE, "-o", str(tmp_path / "s.onnx"), "--target", "host",
                   "--prune", "1.2")
    _assert_clean_error(proc, "1.2", "[0, 1)")
    assert not (tmp_path / "s.onnx").exists()


def test_unknown_layer_in_ratio_file(tmp_path):
    (tmp_path / "ratios.json").write_text('{"conv_nope": 0.4}')
    proc = run_cli("compress", EXAMPLE, "-o", str(tmp_path / "s.onnx"), "--target", "host",
                   "--prune", str(tmp_path / "ratios.json"))
    _assert_clean_error(proc, "conv_nope", "prunable: Conv16")


def test_nothing_prunable_is_a_report_line(tmp_path):
    from tests.passes.test_prune_channels import _single_conv_to_output

    onnx.save(_single_conv_to_output(), tmp_path / "one.onnx")
    proc = run_cli("compress", str(tmp_path / "one.onnx"), "-o", str(tmp_path / "s.onnx"),
                   "--target", "host", "--prune", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert "nothing prunable" in proc.stdout and "frozen: only" in proc.stdout


def test_a_transformer_block_prunes_its_heads_and_ffn(tmp_path):
    onnx.save(model_zoo.transformer_block(), tmp_path / "block.onnx")
    proc = run_cli("compress", str(tmp_path / "block.onnx"), "-o", str(tmp_path / "s.onnx"),
                   "--target", "host", "--prune", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\(FFN hidden\)\s+128\s+96\s+0.30", proc.stdout), proc.stdout
    assert re.search(r"\(attention heads\)\s+4\s+3\s+0.30", proc.stdout), proc.stdout
