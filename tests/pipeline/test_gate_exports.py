"""The gate, the batch-capable copy and `python -m pipeline serve` with models as the
common exporters write them (built at test time, see tests/service/test_model_exports.py):
a label output before the scores, weights in an external data file, a ZipMap."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline import cli
from pipeline.batchable import batchable_copy
from pipeline.download import Downloaded
from pipeline.gate import run_gate
from pipeline.reference import load_reference
from service.model import ModelInfo, OnnxModel
from tests.service.test_model_exports import sklearn_classifier, with_external_data

MNIST8_ACCURACY = 0.9891


def label_first(mnist8_path: Path, target: Path) -> Path:
    """mnist-8 with an int64 `label` output (the argmax of its scores) before the scores,
    the order skl2onnx writes a classifier's outputs in."""
    model = onnx.load(str(mnist8_path))
    scores = model.graph.output[0].name
    model.graph.node.append(helper.make_node("ArgMax", [scores], ["label"], axis=1, keepdims=0))
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [1])
    model.graph.output.insert(0, label)
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope="module")
def reference():
    loaded = load_reference()
    return replace(loaded, gate=replace(loaded.gate, max_p99_latency_ms=1e9, latency_runs=10))


@pytest.fixture(scope="module")
def downloaded(reference_files: dict[str, Path]) -> Downloaded:
    return Downloaded(
        model_path=reference_files["model"],
        images_path=reference_files["images"],
        labels_path=reference_files["labels"],
        sha256s={"model": "ab" * 32, "test_images": "cd" * 32, "test_labels": "ef" * 32},
    )


def test_a_label_output_before_the_scores_passes_with_the_scores_accuracy(
    reference, downloaded: Downloaded, mnist8_path: Path, tmp_path: Path
) -> None:
    model = label_first(mnist8_path, tmp_path / "labelled.onnx")
    result = run_gate(reference, replace(downloaded, model_path=model))
    assert [c.status for c in result.checks] == ["passed"] * 4, result.reasons
    assert "output 'Plus214_Output_0' scores 10 classes" in result.checks[0].detail
    assert result.evaluation.accuracy == pytest.approx(MNIST8_ACCURACY)


def test_weights_in_an_external_data_file_fail_the_signature_naming_the_fix(
    reference, downloaded: Downloaded, mnist8_path: Path, tmp_path: Path
) -> None:
    model = tmp_path / "torch.onnx"
    model.write_bytes(mnist8_path.read_bytes())
    with_external_data(model)  # loads and answers as mnist-8 does, from two files
    result = run_gate(reference, replace(downloaded, model_path=model))
    signature = result.checks[0]
    assert signature.status == "failed"
    assert "keeps its weights in torch.onnx.data beside it" in signature.detail
    assert "external_data=False" in signature.detail
    assert [c.status for c in result.checks[1:]] == ["skipped"] * 3


def test_a_model_with_no_float_scores_is_refused_naming_its_outputs(
    reference, downloaded: Downloaded, tmp_path: Path
) -> None:
    model = onnx.load(str(sklearn_classifier(tmp_path / "labels.onnx")))
    del model.graph.output[1]  # the label alone
    onnx.save(model, str(tmp_path / "labels.onnx"))
    result = run_gate(reference, replace(downloaded, model_path=tmp_path / "labels.onnx"))
    assert result.checks[0].status == "failed"
    assert "no output is shaped so: the model answers 'label' INT64 [-1]" in (
        result.checks[0].detail
    )


def test_the_batch_capable_copy_of_a_label_first_model_is_proven_on_every_output(
    mnist8_path: Path, mnist_test_set, tmp_path: Path
) -> None:
    model = label_first(mnist8_path, tmp_path / "labelled.onnx")
    images = mnist_test_set[0][:40].astype(np.float32).reshape(-1, 1, 28, 28)
    copy = batchable_copy(model, images, tmp_path / "copy.onnx")
    assert copy.images_checked == 40
    batched = OnnxModel(copy.path, ModelInfo("copy", "1", copy.sha256)).run({"Input3": images})
    assert batched["label"].tolist() == batched["Plus214_Output_0"].argmax(axis=1).tolist()


@pytest.mark.parametrize(
    ("write", "named"),
    [
        pytest.param(
            lambda path: path.write_bytes(b"not a model"),
            "is not a loadable ONNX model",
            id="not-onnx",
        ),
        pytest.param(
            lambda path: sklearn_classifier(path, zipmap=True),
            "options={'zipmap': False}",
            id="zipmap",
        ),
    ],
)
def test_serving_a_model_the_service_refuses_is_one_line_without_a_traceback(
    write, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    write(tmp_path / "candidate.onnx")
    monkeypatch.setenv("MODEL_URL", f"file://{tmp_path / 'candidate.onnx'}")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["serve"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and named in error
    assert error.count("\n") == 1
