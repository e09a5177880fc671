"""The numbers of a body's `"data"` array straight into numpy, without a Python float each.

`/predict`'s usual body is `{"data": [784 numbers]}` or a list of such rows, and a V2
JSON tensor's `data` is the same kind of array (`decode_array`). Turning it
into a float32 array through Python objects (a JSON parser's list of floats, then
`np.array`) takes about 45 us for the bench's body, this lane 14 (bench/README.md, "The
numbers go straight to an array"):
simdjson (pysimdjson) parses the body and copies the array's numbers into one buffer of
doubles in C, which numpy rounds to the model's type.

This is only a fast lane: it answers an array when the answer is certain to be the one
the general path (`service.codec`) would give, and None for everything else, which the
general path then decodes or refuses with its own message. Numbers are parsed to the
nearest double by both (simdjson and msgspec/orjson round correctly), then rounded to
the model's type once, so the arrays are equal bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import simdjson

# The types this lane serves: a double rounded once to them is what np.array() of Python
# floats gives. Other types (integers, float16) take the general path.
FLOAT32 = np.dtype(np.float32)
FAST_DTYPES = (FLOAT32, np.dtype(np.float64))
EXACT_INTEGERS = 2.0**53  # every integer of smaller magnitude is exactly a double
# The range check sums the squares of the numbers scaled by this power of two (exact):
# a double's largest, 2**1024, becomes 2**474, so no sum of squares of fewer than 2**76
# numbers overflows, and float32's largest and 2**53 squared stay normal doubles
# (2**-844 and 2**-994). Numbers under 2**13 square to nothing there, far below either.
RANGE_SCALE = 2.0**-550
SCALED_FLOAT32_MAX_SQUARED = (float(np.finfo(np.float32).max) * RANGE_SCALE) ** 2


class NumberArrays:
    """Decodes `{"data": [numbers]}` and `{"data": [[numbers], ...]}` bodies.

    Holds one simdjson parser (its buffers are reused from request to request), so one
    instance serves one event loop: `decode` never awaits, so calls never interleave.
    """

    def __init__(self) -> None:
        self._parser = simdjson.Parser()

    def decode(self, body: bytes, dtype: np.dtype, *, below: float = math.inf) -> np.ndarray | None:
        """The `data` of `body` as an array of `dtype`: shape [n] for a flat list of n
        numbers, [rows, n] for rows of n numbers each; None when the body is anything
        else (another key, a string, boolean or null, deeper or ragged nesting, an empty
        list, a number beyond the type's range or of magnitude `below` or more, malformed
        JSON) or `dtype` is not float32/float64. Never raises for any body."""
        if dtype not in FAST_DTYPES:
            return None
        try:
            numbers = self._numbers(body)
        except (ValueError, TypeError, KeyError):  # not JSON, or not numbers all through
            return None
        except RuntimeError:  # the parser was left in use (cannot happen here; be safe)
            self._parser = simdjson.Parser()
            return None
        if numbers is None:
            return None
        values, shape = numbers
        # JSON numbers are finite doubles; only float32 can be too small for one. When the
        # sum of squares is within float32's largest squared, every number is within its
        # range and the cast cannot overflow; otherwise the general path decides, and words
        # the error. The numbers are scaled first (RANGE_SCALE), so the sum cannot
        # overflow, and numpy has no overflow to warn of (a line on stderr, outside the
        # JSON log): a multiply and a dot product, where numpy's overflow context alone
        # costs more, and the cast's own overflow context and an isfinite pass more still.
        if dtype == FLOAT32 or below < math.inf:
            scaled = values * RANGE_SCALE
            squares = scaled.dot(scaled)
            if not squares < (below * RANGE_SCALE) ** 2 or (
                dtype == FLOAT32 and not squares <= SCALED_FLOAT32_MAX_SQUARED
            ):
                return None
        return values.astype(dtype).reshape(shape)

    def decode_array(self, array: bytes, dtype: np.dtype) -> np.ndarray | None:
        """A JSON array's text (a V2 tensor's `data`) as a flat array of `dtype`, equal to
        what `np.asarray` of the parsed numbers gives when cast to `dtype`; None whenever
        `decode` declines `{"data": array}`. Its numbers must be below 2**53 in magnitude:
        beyond, a list of integers becomes int64 in `np.asarray` and rounds to float32
        once, where a double rounds twice."""
        values = self.decode(b'{"data":' + array + b"}", dtype, below=EXACT_INTEGERS)
        return None if values is None else values.reshape(-1)

    def _numbers(self, body: bytes) -> tuple[np.ndarray, tuple[int, ...]] | None:
        """Every number of `data` as float64, and the shape they form; None when `data`
        is not a non-empty flat list or a non-empty list of equally long non-empty rows.

        Brackets are counted in the raw bytes: with `data` the only key and only numbers
        in it (as_buffer refuses anything else), one `[` means a flat list and rows + 1
        mean rows with nothing nested deeper (as_buffer would flatten that silently).
        A flat list is told by a second `find` coming back empty (memchr), without the
        count's byte-by-byte pass: about 31,000 instructions on a 784-number body, a
        seventh of the lane's whole cost.
        """
        flat = body.find(b"[", body.find(b"[") + 1) == -1  # no second bracket
        brackets = 1 if flat else body.count(b"[")
        document = self._parser.parse(body)
        if not isinstance(document, simdjson.Object) or len(document) != 1:
            return None  # another key, or "data" twice (the general path keeps the last)
        data = document.get("data")
        if not isinstance(data, simdjson.Array) or len(data) == 0:
            return None
        rows = len(data)
        if brackets == 1:
            shape: tuple[int, ...] = (rows,)
        elif brackets == rows + 1 and isinstance(data[0], simdjson.Array):
            width = len(data[0])
            if width == 0 or any(len(row) != width for row in data):
                return None
            shape = (rows, width)
        else:
            return None
        values = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
        del data, document  # the parser may be reused only once both are gone
        if values.size != math.prod(shape):
            return None
        return values, shape
