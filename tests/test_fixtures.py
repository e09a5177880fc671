"""The fixtures the tests see: the reference's files, each from FIXTURES_DIR or the cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import conftest


def test_each_reference_file_comes_from_fixtures_dir_else_the_download_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIXTURES_DIR that lacks a file (which `nox -s download` then caches) still gives
    the tests every file; one that holds others gives them nothing more."""
    model, images, labels = conftest._reference_artifacts().values()
    given = tmp_path / "fixtures"
    given.mkdir()
    (given / model.filename).write_bytes(b"model")
    (given / "mnist-12.onnx").write_bytes(b"not the reference's")
    cache = tmp_path / "cache"
    (cache / str(labels.sha256)).mkdir(parents=True)
    (cache / str(labels.sha256) / labels.filename).write_bytes(b"labels")
    monkeypatch.setattr(conftest, "default_cache_dir", lambda: cache)

    mirror = conftest._mirror_of_the_reference(given)
    assert mirror is not None
    assert sorted(p.name for p in mirror.iterdir()) == sorted([model.filename, labels.filename])
    assert (mirror / model.filename).resolve() == (given / model.filename).resolve()
    assert (mirror / labels.filename).read_bytes() == b"labels"
    assert not (mirror / images.filename).exists()
    shutil.rmtree(mirror)
    # Neither holds any of them: the fixture `reference_files` says what to fetch.
    monkeypatch.setattr(conftest, "default_cache_dir", lambda: tmp_path / "empty")
    assert conftest._mirror_of_the_reference(tmp_path / "empty") is None
