"""A batch-capable copy of a model whose batch dimension is fixed at 1, proven equal.

The Model Zoo's mnist-8 declares a batch of 1 and reshapes its activations to
`[1, 256]`, so onnxruntime refuses a batch of 4. The copy makes the batch
dimension symbolic and turns such activation reshapes' leading 1 into -1. It is
used only after it answers exactly as the original does on the whole test set
(same class for every image, scores within a tight tolerance); the gate does
that check and the service then runs batches through the copy in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.artifacts import sha256_of
from service.model import TensorSpec, scores_first, session_options

BATCH_DIM = "batch"
CHECK_BATCH = 256
# Relative to the largest score magnitude: float32 summation order may differ.
RELATIVE_TOLERANCE = 1e-5


class NotBatchable(Exception):
    """The graph cannot be given a dynamic batch, or the copy does not answer as the original."""


@dataclass(frozen=True)
class BatchableCopy:
    path: Path
    sha256: str
    images_checked: int
    max_abs_difference: float


def make_copy(model_path: Path, target: Path) -> Path:
    """Write the batch-capable copy of `model_path` to `target`; NotBatchable when it can't."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise NotBatchable(f"the graph has {len(inputs)} inputs; only one-input models are copied")
    first = inputs[0].type.tensor_type.shape.dim[0]
    if not (first.HasField("dim_value") and first.dim_value == 1):
        raise NotBatchable("the batch dimension is not fixed at 1: the model batches already")
    changed = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[0] in initializers:
            continue
        shape_init = initializers.get(node.input[1])
        if shape_init is None:
            raise NotBatchable(f"Reshape {node.name or node.output[0]} has a computed shape")
        shape = numpy_helper.to_array(shape_init).copy()
        if shape.size and shape[0] == 1:
            shape[0] = -1
            shape_init.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), shape_init.name))
            changed += 1
    for value in (*inputs, *graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM
    del graph.value_info[:]  # stale intermediate shapes carry the fixed batch of 1
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def prove_equal(original: Path, copy: Path, inputs: np.ndarray) -> float:
    """Max |difference| of the copy's floating-point outputs over `inputs` ([N, *item]);
    NotBatchable unless every output answers as the original's does: the scores output
    (`service.model.scores_first`) with the same class for every row, floats within
    RELATIVE_TOLERANCE, other types exactly."""
    options = session_options()
    reference = ort.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])
    try:
        batched = ort.InferenceSession(str(copy), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private types
        raise NotBatchable(f"onnxruntime cannot open the copy: {exc}") from None
    name = reference.get_inputs()[0].name
    outputs = [
        spec.name
        for spec in scores_first([TensorSpec.from_ort(o) for o in reference.get_outputs()])
    ]
    worst = 0.0
    for start in range(0, len(inputs), CHECK_BATCH):
        chunk = inputs[start : start + CHECK_BATCH]
        try:
            got = batched.run(outputs, {name: chunk})
        except Exception as exc:
            raise NotBatchable(f"the copy fails on a batch of {len(chunk)}: {exc}") from None
        rows = [reference.run(outputs, {name: row[None]}) for row in chunk]
        want = [np.concatenate([row[j] for row in rows]) for j in range(len(outputs))]
        worst = max(worst, _difference(got, want, start))
    return worst


def _difference(got: list[np.ndarray], want: list[np.ndarray], start: int) -> float:
    """Max |difference| of the floating-point outputs of one chunk (the scores first);
    NotBatchable when a shape, the scores' classes, an exact output or a float's
    tolerance differs."""
    scores, expected = got[0], want[0]
    if scores.shape != expected.shape or not np.array_equal(
        scores.reshape(len(scores), -1).argmax(1), expected.reshape(len(expected), -1).argmax(1)
    ):
        raise NotBatchable(f"the copy's classes differ from the original's near image {start}")
    worst = 0.0
    for value, reference in zip(got, want, strict=True):
        if value.shape != reference.shape:
            raise NotBatchable(f"the copy's output shapes differ near image {start}")
        if reference.dtype.kind != "f":
            if not np.array_equal(value, reference):
                raise NotBatchable(f"the copy's outputs differ near image {start}")
            continue
        difference = float(np.abs(value - reference).max())
        scale = float(np.abs(reference).max()) or 1.0
        if difference > RELATIVE_TOLERANCE * scale:
            raise NotBatchable(
                f"the copy's scores differ by {difference:g} (scale {scale:g}) near image {start}"
            )
        worst = max(worst, difference)
    return worst


def batchable_copy(model_path: Path, inputs: np.ndarray, target: Path) -> BatchableCopy:
    """Make the copy and prove it equal to the original on `inputs` (the whole test set)."""
    make_copy(model_path, target)
    try:
        worst = prove_equal(model_path, target, inputs)
    except NotBatchable:
        target.unlink(missing_ok=True)
        raise
    return BatchableCopy(target, sha256_of(target), len(inputs), worst)
