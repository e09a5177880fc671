"""Decoding the MNIST test set from IDX (gzip or plain) and from a CSV images-and-labels pair."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import (
    Dataset,
    DatasetError,
    load_dataset,
    read_csv_images,
    read_csv_labels,
    read_idx_images,
    read_idx_labels,
    write_csv,
)

# Per-class counts of the MNIST t10k set, digits 0 to 9.
T10K_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def t10k(reference_files: dict[str, Path]) -> Dataset:
    return load_dataset(reference_files["images"], reference_files["labels"], "idx")


def write_csv_pair(dataset: Dataset, folder: Path, header: str | None = None) -> tuple[Path, Path]:
    """The CSV form: test_data.csv (784 pixels a row), test_labels.csv."""
    images, labels = folder / "test_data.csv", folder / "test_labels.csv"
    write_csv(dataset, images, labels)
    if header is not None:
        images.write_text(header + "\n" + images.read_text())
        labels.write_text("label\n" + labels.read_text())
    return images, labels


def test_idx_gz_decodes_the_t10k_set(t10k: Dataset) -> None:
    assert t10k.images.shape == (10_000, 28, 28)
    assert t10k.images.dtype == np.uint8
    assert t10k.labels.shape == (10_000,)
    assert t10k.labels.dtype == np.int64
    assert t10k.classes == 10
    assert np.bincount(t10k.labels).tolist() == T10K_CLASS_COUNTS
    assert t10k.images.max() == 255
    assert t10k.images.mean() < 50  # white digits on black: not inverted


def test_plain_idx_equals_gzip(
    reference_files: dict[str, Path], t10k: Dataset, tmp_path: Path
) -> None:
    images = tmp_path / "t10k-images-idx3-ubyte"
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    images.write_bytes(gzip.decompress(reference_files["images"].read_bytes()))
    labels.write_bytes(gzip.decompress(reference_files["labels"].read_bytes()))
    plain = load_dataset(images, labels, "idx")
    assert np.array_equal(plain.images, t10k.images)
    assert np.array_equal(plain.labels, t10k.labels)


@pytest.mark.parametrize(
    "header",
    [None, ",".join(f"pixel{i}" for i in range(784)), ",".join(str(i) for i in range(784))],
    ids=["no-header", "named-header", "pandas-header"],
)
def test_csv_equals_idx(t10k: Dataset, tmp_path: Path, header: str | None) -> None:
    # The whole set once; the header variants on a slice, to keep the suite fast.
    dataset = t10k if header is None else Dataset(t10k.images[:200], t10k.labels[:200])
    images, labels = write_csv_pair(dataset, tmp_path, header=header)
    from_csv = load_dataset(images, labels, "csv")
    assert from_csv.images.dtype == np.uint8
    assert np.array_equal(from_csv.images, dataset.images)
    assert np.array_equal(from_csv.labels, dataset.labels)


def test_csv_with_fractional_pixels_stays_float(tmp_path: Path) -> None:
    path = tmp_path / "test_data.csv"
    path.write_text("\n".join(",".join(["0.5"] * 784) for _ in range(3)) + "\n")
    images = read_csv_images(path)
    assert images.shape == (3, 28, 28)
    assert images.dtype == np.float32
    assert float(images[0, 0, 0]) == 0.5


def test_one_csv_row_is_one_image(tmp_path: Path) -> None:
    path = tmp_path / "test_data.csv"
    path.write_text(",".join(["7"] * 784) + "\n")
    assert read_csv_images(path).shape == (1, 28, 28)
    labels = tmp_path / "test_labels.csv"
    labels.write_text("7\n")
    assert read_csv_labels(labels).tolist() == [7]


# -- malformed files -------------------------------------------------------------


def _idx(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + body


def test_swapped_idx_files_are_named(reference_files: dict[str, Path]) -> None:
    with pytest.raises(
        DatasetError,
        match=r"magic number is 0x00000801, expected 0x00000803.*"
        r"swapped",
    ):
        read_idx_images(reference_files["labels"])
    with pytest.raises(DatasetError, match="expected 0x00000801 for labels"):
        read_idx_labels(reference_files["images"])


def test_truncated_idx_is_named(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_idx(0x803, (2, 28, 28), bytes(784)))
    with pytest.raises(
        DatasetError,
        match=r"t10k-images-idx3-ubyte: header says 2 x 28 x 28.*"
        "truncated",
    ):
        read_idx_images(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="too short"):
        read_idx_images(path)


def test_broken_gzip_is_named(reference_files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(reference_files["labels"].read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz: broken gzip"):
        read_idx_labels(path)


def test_images_and_labels_must_have_the_same_count(tmp_path: Path) -> None:
    images, labels = tmp_path / "images-idx3-ubyte", tmp_path / "labels-idx1-ubyte"
    images.write_bytes(_idx(0x803, (2, 28, 28), bytes(2 * 784)))
    labels.write_bytes(_idx(0x801, (3,), bytes(3)))
    with pytest.raises(DatasetError, match="holds 2 images but labels-idx1-ubyte holds 3 labels"):
        load_dataset(images, labels, "idx")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [["1"] * 785],
            r"rows hold 785 values, which is not a square image.*drop the label or index",
        ),
        ([["1"] * 784, ["1"] * 783], "not a numeric CSV file"),
        ([["1"] * 783 + ["x"]], "not a numeric CSV file"),
        ([["1"] * 783 + ["300"]], "whole-number pixels must be 0..255"),
        ([["1"] * 783 + ["nan"]], "holds NaN or infinite"),
    ],
)
def test_malformed_csv_images_are_named(
    tmp_path: Path, rows: list[list[str]], message: str
) -> None:
    path = tmp_path / "test_data.csv"
    path.write_text("\n".join(",".join(row) for row in rows) + "\n")
    with pytest.raises(DatasetError, match=f"test_data.csv: {message}"):
        read_csv_images(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2\n3,4\n", "expected one label per row, found 2"),
        ("1\n-1\n", "labels must be whole numbers"),
        ("1\n2.5\n", "labels must be whole numbers"),
        ("", "holds no rows"),
    ],
)
def test_malformed_csv_labels_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "test_labels.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=f"test_labels.csv: {message}"):
        read_csv_labels(path)


def test_unknown_format_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown test data format 'parquet'"):
        load_dataset(tmp_path / "a", tmp_path / "b", "parquet")
