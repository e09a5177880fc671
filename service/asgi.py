"""ASGI entry point for `uvicorn service.asgi:app`: settings come from the environment.

The model is loaded on import, before uvicorn opens the port, as `python -m service`
does. A failure prints one line and exits with uvicorn's own start-up failure status
(3), which also stops uvicorn's worker supervisor instead of restarting the worker.
`--http service.protocol:HttpProtocol` gives uvicorn the protocol `python -m service` runs.
"""

from uvicorn.config import STARTUP_FAILURE

from service.startup import app_from_environment

app = app_from_environment(STARTUP_FAILURE)
