"""Classes from scores: each row's class (`/predict`'s answer and every captured record's
`prediction`), and Triton's classification extension, an output's top classes instead of
its scores.

A request asks for it per output with the parameter `"classification": k`; the
output then comes back as a BYTES tensor of shape [batch, min(k, classes)] whose
entries read "<score>:<index>" or, when the model has labels, "<score>:<index>:<label>",
highest score first (Triton's protocol documentation, "Classification Extension";
the server's `src/classification.cc` formats the score with C++'s `std::to_string`,
which is printf's "%f" for floating point, and compares in the output's own type).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Datatypes whose values have no order to rank classes by.
UNRANKED_DATATYPES = ("BOOL", "BYTES")


def row_classes(scores: np.ndarray) -> list[int | None]:
    """Each row's class: the index of its largest score (`scores` [rows, classes], any
    numeric dtype), None for a row that holds a NaN, which has no class (an onnxruntime
    graph gives NaN where its arithmetic overflows, e.g. inf - inf).

    numpy's argmax returns the index of a row's first NaN, as `max` propagates NaN
    (numpy.max, "See Also"), so the score at a row's argmax is NaN exactly when the row
    holds one (a test pins that rule).
    """
    classes: list[int | None] = scores.argmax(axis=1).tolist()
    if scores.dtype.kind == "f":
        for row, index in enumerate(classes):
            if math.isnan(scores.item(row, index)):
                classes[row] = None
    return classes


def top_classes(scores: np.ndarray, count: int, labels: Sequence[str] = ()) -> np.ndarray:
    """The `count` highest-scoring classes of each example, as strings.

    `scores` is [N, ...] of any numeric dtype; each example's values are ranked
    flat, so the class index is the position in the flattened example. Equal
    scores keep index order. Returns an object array of str, shape
    [N, min(count, classes)]; `labels`, when given, has one label per class.
    """
    rows = scores.reshape(scores.shape[0], -1)
    classes = rows.shape[1]
    kept = min(count, classes)
    # Highest first, ties in index order: a stable ascending sort of the reversed row,
    # read backwards, maps position j back to class (classes - 1 - j).
    order = np.argsort(rows[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :kept]
    indices = classes - 1 - order
    values = np.take_along_axis(rows, indices, axis=1)
    as_text = _float_text if rows.dtype.kind == "f" else _integer_text
    result = np.empty(indices.shape, dtype=object)
    for r, (row_values, row_indices) in enumerate(zip(values, indices, strict=True)):
        for c, (value, index) in enumerate(zip(row_values, row_indices, strict=True)):
            entry = f"{as_text(value)}:{index}"
            result[r, c] = f"{entry}:{labels[index]}" if labels else entry
    return result


def _float_text(value: np.generic) -> str:
    return f"{float(value):f}"


def _integer_text(value: np.generic) -> str:
    return str(int(value))
