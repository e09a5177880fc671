"""The model core: one ONNX model in onnxruntime, its signature, and inference.

Model-agnostic: shapes and types are read from the graph. A model whose batch
dimension is fixed at 1 (the Model Zoo's mnist-8) still takes batches, one row
at a time. The outputs are listed with the class scores first (`scores_first`),
whatever order the exporter wrote them in. This module never imports falcon.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.errors import InvalidInput, ModelLoadError

# onnxruntime type strings -> (numpy dtype, Open Inference Protocol datatype)
ORT_TYPES: dict[str, tuple[np.dtype, str]] = {
    "tensor(float)": (np.dtype(np.float32), "FP32"),
    "tensor(double)": (np.dtype(np.float64), "FP64"),
    "tensor(float16)": (np.dtype(np.float16), "FP16"),
    "tensor(int8)": (np.dtype(np.int8), "INT8"),
    "tensor(int16)": (np.dtype(np.int16), "INT16"),
    "tensor(int32)": (np.dtype(np.int32), "INT32"),
    "tensor(int64)": (np.dtype(np.int64), "INT64"),
    "tensor(uint8)": (np.dtype(np.uint8), "UINT8"),
    "tensor(uint16)": (np.dtype(np.uint16), "UINT16"),
    "tensor(uint32)": (np.dtype(np.uint32), "UINT32"),
    "tensor(uint64)": (np.dtype(np.uint64), "UINT64"),
    "tensor(bool)": (np.dtype(np.bool_), "BOOL"),
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the graph. `shape` uses -1 for a dynamic dimension."""

    name: str
    dtype: np.dtype
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def from_ort(cls, arg: ort.NodeArg) -> TensorSpec:
        """The spec of one graph input or output; ModelLoadError, naming the fix, when it
        is not a tensor of a type in ORT_TYPES."""
        if arg.type not in ORT_TYPES:
            raise ModelLoadError(_unserved_type(arg.name, arg.type))
        dtype, datatype = ORT_TYPES[arg.type]
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
        return cls(arg.name, dtype, datatype, shape)

    # Computed once per tensor (the spec is frozen): every request reads them.
    @functools.cached_property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one example: everything after the batch dimension."""
        return self.shape[1:]

    @functools.cached_property
    def item_size(self) -> int:
        return math.prod(self.item_shape) if all(d > 0 for d in self.item_shape) else -1

    @functools.cached_property
    def example_shape(self) -> tuple[int, ...]:
        """One example without its size-1 dimensions (28x28 for mnist-8's 1x28x28)."""
        return tuple(d for d in self.item_shape if d != 1)

    @property
    def batch_follows(self) -> bool:
        """Whether the first dimension is a batch the service can fill: 1 or dynamic."""
        return bool(self.shape) and self.shape[0] in (1, -1)

    def with_dynamic_batch(self) -> TensorSpec:
        """The same tensor with its first dimension reported as -1 (any batch size)."""
        return replace(self, shape=(-1, *self.shape[1:]))


def _unserved_type(name: str, onnx_type: str) -> str:
    """Why a graph input or output of `onnx_type` cannot be served, and the fix."""
    if onnx_type.startswith(("seq(", "map(")):
        return (
            f"{name!r} is a {onnx_type}, not a tensor (skl2onnx's ZipMap writes a classifier's "
            "probabilities so): the service serves tensors only; convert the classifier with "
            "skl2onnx's options={'zipmap': False}, which makes the probabilities one float "
            "tensor shaped [batch, classes]"
        )
    served = ", ".join(datatype for _, datatype in ORT_TYPES.values())
    return (
        f"{name!r} has type {onnx_type}, which the service cannot serve: export the model "
        f"with tensors of one of {served}"
    )


def scores_first(outputs: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
    """`outputs` with the class scores first: the first floating-point output shaped
    [batch, classes] leads, the others keep their graph order (all of them do when no
    output is shaped so).

    The first output is what /predict takes its argmax from, what the labels name and
    what capture records and the gate judge. Exporters do not always put the scores
    first: skl2onnx writes a classifier's int64 `label` [batch] before its float
    `probabilities` [batch, classes], and the argmax of a label is always 0.
    """
    scores = next(
        (i for i, spec in enumerate(outputs) if spec.dtype.kind == "f" and len(spec.shape) == 2),
        0,
    )
    return (outputs[scores], *outputs[:scores], *outputs[scores + 1 :])


def shape_words(shape: Sequence[int]) -> str:
    """`shape` as model metadata writes it, with what its -1s mean, for messages:
    "[-1, 1, 28, 28], where -1 is any number of rows (at least 1)"."""
    text = str(list(shape))
    if -1 not in shape:
        return text
    if shape[0] == -1 and -1 not in shape[1:]:
        return f"{text}, where -1 is any number of rows (at least 1)"
    return f"{text}, where -1 is any size (at least 1 in the first dimension, the rows)"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str
    platform: str = "onnxruntime_onnx"


class OnnxModel:
    """An onnxruntime session plus what the service needs to know about it."""

    def __init__(
        self,
        path: Path,
        info: ModelInfo,
        *,
        intra_op_threads: int = 1,
        batched_path: Path | None = None,
        labels: tuple[str, ...] = (),
    ) -> None:
        self._session = _session(path, intra_op_threads)
        self.info = info
        self.labels = labels
        self.inputs = tuple(TensorSpec.from_ort(a) for a in self._session.get_inputs())
        # Outputs are listed (in metadata, answers and by `run`) with the scores first.
        self.outputs = scores_first([TensorSpec.from_ort(a) for a in self._session.get_outputs()])
        self._output_names = [o.name for o in self.outputs]
        first = self.inputs[0]
        if first.item_size <= 0:
            raise ModelLoadError(
                f"input {first.name!r} has shape {list(first.shape)}; only the batch "
                "dimension may be dynamic: export the model with the others fixed (with "
                "torch.onnx.export, name the batch dimension alone in dynamic_shapes or "
                "dynamic_axes)"
            )
        self.input = first
        self.batch_fixed_at_one = first.shape[0] == 1
        # Batches of any size are served when every input's first dimension is a batch
        # (1: one row at a time or through the batch-capable copy; -1: in one call), and
        # the metadata then says -1 there, as Triton does for a batching model (Triton's
        # model configuration guide, "Maximum Batch Size" and "Inputs and Outputs": with
        # max_batch_size > 0 a tensor's full shape is [-1] + dims).
        self.serves_batches = all(spec.batch_follows for spec in self.inputs)
        self.served_inputs = self._served(self.inputs)
        self.served_outputs = self._served(self.outputs)
        # A batch-capable copy (made and proven equal on the test set by the pipeline)
        # runs whole batches of a batch-1 model in one call.
        self._batched = None
        if batched_path is not None and self.batch_fixed_at_one:
            self._batched = _session(batched_path, intra_op_threads)
            copy_input = self._batched.get_inputs()[0]
            if copy_input.name != first.name or tuple(copy_input.shape[1:]) != first.item_shape:
                raise ModelLoadError(
                    f"{batched_path} does not take the model's input {first.name!r} "
                    f"{list(first.item_shape)}: it is not a batch-capable copy of this model"
                )

    def _served(self, specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        if not self.serves_batches:
            return specs
        return tuple(s.with_dynamic_batch() if s.batch_follows else s for s in specs)

    @property
    def classes(self) -> int:
        """Scores per example in the first output: what /predict's argmax picks from."""
        return max(1, math.prod(d for d in self.outputs[0].shape[1:] if d > 0))

    # -- inference ---------------------------------------------------------

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on already-validated inputs whose first axis is the batch."""
        batch = next(iter(feeds.values())).shape[0]
        if not self.batch_fixed_at_one or batch == 1 or self._batched is not None:
            session = self._batched if batch > 1 and self._batched is not None else self._session
            return dict(
                zip(self._output_names, session.run(self._output_names, feeds), strict=True)
            )
        rows = [
            self._session.run(self._output_names, {k: v[i : i + 1] for k, v in feeds.items()})
            for i in range(batch)
        ]
        return {
            name: np.concatenate([row[j] for row in rows], axis=0)
            for j, name in enumerate(self._output_names)
        }

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Scores of the first output for a batch shaped [N, *item_shape]."""
        return self.run({self.input.name: batch})[self._output_names[0]]

    def warm_up(self) -> None:
        """Run one row, then two wherever batches run in one call (a dynamic batch, or the
        batch-capable copy), as the dynamic batcher will. Raises what onnxruntime raises for
        one row, and ModelLoadError, naming the fix, for a graph that declares a dynamic
        batch but cannot run one (an exporter's Reshape to a fixed [1, ...], say)."""
        self.scores(np.zeros((1, *self.input.item_shape), dtype=self.input.dtype))
        if self.batch_fixed_at_one and self._batched is None:
            return
        try:
            self.scores(np.zeros((2, *self.input.item_shape), dtype=self.input.dtype))
        except Exception as exc:  # onnxruntime raises several private types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise ModelLoadError(
                f"input {self.input.name!r} declares a dynamic batch "
                f"{list(self.input.shape)}, but the model fails on a batch of 2 ({reason}): "
                "export it so that every operator takes the batch from the input (no "
                "reshape to a fixed 1), or with its batch dimension fixed at 1, which the "
                "service runs one row at a time"
            ) from exc

    # -- input shaping -----------------------------------------------------

    def as_batch(self, values: np.ndarray) -> tuple[np.ndarray, bool]:
        """Reshape client data to [N, *item_shape]; say whether it was one example.

        The shape of `data` alone decides, never how many examples it holds: one
        example is flat (784 numbers for mnist-8) or shaped like the model's item
        without its size-1 dimensions (28x28); a list of examples adds one leading
        dimension to either form, or to the full item shape (Nx1x28x28), and stays a
        list when it holds a single example. Raises InvalidInput for any other shape.
        """
        spec = self.input
        flat = (spec.item_size,)
        example = spec.example_shape
        shape = values.shape
        if shape in (flat, example):
            return values.reshape((1, *spec.item_shape)), True
        if len(shape) >= 2 and shape[0] > 0 and shape[1:] in (flat, example, spec.item_shape):
            return values.reshape((shape[0], *spec.item_shape)), False
        raise InvalidInput(
            f"data has shape {list(shape)}; expected one example shaped "
            f"{_either(flat, example)}, or a list of examples shaped "
            f"{_either(*((-1, *form) for form in (flat, example, spec.item_shape)))}, where -1 "
            "is any number of rows (at least 1)"
        )


def _either(*shapes: tuple[int, ...]) -> str:
    """Distinct shapes as a message lists them: "[784] or [28, 28]", "[a], [b] or [c]"."""
    texts = list(dict.fromkeys(str(list(shape)) for shape in shapes))
    return " or ".join(filter(None, (", ".join(texts[:-1]), texts[-1])))


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """How every onnxruntime session of the project runs a model: the service's, the
    gate's, the batch-capable copy's proof and the benchmark's compute ceiling.

    `intra_op_threads` threads inside an operator (one per worker process, see
    INTRA_OP_THREADS), one thread between operators, run sequentially, every graph
    optimisation on.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Fatal only: onnxruntime's own error log repeats on stderr, in colour, what the
    # exception it raises says, and the callers report that exception (at start, one line).
    options.log_severity_level = 4
    return options


def _session(path: Path, intra_op_threads: int) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=session_options(intra_op_threads),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises several private types
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        raise ModelLoadError(
            f"{path} is not a loadable ONNX model: {first_line}{_load_fix(first_line)}"
        ) from exc


def _load_fix(reason: str) -> str:
    """The fix for the load failures a freshly exported model meets, as a clause; "" for
    any other (a file that is not ONNX says so itself)."""
    if "external data" in reason.lower():
        return (
            "; the model keeps its weights in a separate external data file, which its "
            "sha256 does not cover and a deploy does not ship: save it as one file "
            "(torch.onnx.export(..., external_data=False), or onnx.save(onnx.load(path), "
            "new_path))"
        )
    if "NOT_IMPLEMENTED" in reason:
        return (
            f"; onnxruntime {ort.__version__}'s CPU provider has no kernel for that operator "
            "with these types at this opset (a float64 Conv, for one): export the model in "
            "float32, at an opset this onnxruntime implements"
        )
    return ""
