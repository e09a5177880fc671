"""What both entry points do before the port opens, and how a failure there reads.

`python -m service` and `uvicorn service.asgi:app` both fetch, verify and warm up
the model before serving, so a bad model or setting ends the process with one line
on stderr naming the problem and the fix, never a traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import falcon.asgi

from service.app import create_app
from service.config import ConfigError, Settings
from service.errors import ModelLoadError
from service.loader import load_model
from service.model import OnnxModel
from service.scratch import check_writable


def prepare(settings: Settings) -> OnnxModel:
    """Check the writable directories, then fetch, verify and warm up the model."""
    check_writable(settings)
    return load_model(settings)


def failure_line(exc: Exception) -> str:
    """One line for anything that stops the start: the path, when there is one."""
    if isinstance(exc, ConfigError | ModelLoadError):
        return " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename:
        return (
            f"cannot use {exc.filename}: {exc.strerror}; the service needs it readable, "
            "writable and with free space (see MODEL_CACHE_DIR and TMPDIR)"
        )
    detail = " ".join(str(exc).split())
    return f"the service could not start: {type(exc).__name__}: {detail}"


def fail(exc: Exception, status: int) -> NoReturn:
    print(f"error: {failure_line(exc)}", file=sys.stderr)
    raise SystemExit(status) from None


def app_from_environment(status: int) -> falcon.asgi.App:
    """The app for the settings in the environment, its model loaded; on any failure,
    one line on stderr and SystemExit(`status`)."""
    try:
        settings = Settings.from_env()
        return create_app(settings, model=prepare(settings))
    except Exception as exc:  # anything at start-up: one line, never a traceback
        fail(exc, status)
