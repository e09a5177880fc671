"""Logging: one JSON object per line when stdout is not a terminal, plain text on one."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure_logging(level: int = logging.INFO) -> dict:
    """Configure the root logger and return a uvicorn `log_config` that matches it.

    Python's warnings (a library's FutureWarning, numpy's floating-point warnings) go to
    the log too, as the logger `py.warnings` (`logging.captureWarnings`), instead of a
    plain-text line on stderr between the JSON ones; Python still shows each warning once
    per place in the code (the warnings module's default filter).
    """
    formatter = (
        {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
        if sys.stdout.isatty()
        else {"()": JsonFormatter}
    )
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"handlers": ["stdout"], "level": logging.getLevelName(level)},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    return config
