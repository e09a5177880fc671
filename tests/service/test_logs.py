"""Logs: one JSON object per line when stdout is not a terminal, plain text on one
(README, Configuration)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from service.logs import configure_logging


class Stdout(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)


def log_to(stdout: Stdout, monkeypatch) -> str:
    monkeypatch.setattr("sys.stdout", stdout)
    configure_logging()
    logging.getLogger("service.test").warning("ready: serving %s", "mnist-8")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("service.test").exception("failed")
    return stdout.getvalue()


def test_off_a_terminal_each_line_is_one_json_object(monkeypatch, restore_logging):
    lines = log_to(Stdout(terminal=False), monkeypatch).splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"time", "level", "logger", "message"}
    assert (first["level"], first["logger"], first["message"]) == (
        "warning",
        "service.test",
        "ready: serving mnist-8",
    )
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-01-01T00:00:00.000Z")
    second = json.loads(lines[1])  # the traceback stays inside its line
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]
    assert len(lines) == 2


def test_on_a_terminal_lines_are_plain_text(monkeypatch, restore_logging):
    text = log_to(Stdout(terminal=True), monkeypatch)
    assert " WARNING service.test: ready: serving mnist-8\n" in text
    assert not text.startswith("{")


def test_a_python_warning_is_a_json_line_of_the_log_not_text_on_stderr(
    monkeypatch, restore_logging, capsys
):
    """numpy's overflow warning, say: the logger py.warnings, level warning, in the same
    one-object-a-line stream."""
    import warnings

    import numpy as np

    stdout = Stdout(terminal=False)
    monkeypatch.setattr("sys.stdout", stdout)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        configure_logging()
        np.array([1e39]).astype(np.float32)
    (line,) = stdout.getvalue().splitlines()
    event = json.loads(line)
    assert (event["level"], event["logger"]) == ("warning", "py.warnings")
    assert "RuntimeWarning: overflow encountered in cast" in event["message"]
    assert capsys.readouterr().err == ""
