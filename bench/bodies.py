"""The request bodies the bench sends, and how to read the classes back from each answer.

Every contender gets the same bytes for the same row: `/predict` JSON
(`{"data": [...]}`, one image flat or a list of images), Open Inference
Protocol JSON tensors, and Triton's binary tensor extension (a JSON header,
then raw little-endian float32; the header length travels in
`Inference-Header-Content-Length`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson

BINARY_HEADER = "Inference-Header-Content-Length"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class Body:
    """One POST: where it goes (path), its bytes and headers, and how many images it holds."""

    kind: str  # "predict", "v2-json", "v2-binary" or "fixed" (no answer to check)
    path: str
    data: bytes
    headers: dict[str, str]
    images: int
    meta: dict[str, str] = field(default_factory=dict)


def pixels(images: np.ndarray) -> np.ndarray:
    """MNIST images (uint8 [N,28,28] or float) as float32 [N,1,28,28], raw 0..255."""
    return np.asarray(images, dtype=np.float32).reshape(images.shape[0], 1, 28, 28)


def predict_json(images: np.ndarray) -> Body:
    """`POST /predict`: one image as a flat list of 784 numbers, several as a list of lists."""
    batch = pixels(images)
    if batch.shape[0] == 1:
        data = batch.reshape(-1).tolist()
    else:
        data = batch.reshape(batch.shape[0], -1).tolist()
    return Body(
        "predict", "/predict", orjson.dumps({"data": data}), {"Content-Type": JSON}, len(batch)
    )


def v2_json(images: np.ndarray, model: str, input_name: str) -> Body:
    """Open Inference Protocol infer request with the tensor as JSON numbers."""
    batch = pixels(images)
    document = {
        "inputs": [
            {
                "name": input_name,
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.reshape(-1).tolist(),
            }
        ]
    }
    return Body(
        "v2-json",
        f"/v2/models/{model}/infer",
        orjson.dumps(document),
        {"Content-Type": JSON},
        len(batch),
    )


def v2_binary(images: np.ndarray, model: str, input_name: str, output_name: str) -> Body:
    """Open Inference Protocol infer request and answer as binary tensors (Triton's extension)."""
    batch = pixels(images)
    blob = batch.astype("<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        }
    )
    return Body(
        "v2-binary",
        f"/v2/models/{model}/infer",
        header + blob,
        {"Content-Type": OCTET_STREAM, BINARY_HEADER: str(len(header))},
        len(batch),
        {"output": output_name},
    )


def fixed(path: str, like: Body) -> Body:
    """`like`'s bytes sent to an app that answers a fixed body (nothing to check)."""
    return Body("fixed", path, like.data, dict(like.headers), like.images)


class AnswerError(ValueError):
    """A contender's answer is not what the row's request asks for."""


def classes(body: Body, answer: bytes, headers: Mapping[str, str]) -> list[int]:
    """The predicted classes in a contender's answer to `body`."""
    if body.kind == "predict":
        document = orjson.loads(answer)
        if "prediction" in document:
            return [int(document["prediction"])]
        return [int(c) for c in document["predictions"]]
    if body.kind == "v2-json":
        output = orjson.loads(answer)["outputs"][0]
        scores = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        return scores.reshape(scores.shape[0], -1).argmax(axis=1).tolist()
    if body.kind == "v2-binary":
        lowered = {k.lower(): v for k, v in headers.items()}
        length = int(lowered[BINARY_HEADER.lower()])
        document = orjson.loads(answer[:length])
        output = next(o for o in document["outputs"] if o["name"] == body.meta["output"])
        size = output["parameters"]["binary_data_size"]
        scores = np.frombuffer(answer[length : length + size], dtype="<f4").reshape(output["shape"])
        return scores.reshape(scores.shape[0], -1).argmax(axis=1).tolist()
    raise AnswerError(f"a {body.kind!r} body has no classes to read")
