"""load_model: the version rule, MODEL_VERSION, and the sha256 checks of both model files."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from service.config import Settings
from service.errors import ModelLoadError
from service.loader import load_model
from tests.service.conftest import MNIST8_SHA256


def test_the_version_is_the_first_12_hex_digits_of_the_files_sha256(settings, mnist8_path):
    info = load_model(settings).info
    assert hashlib.sha256(mnist8_path.read_bytes()).hexdigest() == MNIST8_SHA256
    assert info.sha256 == MNIST8_SHA256
    assert info.version == "2f06e72de813"
    assert info.name == "mnist-8"


def test_model_version_replaces_the_hash_rule(settings):
    info = load_model(replace(settings, model_version="v7")).info
    assert (info.version, info.sha256) == ("v7", MNIST8_SHA256)


def test_a_model_whose_sha256_differs_is_refused_naming_both(settings):
    wrong = "0" * 64
    with pytest.raises(ModelLoadError, match="model refused") as raised:
        load_model(replace(settings, model_sha256=wrong))
    assert wrong in str(raised.value) and MNIST8_SHA256 in str(raised.value)


@pytest.fixture(scope="module")
def batched(mnist8_path: Path, mnist_test_set, tmp_path_factory) -> tuple[Path, str]:
    from pipeline.batchable import batchable_copy

    images = mnist_test_set[0][:8].astype("float32").reshape(-1, 1, 28, 28)
    copy = batchable_copy(mnist8_path, images, tmp_path_factory.mktemp("copy") / "m.onnx")
    return copy.path, copy.sha256


def test_the_batch_capable_copy_is_checked_against_its_sha256(settings: Settings, batched):
    path, sha256 = batched
    good = load_model(replace(settings, model_batched_url=str(path), model_batched_sha256=sha256))
    assert good.run({good.input.name: _zeros(good, 3)})[good.outputs[0].name].shape == (3, 10)
    wrong = "f" * 64
    with pytest.raises(ModelLoadError, match="batch-capable copy refused") as raised:
        load_model(replace(settings, model_batched_url=str(path), model_batched_sha256=wrong))
    assert wrong in str(raised.value) and sha256 in str(raised.value)


def test_a_missing_batch_capable_copy_is_refused(settings: Settings, tmp_path: Path):
    with pytest.raises(ModelLoadError, match="batch-capable copy refused"):
        load_model(replace(settings, model_batched_url=str(tmp_path / "absent.onnx")))


def _zeros(model, rows: int):
    import numpy as np

    return np.zeros((rows, *model.input.item_shape), dtype=model.input.dtype)
