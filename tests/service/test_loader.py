"""load_model: the version rule, MODEL_VERSION, and the sha256 checks of both model files."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.config import ConfigError, Settings
from service.errors import ModelLoadError
from service.loader import load_model
from service.model import OnnxModel, TensorSpec
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


def test_the_model_runs_with_the_settings_intra_op_threads(settings):
    model = load_model(replace(settings, intra_op_threads=3))
    assert model._session.get_session_options().intra_op_num_threads == 3


def test_a_model_whose_warm_up_fails_is_refused_with_the_reason(settings, monkeypatch):
    def failing_warm_up(self) -> None:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : out of memory")

    monkeypatch.setattr(OnnxModel, "warm_up", failing_warm_up)
    with pytest.raises(ModelLoadError) as raised:
        load_model(settings)
    assert str(raised.value) == (
        "model refused: warm-up inference failed: "
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : out of memory"
    )


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


def test_a_copy_that_does_not_fit_the_model_is_refused(settings: Settings, tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(ModelLoadError, match="it is not a batch-capable copy of this model"):
        load_model(replace(settings, model_batched_url=str(other)))


@pytest.fixture
def files_over_http(tmp_path: Path):
    """A directory served by a thread of this process on 127.0.0.1 (no other process)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=5)


def test_downloads_land_in_the_settings_cache_directory(
    settings: Settings, mnist8_path: Path, batched, files_over_http, tmp_path: Path
):
    root, base = files_over_http
    path, sha256 = batched
    shutil.copy(mnist8_path, root / "mnist-8.onnx")
    shutil.copy(path, root / "copy.onnx")
    cache = tmp_path / "cache"
    remote = replace(
        settings,
        model_url=f"{base}/mnist-8.onnx",
        model_batched_url=f"{base}/copy.onnx",
        model_batched_sha256=sha256,
        cache_dir=cache,
    )
    assert load_model(remote).info.sha256 == MNIST8_SHA256
    assert (cache / MNIST8_SHA256 / "mnist-8.onnx").read_bytes() == mnist8_path.read_bytes()
    assert (cache / sha256 / "copy.onnx").read_bytes() == path.read_bytes()


def test_the_smallest_body_limit_is_one_binary_example_plus_its_header(settings: Settings):
    """mnist-8: 784 FP32 values (3136 bytes) plus 1024 for the JSON header."""
    assert load_model(replace(settings, max_body_bytes=3136 + 1024)).info.name == "mnist-8"
    with pytest.raises(ConfigError) as raised:
        load_model(replace(settings, max_body_bytes=3136 + 1023))
    assert str(raised.value) == (
        "MAX_BODY_BYTES=4159 is below one example of this model (3136 bytes of FP32 as "
        "binary tensor data plus 1024 for its JSON header): use at least 4160"
    )


def _zeros(model, rows: int):
    import numpy as np

    return np.zeros((rows, *model.input.item_shape), dtype=model.input.dtype)


def test_a_tensors_derived_shapes_follow_its_own_shape():
    """The example shapes every request reads are computed once per spec; a spec made
    from another (`with_dynamic_batch`) has its own, and a dynamic dimension has no size."""
    spec = TensorSpec("x", np.dtype(np.float32), "FP32", (1, 1, 28, 28))
    assert (spec.item_shape, spec.example_shape, spec.item_size) == ((1, 28, 28), (28, 28), 784)
    dynamic = spec.with_dynamic_batch()
    assert dynamic.shape == (-1, 1, 28, 28) and dynamic.item_size == 784
    ragged = TensorSpec("y", np.dtype(np.float32), "FP32", (-1, 3, -1))
    assert (ragged.item_shape, ragged.example_shape, ragged.item_size) == ((3, -1), (3, -1), -1)
    assert spec == TensorSpec("x", np.dtype(np.float32), "FP32", (1, 1, 28, 28))
