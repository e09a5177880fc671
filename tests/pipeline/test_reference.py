"""The model reference: every field checked, one-run overrides, verified fetch."""

from __future__ import annotations

import copy as copying
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pipeline.reference import (
    DEFAULT_REFERENCE,
    InvalidReference,
    apply_overrides,
    fetch_artifact,
    fetch_verified,
    load_reference,
    parse_reference,
)
from service.artifacts import ArtifactError, ChecksumMismatch

MNIST8_SHA = "2f06e72de813a8635c9bc0397ac447a601bdbfa7df4bebc278723b958831c9bf"
MNIST12_SHA = "5c688690f8bacf667d4c2074af5ad0646ca328d7ab03eccf944a65b320171bdd"


@pytest.fixture
def doc() -> dict[str, Any]:
    with DEFAULT_REFERENCE.open("rb") as handle:
        return tomllib.load(handle)


def test_committed_reference_names_mnist8_raw_pixels_and_thresholds() -> None:
    reference = load_reference()
    assert reference.name == "mnist-8"
    assert reference.model.sha256 == MNIST8_SHA
    assert reference.model.filename == "mnist-8.onnx"
    assert reference.test_format == "idx"
    assert reference.input_scale == 1.0
    assert reference.gate.min_accuracy == 0.985
    assert reference.gate.max_regression == 0.005
    assert reference.gate.max_p99_latency_ms > 0
    assert reference.gate.latency_runs == 1000


def test_gate_table_is_optional_with_defaults(doc: dict[str, Any]) -> None:
    del doc["gate"]
    del doc["model"]["input_scale"]
    reference = parse_reference(doc)
    assert reference.gate.min_accuracy == 0.985
    assert reference.input_scale == 1.0


def _without(doc: dict[str, Any], table: str, key: str) -> dict[str, Any]:
    changed = copying.deepcopy(doc)
    del changed[table][key]
    return changed


def _with(doc: dict[str, Any], table: str, key: str, value: Any) -> dict[str, Any]:
    changed = copying.deepcopy(doc)
    changed.setdefault(table, {})[key] = value
    return changed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _without(d, "model", "url"), r"\[model\] url is missing"),
        (lambda d: _without(d, "model", "sha256"), r"\[model\] sha256 is missing"),
        (lambda d: _with(d, "model", "sha256", "abc"), r"\[model\] sha256 must be a sha256"),
        (lambda d: _with(d, "model", "url", "ftp://x/m.onnx"), r"\[model\] url must be a path"),
        (lambda d: _with(d, "model", "url", 42), r"\[model\] url must be a string"),
        (lambda d: _with(d, "model", "input_scale", 0), r"\[model\] input_scale must be greater"),
        (lambda d: _with(d, "model", "input_scale", "1/255"), r"input_scale must be a number"),
        (lambda d: _without(d, "test_data", "labels_url"), r"\[test_data\] labels_url is missing"),
        (
            lambda d: _with(d, "test_data", "images_sha256", "z" * 64),
            r"\[test_data\] images_sha256 must be a sha256",
        ),
        (lambda d: _with(d, "test_data", "format", "zip"), r"\[test_data\] format must be one of"),
        (lambda d: _with(d, "gate", "min_accuracy", 98.5), r"\[gate\] min_accuracy must be"),
        (lambda d: _with(d, "gate", "min_accuracy", True), r"\[gate\] min_accuracy must be a num"),
        (lambda d: _with(d, "gate", "max_p99_latency_ms", -1), r"max_p99_latency_ms must be"),
        (lambda d: _with(d, "gate", "max_regression", 2), r"\[gate\] max_regression must be"),
        (lambda d: _with(d, "gate", "latency_runs", 0), r"\[gate\] latency_runs must be a whole"),
        (lambda d: _with(d, "gate", "min_acuracy", 0.9), r"\[gate\] min_acuracy is not a known"),
        (lambda d: {**d, "deploy": {}}, r"unknown table \[deploy\]"),
        (lambda d: {k: v for k, v in d.items() if k != "test_data"}, r"\[test_data\] table is"),
    ],
)
def test_bad_field_is_named(doc: dict[str, Any], change: Any, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse_reference(change(doc))


def test_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidReference, match="no such file"):
        load_reference(tmp_path / "model.toml")
    broken = tmp_path / "model.toml"
    broken.write_text("[model\nurl = ")
    with pytest.raises(InvalidReference, match="not valid TOML"):
        load_reference(broken)


def test_overrides_apply_only_when_asked() -> None:
    env = {"MODEL_URL": "/models/candidate.onnx"}
    assert load_reference().model.url != env["MODEL_URL"]
    assert load_reference(environ=env).model.url == env["MODEL_URL"]


def test_model_url_override_is_unpinned_unless_sha_given() -> None:
    reference = load_reference()
    candidate = apply_overrides(reference, {"MODEL_URL": "s3://bucket/models/mnist-12.onnx"})
    assert candidate.model.sha256 is None
    assert candidate.name == "mnist-12"
    assert candidate.source == "model.toml, overridden from the environment by MODEL_URL"
    assert candidate.test_images == reference.test_images
    pinned = apply_overrides(
        reference,
        {"MODEL_URL": "s3://bucket/models/mnist-12.onnx", "MODEL_SHA256": MNIST12_SHA.upper()},
    )
    assert pinned.model.sha256 == MNIST12_SHA
    assert pinned.source.endswith("overridden from the environment by MODEL_SHA256, MODEL_URL")


