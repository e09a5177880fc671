"""`python -m service`: check the model, then serve it with uvicorn.

The model is fetched, verified and warmed up before the port opens, so a bad
model, a bad setting or a directory the service cannot write stops the process
with one line and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from service.app import create_app
from service.config import ConfigError, Settings
from service.errors import ModelLoadError
from service.loader import load_model
from service.logs import configure_logging
from service.scratch import check_writable


def server_options(settings: Settings, log_config: dict) -> dict[str, Any]:
    """uvicorn's settings: keep-alive and drain come from the service's settings."""
    return dict(
        host=settings.host,
        port=settings.port,
        log_config=log_config,
        access_log=False,
        proxy_headers=True,
        server_header=False,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        timeout_graceful_shutdown=settings.stop_budget.drain_seconds,
    )


def startup_failure(exc: Exception) -> str:
    """One line for an unexpected error that stops the start: the path, when there is one."""
    if isinstance(exc, OSError) and exc.filename:
        return (
            f"cannot use {exc.filename}: {exc.strerror}; the service needs it readable, "
            "writable and with free space (see MODEL_CACHE_DIR and TMPDIR)"
        )
    detail = " ".join(str(exc).split())
    return f"the service could not start: {type(exc).__name__}: {detail}"


def main() -> int:
    """`python -m service`: the settings from the environment, then `serve`."""
    log_config = configure_logging()
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return serve(settings, log_config)


def serve(settings: Settings, log_config: dict | None = None) -> int:
    """Check the directories, load and warm up the model, then serve until stopped.

    A failure before the port opens is one line on stderr and exit status 2. With
    `settings.workers` > 1 every worker is a process of its own that reads its settings
    from the environment (`service.asgi`), so then `settings` must be what the
    environment says.
    """
    log_config = log_config or configure_logging()
    try:
        if settings.workers > 1 and not _from_environment(settings):
            raise ConfigError(
                f"WEB_CONCURRENCY={settings.workers} starts worker processes that read their "
                "settings from the environment, and these settings are not the environment's: "
                "run `python -m service` with them in the environment, or WEB_CONCURRENCY=1"
            )
        check_writable(settings)
        model = load_model(settings)
        app = create_app(settings, model=model) if settings.workers <= 1 else None
    except (ConfigError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else at start-up: one line too, never a traceback
        print(f"error: {startup_failure(exc)}", file=sys.stderr)
        return 2
    options = server_options(settings, log_config)
    if app is not None:
        uvicorn.run(app, **options)
    else:
        # Each worker process loads the model again, from the verified local cache.
        uvicorn.run("service.asgi:app", workers=settings.workers, **options)
    return 0


def _from_environment(settings: Settings) -> bool:
    try:
        return Settings.from_env() == settings
    except ConfigError:
        return False


if __name__ == "__main__":
    sys.exit(main())
