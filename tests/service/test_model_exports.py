"""Models as the common exporters write them, built at test time with the `onnx` helper API.

skl2onnx writes a classifier's int64 `label` before its float `probabilities` (or, by
default, the probabilities as a ZipMap: a sequence of maps); torch.onnx.export keeps
weights in an external data file beside the model unless told otherwise; onnxruntime has
no float64 Conv. The service serves the first of these with the scores as its first output
and refuses the others with the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from falcon import testing
from onnx import TensorProto, helper, numpy_helper

from service.app import create_app
from service.config import Settings
from service.errors import ModelLoadError
from service.loader import load_model
from service.model import ModelInfo, OnnxModel

CLASSES = 10
INFO = ModelInfo("exported", "1", "0" * 64)


def sklearn_classifier(path: Path, *, batch: int | str = "N", zipmap: bool = False) -> Path:
    """A linear classifier shaped as skl2onnx exports one: input `X` float [batch, 784];
    outputs `label` int64 [batch] first, then `probabilities` float [batch, 10] (with
    `zipmap`, `output_label` and `output_probability`, a sequence of maps, instead)."""
    weights = np.random.default_rng(0).normal(size=(784, CLASSES)).astype(np.float32) / 1000
    label, probabilities = ("output_label", "scores") if zipmap else ("label", "probabilities")
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [probabilities], axis=1),
        helper.make_node("ArgMax", [probabilities], [label], axis=1, keepdims=0),
    ]
    outputs = [
        helper.make_tensor_value_info(label, TensorProto.INT64, [batch]),
        helper.make_tensor_value_info(probabilities, TensorProto.FLOAT, [batch, CLASSES]),
    ]
    if zipmap:
        nodes.append(
            helper.make_node(
                "ZipMap",
                [probabilities],
                ["output_probability"],
                domain="ai.onnx.ml",
                classlabels_int64s=list(range(CLASSES)),
            )
        )
        maps = helper.make_sequence_type_proto(
            helper.make_map_type_proto(
                TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
            )
        )
        outputs[1] = helper.make_value_info("output_probability", maps)
    graph = helper.make_graph(
        nodes,
        "sklearn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, 784])],
        outputs,
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def with_external_data(path: Path) -> Path:
    """Rewrite the model at `path` with its weights in `<name>.data` beside it, as
    torch.onnx.export writes a model by default; the data file's path."""
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:  # only raw bytes move out (mnist-8 has floats)
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    data = path.with_name(path.name + ".data")
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,  # weights, not the small shape tensors Reshape reads
    )
    assert data.is_file()
    return data


