"""`python -m service`: check the model, then serve it with uvicorn.

The model is fetched, verified and warmed up before the port opens, so a bad
model stops the process with one line and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import sys

import uvicorn

from service.app import create_app
from service.config import ConfigError, Settings
from service.errors import ModelLoadError
from service.loader import load_model
from service.logs import configure_logging

# Inside ECS's 30 s stop timeout, with room for the capture flush after the drain.
GRACEFUL_SHUTDOWN_SECONDS = 15


def main() -> int:
    log_config = configure_logging()
    try:
        settings = Settings.from_env()
        model = load_model(settings)
    except (ConfigError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = dict(
        host=settings.host,
        port=settings.port,
        log_config=log_config,
        access_log=False,
        proxy_headers=True,
        server_header=False,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    if settings.workers <= 1:
        uvicorn.run(create_app(settings, model=model), **options)
    else:
        # Each worker process loads the model again, from the verified local cache.
        uvicorn.run("service.asgi:app", workers=settings.workers, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
