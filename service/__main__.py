"""`python -m service`: check the settings and the model, then serve it with uvicorn.

The settings are checked against what the routes can serve, the address is tried,
and the model is fetched, verified and warmed up before the port opens, so a bad
model, a bad setting or a directory the service cannot write stops the process with
one line and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import uvicorn

from service.app import create_app
from service.config import ConfigError, Settings
from service.logs import configure_logging
from service.metrics import (
    MULTIPROCESS_VARIABLE,
    multiprocess_directory,
    reset_multiprocess_directory,
)
from service.protocol import HttpProtocol
from service.startup import failure_line, prepare

# With several workers, uvicorn's supervisor pings each one and kills (SIGKILL) one that
# does not answer within this many seconds (`--timeout-worker-healthcheck`, uvicorn 0.37;
# 5 s by default). A worker loads the model while it starts, and onnxruntime holds the GIL
# while it builds a session, so a large model on a fraction of a vCPU could be killed and
# restarted again and again before it serves; ECS's health check grace allows 60 s.
WORKER_HEALTHCHECK_SECONDS = 60


def server_options(settings: Settings, log_config: dict) -> dict[str, Any]:
    """uvicorn's settings: keep-alive and drain come from the service's settings."""
    return dict(
        host=settings.host,
        port=settings.port,
        log_config=log_config,
        access_log=False,
        # Nothing here reads the client's address or scheme (no access log, no absolute
        # URLs), so uvicorn's X-Forwarded-* rewriting would be a layer on every request
        # that changes nothing.
        proxy_headers=False,
        server_header=False,
        http=HttpProtocol,
        loop="uvloop",
        lifespan="on",
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        timeout_graceful_shutdown=settings.stop_budget.drain_seconds,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
    )


def check_address(settings: Settings) -> None:
    """Bind HOST:PORT once and let go, so a host that does not resolve or a port in
    use stops the start with one line, before the model is fetched."""
    try:
        infos = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"HOST={settings.host!r} PORT={settings.port}: cannot listen there ({reason}); "
            "use an address of this machine (0.0.0.0 for every interface) and a free port"
        ) from None


def prepare_metrics(settings: Settings) -> None:
    """With several workers, every worker writes its metrics to one directory that
    each scrape sums (see service.metrics): empty it now, before any worker starts,
    and hand it to the workers through the environment they are spawned with."""
    directory = multiprocess_directory(settings)
    if directory is None:
        return
    variable = "PROMETHEUS_MULTIPROC_DIR" if settings.metrics_dir else "TMPDIR"
    try:
        reset_multiprocess_directory(directory)
    except OSError as exc:
        raise ConfigError(
            f"{variable}: cannot use {directory} for the workers' metrics "
            f"({exc.strerror or exc}); point it at a directory this user can write"
        ) from None
    os.environ[MULTIPROCESS_VARIABLE] = str(directory)


USAGE = (
    "usage: python -m service\n"
    "Serves one ONNX model; every setting comes from the environment (MODEL_URL, PORT, ...:\n"
    "README.md, Configuration). It takes no arguments."
)


def main(argv: list[str] | None = None) -> int:
    """`python -m service`: the settings from the environment, then `serve`."""
    arguments = sys.argv[1:] if argv is None else argv
    if arguments:
        asked = arguments[0] in ("-h", "--help")
        print(
            USAGE if asked else f"error: unexpected argument {arguments[0]!r}\n{USAGE}",
            file=sys.stdout if asked else sys.stderr,
        )
        return 0 if asked else 2
    log_config = configure_logging()
    try:
        settings = Settings.from_env()
    except Exception as exc:  # one line, never a traceback
        print(f"error: {failure_line(exc)}", file=sys.stderr)
        return 2
    return serve(settings, log_config)


def serve(settings: Settings, log_config: dict | None = None) -> int:
    """Check the address, the directories and the model, then serve until stopped.

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
        check_address(settings)
        prepare_metrics(settings)
        model = prepare(settings)
        app = create_app(settings, model=model) if settings.workers <= 1 else None
        # With workers, each loads its own copy from the verified cache: the supervisor
        # keeps none (one more model's weights and arena against the task's memory limit,
        # past which the container is stopped: ECS developer guide, container memory).
        del model
    except Exception as exc:  # anything at start-up: one line, never a traceback
        print(f"error: {failure_line(exc)}", file=sys.stderr)
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
