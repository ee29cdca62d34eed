"""Large models reach onnxruntime as a mapped file: same outputs, no copies left behind."""

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hwcomp import ort_session
from hwcomp.model import Capture, graph_inputs, load_model, seeded_inputs
from hwcomp.verify import run_onnxruntime_batches
from tests import model_zoo
from tests.helpers import run_ort, to_ir


def test_a_large_model_runs_from_a_mapped_file_with_the_same_outputs(monkeypatch):
    model = to_ir(model_zoo.resnet_like())
    feeds = seeded_inputs(graph_inputs(model))
    expected = run_ort(model_zoo.resnet_like(), feeds)[0]
    inner = [n.outputs[0].name for n in model.graph if n.op_type == "Conv"][:2]
    small = Capture(model, inner).values(inner, [feeds])

    monkeypatch.setattr(ort_session, "LARGE_MODEL_BYTES", 1024)
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("hwcomp-session-*"))
    large = Capture(model, inner).values(inner, [feeds])
    [[output]] = run_onnxruntime_batches(model, [feeds])
    for a, b in zip(small, large, strict=True):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
    assert set(temp.glob("hwcomp-session-*")) == before  # removed once the session maps it
    assert [v.name for v in model.graph.outputs] == ["logits"]  # the model is unchanged
    assert ort_session.weight_bytes(model) > 1024


def test_shape_inference_leaves_large_weights_out_and_gives_the_same_tensors_back(
        monkeypatch, models_dir):
    from hwcomp import model as model_io

    reference = load_model(models_dir / "resnet_like.onnx")
    monkeypatch.setattr(model_io, "_SKELETON_BYTES", 256)
    skeleton = load_model(models_dir / "resnet_like.onnx")
    assert sorted(skeleton.graph.initializers) == sorted(reference.graph.initializers)
    assert [v.name for v in skeleton.graph.inputs] == ["input"]
    shapes = {v.name: list(v.shape) for n in skeleton.graph for v in n.outputs}
    assert shapes == {v.name: list(v.shape) for n in reference.graph for v in n.outputs}
    feeds = seeded_inputs(graph_inputs(skeleton))
    options = ort.SessionOptions()
    got = ort_session.open_session(skeleton, options).run(None, feeds)[0]
    np.testing.assert_array_equal(got, run_ort(model_zoo.resnet_like(), feeds)[0])
