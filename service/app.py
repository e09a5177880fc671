"""The app factory: builds the Falcon ASGI app and hands each part what it needs."""

from __future__ import annotations

import asyncio
import gc
import logging

import falcon
import falcon.asgi
import orjson

from service import resources
from service.admission import SERVER_READ_AHEAD_BYTES, BodyBudget
from service.auth import BearerAuth
from service.capture import PredictionRecorder, build_recorder
from service.config import ConfigError, Settings
from service.errors import ModelLoadError, ServiceError, UnknownMethod
from service.http import (
    IMPLEMENTED_METHODS,
    BodyReader,
    DrainUnreadBody,
    RefuseQueryParameters,
)
from service.inference import Inference
from service.loader import load_model
from service.memory import release_free_memory
from service.metrics import Metrics, MetricsMiddleware
from service.model import OnnxModel
from service.openapi import openapi_document

log = logging.getLogger("service")

# Request bodies the prediction routes hold at once, in bodies of the largest size allowed
# (MAX_BODY_BYTES): 8 MB by default, ten requests of 256 images as binary tensors.
BODY_BUDGET_BODIES = 2
MODEL_ROUTES = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")


class ModelLifecycle:
    """Loads the model at start-up (unless one was given) and releases it at shutdown."""

    def __init__(
        self,
        settings: Settings,
        inference: Inference,
        model: OnnxModel | None,
        recorder: PredictionRecorder,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._inference = inference
        self._model = model
        self._recorder = recorder
        self._metrics = metrics

    async def process_startup(self, scope, event) -> None:
        model = self._model
        if model is None:
            try:
                model = await asyncio.to_thread(load_model, self._settings)
            except (ModelLoadError, ConfigError) as exc:
                log.error("%s", exc)
                raise
        self._inference.attach(model)
        await self._recorder.start()
        # Everything alive now (the model, onnxruntime, boto3, the app) lives as long as
        # the process: moved out of the collector's reach, a full collection no longer
        # walks it. Measured with capture on to S3: a full collection took 38 ms with
        # boto3's ~89,000 objects in the heap, stalling every request in flight (p99).
        gc.freeze()
        info = model.info
        log.info(
            "ready: serving %s version %s (sha256 %s), inference %s",
            info.name,
            info.version,
            info.sha256,
            "on the event loop" if self._inference.inline else "in a worker thread",
        )
        if self._settings.api_tokens:
            log.info("authentication: a bearer token is required on the model routes")
        else:
            log.warning(
                "authentication off: API_TOKENS is not set, so anyone who reaches the port "
                "may predict"
            )

    async def process_shutdown(self, scope, event) -> None:
        await self._recorder.close()
        await self._inference.close()
        self._metrics.close()


def create_app(
    settings: Settings | None = None,
    *,
    model: OnnxModel | None = None,
    recorder: PredictionRecorder | None = None,
) -> falcon.asgi.App:
    """The Falcon ASGI app for `settings` (default: `Settings.from_env()`).

    `model`: an already loaded model (tests, and `python -m service`, which loads it
    before the port opens); None loads it at ASGI start-up. `recorder`: where answered
    predictions go; None builds the one the settings ask for (service.capture). Raises
    ConfigError when a setting cannot be served (e.g. a capture sink that cannot open).
    """
    settings = settings or Settings.from_env()
    metrics = Metrics(multiprocess_dir=settings.metrics_dir)
    inference = Inference(
        metrics,
        max_batch_size=settings.batch_max_size,
        max_delay=settings.batch_max_delay_ms / 1000,
        offload=settings.inference_offload,
    )
    if recorder is None:  # prediction capture as the settings say (a NullRecorder when off)
        recorder = build_recorder(settings, metrics.registry)

    middleware = [
        DrainUnreadBody(),
        MetricsMiddleware(metrics),
        RefuseQueryParameters(),
        ModelLifecycle(settings, inference, model, recorder, metrics),
    ]
    if settings.api_tokens:
        middleware.append(BearerAuth(settings.api_tokens))
    app = falcon.asgi.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    app.add_error_handler(ServiceError, _service_error)
    app.add_error_handler(falcon.HTTPBadRequest, _unknown_method)
    app.add_error_handler(Exception, _unexpected_error)
    app.set_error_serializer(_http_error)

    limit = settings.max_body_bytes
    budget = BodyBudget(
        BODY_BUDGET_BODIES * limit,
        when_emptied=release_free_memory,
        read_ahead=SERVER_READ_AHEAD_BYTES,
    )
    reader = BodyReader(limit, settings.body_timeout_seconds)
    app.add_route("/predict", resources.Predict(inference, reader, recorder, budget))
    app.add_route("/v2", resources.ServerMetadata())
    app.add_route("/v2/health/live", resources.Live())
    app.add_route("/v2/health/ready", resources.Ready(inference))
    for route in MODEL_ROUTES:
        app.add_route(route, resources.ModelMetadata(inference))
        app.add_route(f"{route}/ready", resources.ModelReady(inference))
        app.add_route(f"{route}/infer", resources.ModelInfer(inference, reader, recorder, budget))
    app.add_route("/metrics", resources.MetricsEndpoint(metrics))
    app.add_route("/openapi.json", resources.OpenApi(openapi_document()))
    return app


# -- the one place where errors become HTTP responses -------------------------


async def _service_error(req, resp, error: ServiceError, params) -> None:
    resp.status = error.status
    resp.set_headers(error.headers)
    resp.content_type = resources.JSON
    resp.data = orjson.dumps({"error": error.message})


async def _unknown_method(req, resp, error: falcon.HTTPBadRequest, params) -> None:
    """Falcon refuses a method it does not know (one uvicorn's parser lets through, such as
    PURGE or LINK) with a bare "Invalid HTTP method": name the methods served instead
    (still 400, see UnknownMethod). Falcon's other 400s stay as they are."""
    if req.method in falcon.COMBINED_METHODS:
        raise error
    await _service_error(req, resp, UnknownMethod(req.method, IMPLEMENTED_METHODS), params)


async def _unexpected_error(req, resp, error: Exception, params) -> None:
    log.exception("unexpected error on %s %s", req.method, req.path)
    resp.status = 500
    resp.content_type = resources.JSON
    resp.data = orjson.dumps({"error": "internal error; the service log has the details"})


def _http_error(req, resp, error: falcon.HTTPError) -> None:
    """Falcon's own errors (no route, wrong method, ...) in the same JSON shape."""
    if error.status_code == 404:
        message = f"no route {req.path!r}; /openapi.json lists the routes"
    elif error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = f"method {req.method} is not allowed on {req.path}; allowed: {allowed}"
    else:
        message = error.description or error.title
    resp.content_type = resources.JSON
    resp.data = orjson.dumps({"error": message})