def onnxruntime_classes(path: Path, images: np.ndarray) -> list[int]:
    """The argmax of the float [batch, classes] output, from plain onnxruntime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = session.run(["probabilities"], {"X": images.reshape(len(images), 784)})[0]
    return scores.argmax(axis=1).tolist()


def test_the_scores_output_comes_first_whatever_the_graph_order(tmp_path: Path) -> None:
    model = OnnxModel(sklearn_classifier(tmp_path / "lr.onnx"), INFO)
    assert [(o.name, o.datatype, o.shape) for o in model.outputs] == [
        ("probabilities", "FP32", (-1, CLASSES)),
        ("label", "INT64", (-1,)),
    ]
    assert model.classes == CLASSES


def test_predict_answers_the_classes_onnxruntime_gives_for_a_sklearn_model(
    tmp_path: Path, mnist_test_set
) -> None:
    path = sklearn_classifier(tmp_path / "lr.onnx")
    settings = Settings(
        model_url=str(path),
        cache_dir=tmp_path / "cache",
        prediction_log_url=str(tmp_path / "predictions"),
        model_labels=tuple(str(k) for k in range(CLASSES)),
    )
    client = testing.TestClient(create_app(settings, model=load_model(settings)))
    images = mnist_test_set[0][:50].astype(np.float32)
    want = onnxruntime_classes(path, images)
    assert len(set(want)) > 1  # the check below could not pass by answering one class
    answer = client.simulate_post("/predict", json={"data": images.reshape(50, 784).tolist()})
    assert answer.status_code == 200, answer.text
    assert answer.json["predictions"] == want
    metadata = client.simulate_get("/v2/models/lr").json
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]
    infer = client.simulate_post(
        "/v2/models/lr/infer",
        json={"inputs": [{"name": "X", "shape": [2, 784], "datatype": "FP32", "data": [0] * 1568}]},
    )
    assert infer.status_code == 200, infer.text
    assert {o["name"]: o["shape"] for o in infer.json["outputs"]} == {
        "probabilities": [2, CLASSES],
        "label": [2],
    }


def test_a_zipmap_output_is_refused_naming_the_export_option(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        OnnxModel(sklearn_classifier(tmp_path / "zipmap.onnx", zipmap=True), INFO)
    message = str(raised.value)
    assert "'output_probability' is a seq(map(int64,tensor(float)))" in message
    assert "options={'zipmap': False}" in message
    assert "\n" not in message


def test_weights_in_a_missing_external_data_file_are_refused_naming_the_fix(
    tmp_path: Path,
) -> None:
    exported = tmp_path / "exported"
    exported.mkdir()
    assert with_external_data(sklearn_classifier(exported / "torch.onnx")).is_file()
    alone = tmp_path / "alone.onnx"
    alone.write_bytes((exported / "torch.onnx").read_bytes())  # as a download fetches it
    with pytest.raises(ModelLoadError) as raised:
        OnnxModel(alone, INFO)
    assert "external data" in str(raised.value)
    assert "torch.onnx.export(..., external_data=False)" in str(raised.value)


def test_an_operator_onnxruntime_lacks_for_the_types_is_refused_naming_the_fix(
    tmp_path: Path,
) -> None:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "double_conv",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 1, 28, 28])],
        initializer=[numpy_helper.from_array(np.ones((1, 1, 1, 1)), "w")],
    )
    path = tmp_path / "double.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(ModelLoadError) as raised:
        OnnxModel(path, INFO)
    assert "NOT_IMPLEMENTED" in str(raised.value)
    assert "export the model in float32" in str(raised.value)


def linear_classifier(path: Path, shape: list[int | str], elem_type: int) -> Path:
    """A linear classifier whose input `pixels` is `shape` of `elem_type`: the pixels,
    flattened in row-major order, times fixed weights; scores [batch, 10] of the same type."""
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    weights = np.random.default_rng(1).normal(size=(784, CLASSES)).astype(dtype) / 100
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["pixels", "flat"], ["rows"]),
            helper.make_node("MatMul", ["rows", "W"], ["scores"]),
        ],
        "linear",
        [helper.make_tensor_value_info("pixels", elem_type, shape)],
        [helper.make_tensor_value_info("scores", elem_type, [shape[0], CLASSES])],
        initializer=[
            numpy_helper.from_array(np.array([-1, 784], np.int64), "flat"),
            numpy_helper.from_array(weights, "W"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize(
    "shape",
    [["N", 784], ["N", 28, 28], ["N", 1, 28, 28], ["N", 28, 28, 1], [1, 1, 28, 28]],
    ids=str,
)
@pytest.mark.parametrize(
    "elem_type", [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16], ids=str
)
def test_predict_agrees_with_onnxruntime_for_every_input_layout_and_float_type(
    shape: list[int | str], elem_type: int, tmp_path: Path, mnist_test_set
) -> None:
    path = linear_classifier(tmp_path / "linear.onnx", shape, elem_type)
    settings = Settings(
        model_url=str(path),
        cache_dir=tmp_path / "cache",
        prediction_log_url=str(tmp_path / "predictions"),
    )
    client = testing.TestClient(create_app(settings, model=load_model(settings)))
    images = mnist_test_set[0][:20]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    want = [
        int(session.run(None, {"pixels": image.reshape([1, *shape[1:]]).astype(dtype)})[0].argmax())
        for image in images
    ]
    assert len(set(want)) > 1
    answer = client.simulate_post("/predict", json={"data": images.reshape(20, 784).tolist()})
    assert answer.status_code == 200, answer.text
    assert answer.json["predictions"] == want


def test_a_dynamic_batch_the_graph_cannot_run_is_refused_at_start_in_one_line(
    tmp_path: Path, capfd
) -> None:
    path = linear_classifier(tmp_path / "fixed.onnx", ["N", 1, 28, 28], TensorProto.FLOAT)
    model = onnx.load(str(path))
    flat = next(t for t in model.graph.initializer if t.name == "flat")
    flat.CopyFrom(numpy_helper.from_array(np.array([1, 784], np.int64), "flat"))
    onnx.save(model, str(path))  # declares [N, ...] but reshapes to one row
    settings = Settings(
        model_url=str(path),
        cache_dir=tmp_path / "cache",
        prediction_log_url=str(tmp_path / "predictions"),
    )
    with pytest.raises(ModelLoadError) as raised:
        load_model(settings)
    message = str(raised.value)
    assert "input 'pixels' declares a dynamic batch [-1, 1, 28, 28]" in message
    assert "fails on a batch of 2" in message and "fixed at 1" in message
    assert capfd.readouterr().err == ""  # onnxruntime's own log does not repeat it


def test_a_dynamic_dimension_besides_the_batch_is_refused_naming_the_fix(tmp_path: Path) -> None:
    path = linear_classifier(tmp_path / "any_size.onnx", ["N", 1, "H", "W"], TensorProto.FLOAT)
    with pytest.raises(ModelLoadError) as raised:
        OnnxModel(path, INFO)
    assert str(raised.value) == (
        "input 'pixels' has shape [-1, 1, -1, -1]; only the batch dimension may be dynamic: "
        "export the model with the others fixed (with torch.onnx.export, name the batch "
        "dimension alone in dynamic_shapes or dynamic_axes)"
    )
