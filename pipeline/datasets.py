"""Decode the test set: MNIST IDX files (gzip or plain) or a CSV pair of images and labels.

Both forms give the same `Dataset`: `images` [N, H, W] (uint8 for whole-number
pixels 0..255, float32 when a CSV holds fractions) and `labels` [N] (int64).
A malformed file raises `DatasetError` naming the file and what is wrong.

- IDX: `*-images-idx3-ubyte[.gz]` has magic 0x00000803 and dimensions N, H, W;
  `*-labels-idx1-ubyte[.gz]` has magic 0x00000801 and dimension N.
- CSV: `test_data.csv` holds one image per row (H*W pixel values, a square
  image: 784 for MNIST); `test_labels.csv` one label per row. A first row
  with no number in it (or pandas' column numbers 0,1,...) is a header, skipped.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """A test-data file is not what its format says."""


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def classes(self) -> int:
        """How many classes the labels name: the highest label plus one."""
        return int(self.labels.max()) + 1 if len(self) else 0


def load_dataset(images_path: Path, labels_path: Path, test_format: str) -> Dataset:
    """Decode an images/labels pair and check that they describe the same examples."""
    if test_format == "idx":
        images, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    elif test_format == "csv":
        images, labels = read_csv_images(images_path), read_csv_labels(labels_path)
    else:
        raise DatasetError(f"unknown test data format {test_format!r}; use idx or csv")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path.name} holds {images.shape[0]} images but {labels_path.name} holds "
            f"{labels.shape[0]} labels; they must be the same test set"
        )
    if images.shape[0] == 0:
        raise DatasetError(f"{images_path.name} holds no images")
    return Dataset(images, labels)


def scaled_inputs(
    images: np.ndarray, dtype: np.dtype, item_shape: tuple[int, ...], input_scale: float
) -> np.ndarray:
    """Test images as a model takes them: `dtype`, shaped [N, *item_shape], pixels times
    `input_scale` (`[model] input_scale` of model.toml: 1.0 keeps raw 0..255).

    The one place pixels are scaled: the gate, the batch-capable copy's proof, the smoke
    images and the benchmark all take their inputs from here.
    """
    pixels = images.reshape(len(images), -1).astype(dtype)
    if input_scale != 1.0:
        pixels *= np.dtype(dtype).type(input_scale)
    return pixels.reshape((len(images), *item_shape))


# -- IDX -----------------------------------------------------------------------


def read_idx_images(path: Path) -> np.ndarray:
    return _read_idx(path, IDX_IMAGES_MAGIC, ndim=3, what="images")


def read_idx_labels(path: Path) -> np.ndarray:
    return _read_idx(path, IDX_LABELS_MAGIC, ndim=1, what="labels").astype(np.int64)


def _read_idx(path: Path, magic: int, ndim: int, what: str) -> np.ndarray:
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path.name}: {len(data)} bytes is too short for an IDX {what} file")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        hint = ""
        if found in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
            hint = "; images and labels look swapped"
        raise DatasetError(
            f"{path.name}: IDX magic number is 0x{found:08x}, expected 0x{magic:08x} for {what}"
            f"{hint}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise DatasetError(
            f"{path.name}: header says {' x '.join(map(str, dims))} uint8 values "
            f"({expected} bytes with the header) but the file holds {len(data)} bytes; "
            "it is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path.name}: broken gzip data: {exc}") from None
    return data


# -- CSV -----------------------------------------------------------------------


def read_csv_images(path: Path) -> np.ndarray:
    rows = _read_csv(path, ndmin=2)
    side = math.isqrt(rows.shape[1])
    if side * side != rows.shape[1]:
        hint = ""
        if math.isqrt(rows.shape[1] - 1) ** 2 == rows.shape[1] - 1:
            hint = " (one column too many: drop the label or index column)"
        raise DatasetError(
            f"{path.name}: rows hold {rows.shape[1]} values, which is not a square image "
            f"(784 = 28 x 28 for MNIST){hint}"
        )
    if rows.dtype.kind == "i":
        if rows.min() < 0 or rows.max() > 255:
            raise DatasetError(
                f"{path.name}: whole-number pixels must be 0..255, found {rows.min()}..{rows.max()}"
            )
        rows = rows.astype(np.uint8)
    elif not np.isfinite(rows).all():
        raise DatasetError(f"{path.name}: holds NaN or infinite pixel values")
    return rows.reshape(rows.shape[0], side, side)


def read_csv_labels(path: Path) -> np.ndarray:
    rows = _read_csv(path, ndmin=1)
    if rows.ndim == 2:
        raise DatasetError(
            f"{path.name}: expected one label per row, found {rows.shape[1]} values per row"
        )
    if rows.dtype.kind != "i" or (rows < 0).any():
        raise DatasetError(f"{path.name}: labels must be whole numbers from 0 up")
    return rows


def write_csv(dataset: Dataset, images_path: Path, labels_path: Path) -> None:
    """Write `dataset` as a CSV pair: one image a row, one label a row."""
    pixels = dataset.images.reshape(len(dataset), -1)
    if pixels.dtype == np.uint8:  # formatting through a table is 10x faster than savetxt
        table = np.array([str(v) for v in range(256)], dtype=object)
        rows = (",".join(table[row]) for row in pixels)
    else:
        rows = (",".join(f"{v:g}" for v in row) for row in pixels)
    images_path.write_text("\n".join(rows) + "\n")
    labels_path.write_text("\n".join(str(int(label)) for label in dataset.labels) + "\n")


def _read_csv(path: Path, ndmin: int) -> np.ndarray:
    text = _read_bytes(path).decode("utf-8-sig", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and _is_header(lines[0]):
        lines = lines[1:]
    if not lines:
        raise DatasetError(f"{path.name}: holds no rows")
    try:  # whole numbers parse three times faster as integers; fall back to floats
        rows = np.loadtxt(lines, delimiter=",", dtype=np.int64, ndmin=ndmin)
    except ValueError:
        try:
            rows = np.loadtxt(lines, delimiter=",", dtype=np.float32, ndmin=ndmin)
        except ValueError as exc:
            raise DatasetError(f"{path.name}: not a numeric CSV file: {exc}") from None
    return rows


def _is_header(line: str) -> bool:
    """A first row with no number in it, or pandas' 0,1,...,n-1, names the columns."""
    fields = [field.strip() for field in line.split(",")]
    if len(fields) > 1 and fields == [str(i) for i in range(len(fields))]:
        return True
    for field in fields:
        try:
            float(field)
        except ValueError:
            continue
        return False
    return True