def test_empty_override_variables_are_ignored() -> None:
    reference = load_reference()
    assert apply_overrides(reference, {"MODEL_URL": " ", "TEST_DATA_URL": ""}) == reference


def test_test_data_override_infers_csv_format() -> None:
    reference = apply_overrides(
        load_reference(),
        {"TEST_DATA_URL": "s3://b/test_data.csv", "TEST_LABELS_URL": "s3://b/test_labels.csv"},
    )
    assert reference.test_format == "csv"
    assert reference.test_images.sha256 is None
    idx = apply_overrides(
        reference,
        {"TEST_DATA_URL": "/d/t10k-images-idx3-ubyte", "TEST_LABELS_URL": "/d/t10k-labels.gz"},
    )
    assert idx.test_format == "idx"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TEST_DATA_URL": "/d/test_data.csv"}, "TEST_LABELS_URL is not set"),
        (
            {"TEST_DATA_URL": "/d/test_data.csv", "TEST_LABELS_URL": "/d/labels-idx1-ubyte.gz"},
            "not the same format",
        ),
        ({"MODEL_SHA256": "123"}, "MODEL_SHA256='123' is not a sha256"),
        ({"MODEL_URL": "gopher://host/"}, "MODEL_URL='gopher://host/' is not a file reference"),
        ({"TEST_DATA_SHA256": MNIST8_SHA}, "set without TEST_DATA_URL"),
    ],
)
def test_bad_override_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        apply_overrides(load_reference(), env)


def test_fetch_prefers_the_fixtures_mirror(
    reference_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = load_reference()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    copy = mirror / reference.test_labels.filename
    copy.write_bytes(reference_files["labels"].read_bytes())
    monkeypatch.setenv("FIXTURES_DIR", str(mirror))
    path, sha = fetch_verified(reference.test_labels, cache_dir=tmp_path / "cache")
    assert path == copy
    assert sha == reference.test_labels.sha256
    assert fetch_artifact(reference.test_labels, cache_dir=tmp_path / "cache") == copy


def test_a_fixtures_dir_that_is_not_there_is_named_not_bypassed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A mirror that does not exist fails with its name and the fix, instead of every
    lookup going to the network; the CLI prints it as one line and exits 2."""
    from pipeline import cli

    monkeypatch.setenv("FIXTURES_DIR", "../no-such-fixtures")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidReference, match=r"FIXTURES_DIR=\.\./no-such-fixtures \("):
        fetch_verified(load_reference().test_labels, cache_dir=tmp_path / "cache")
    assert cli.main(["download"]) == 2
    line = capsys.readouterr().err.strip()
    assert "is not a directory" in line and "unset it to download" in line
    assert "\n" not in line


@pytest.mark.parametrize("mirror", ["empty", None])
def test_a_failed_download_names_how_a_local_copy_would_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror: str | None
) -> None:
    """A mirror that exists but lacks a file sends that file to its URL; when the download
    fails, the error names the URL and the mirror that lacks the file, or, with no mirror
    (offline without FIXTURES_DIR), how a local copy would serve."""
    if mirror is None:
        monkeypatch.delenv("FIXTURES_DIR", raising=False)
        fix = "(without the network, set FIXTURES_DIR to a directory holding mnist-8.onnx)"
    else:
        (tmp_path / mirror).mkdir()
        monkeypatch.setenv("FIXTURES_DIR", str(tmp_path / mirror))
        fix = f"(FIXTURES_DIR={tmp_path / mirror} has no mnist-8.onnx; put it there, or "
    reference = apply_overrides(
        load_reference(),
        {"MODEL_URL": "http://127.0.0.1:9/mnist-8.onnx", "MODEL_SHA256": MNIST8_SHA},
    )
    with pytest.raises(ArtifactError) as caught:
        fetch_verified(reference.model, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert message.startswith("http://127.0.0.1:9/mnist-8.onnx: download failed: ")
    assert fix in message


def test_fetch_stops_on_a_sha_mismatch_naming_both_hashes(
    mnist8_path: Path, tmp_path: Path
) -> None:
    candidate = tmp_path / "candidate.onnx"
    candidate.write_bytes(mnist8_path.read_bytes() + b"\0")
    reference = apply_overrides(
        load_reference(), {"MODEL_URL": str(candidate), "MODEL_SHA256": MNIST8_SHA}
    )
    with pytest.raises(ChecksumMismatch) as caught:
        fetch_artifact(reference.model, cache_dir=tmp_path)
    message = str(caught.value)
    assert MNIST8_SHA in message
    assert caught.value.actual in message
    assert caught.value.actual != MNIST8_SHA
    assert "candidate.onnx" in message


def test_the_reference_declares_the_digits_as_labels():
    assert load_reference().labels == tuple(str(digit) for digit in range(10))


@pytest.mark.parametrize("labels", ["0123456789", [0, 1], ["a", " "]])
def test_labels_must_be_a_list_of_strings(labels):
    doc = tomllib.loads(DEFAULT_REFERENCE.read_text())
    doc["model"]["labels"] = labels
    with pytest.raises(InvalidReference, match=r"\[model\] labels must be a list"):
        parse_reference(doc)
