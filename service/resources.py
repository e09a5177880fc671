"""HTTP resources: read the request, call the core, set status and body.

Bodies are parsed and written with orjson directly (they are the hot path);
every failure is raised as a `ServiceError` and rendered in one place
(`service.app`).
"""

from __future__ import annotations

import time

import falcon
import orjson

from service import __version__, codec
from service.admission import BodyBudget
from service.capture import PredictionRecorder
from service.errors import ModelNotFound, NotReady, NotServedThroughProxy, UnsupportedMediaType
from service.http import BodyReader, requests_in_flight
from service.inference import Inference
from service.jsonnumbers import NumberArrays
from service.metrics import Metrics

JSON = "application/json"
SERVER_NAME = "onnx-ship"
V2_EXTENSIONS = ["binary_tensor_data", "classification"]


def require_media(req: falcon.asgi.Request, allowed: tuple[str, ...]) -> None:
    """A missing Content-Type is taken as allowed; a different one is refused.

    JSON is UTF-8 (RFC 8259 section 8.1), so a charset other than utf-8 is refused
    too, instead of being decoded as if it were UTF-8.
    """
    if req.content_type is None:
        return
    media, _, options = req.content_type.partition(";")
    media = media.strip().lower()
    if media not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type {media!r} is not accepted here; send {' or '.join(allowed)}"
        )
    for option in options.split(";"):
        name, _, value = option.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(
                f"charset {charset!r} is not accepted; JSON bodies are UTF-8 (RFC 8259)"
            )


def send_json(resp: falcon.asgi.Response, document: object, status: int = 200) -> None:
    resp.status = status
    resp.content_type = JSON
    resp.data = orjson.dumps(document)


class Route:
    """Every route answers OPTIONS with the methods it takes, the Allow list its 405 gives.

    RFC 9110 section 9.3.7 asks for that header (Allow) and makes content optional ("the
    response content, if any"); with none, 204 says so (section 15.3.5) and carries
    neither Content-Length (section 8.6) nor Content-Type (Falcon adds none to a 204),
    where Falcon's own OPTIONS answer is a 200 declaring JSON of no bytes.
    """

    async def on_options(self, req, resp, **params) -> None:
        resp.status = 204
        resp.set_header("Allow", allowed_methods(self))


class GetRoute(Route):
    """A route read with GET, which also answers HEAD (RFC 9110 section 9.1: every
    general-purpose server supports both)."""

    async def on_head(self, req, resp, **params) -> None:
        """GET's status and headers without its content (RFC 9110 section 9.3.2). Falcon's
        ASGI app sends no body on HEAD and sets Content-Length to the length of the GET
        content the responder made; uvicorn sends no body on HEAD either."""
        await self.on_get(req, resp, **params)


def allowed_methods(resource: object) -> str:
    """The methods `resource` has responders for, as Falcon lists them in a 405's Allow
    (sorted; falcon.routing.util.set_default_responders)."""
    return ", ".join(
        sorted(
            method
            for method in falcon.COMBINED_METHODS
            if callable(getattr(resource, f"on_{method.lower()}", None))
        )
    )


def served_model(inference: Inference, name: str, version: str | None):
    model = inference.model
    if name != model.info.name or (version is not None and version != model.info.version):
        raise ModelNotFound(name, version, model.info.name, model.info.version)
    return model


class PredictionRoute(Route):
    """A route that runs the model: read, decode, infer, encode, then record."""

    def __init__(
        self,
        inference: Inference,
        reader: BodyReader,
        recorder: PredictionRecorder,
        budget: BodyBudget,
    ) -> None:
        self._inference = inference
        self._reader = reader
        self._recorder = recorder
        self._budget = budget
        self._numbers = NumberArrays()

    def _held(self, req: falcon.asgi.Request):
        """The body budget for this request, from its read to its computed answer: its
        Content-Length, or the body limit when it has none (chunked) or is content-coded
        (a gzip body of a few kB may decode to the limit)."""
        length = req.content_length
        limit = self._reader.limit
        if length is None or req.get_header("Content-Encoding"):
            return self._budget.hold(limit)
        return self._budget.hold(min(length, limit))


class Predict(PredictionRoute):
    """POST /predict: the simple contract, {"data": [...]} -> {"prediction": 7}."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        started = time.perf_counter()
        request_id = codec.checked_request_id(req.get_header("X-Request-Id"), "X-Request-Id")
        require_media(req, (JSON,))
        model = self._inference.model
        async with self._held(req):
            body = await self._reader.read(req)
            data = codec.predict_data(body, model.input.dtype, self._numbers)
            del body
            batch, single = model.as_batch(data)
            in_flight = requests_in_flight(req.scope)
            scores = await self._inference.scores(batch, in_flight == 1)
        try:
            send_json(resp, codec.encode_predict(scores, single, model.info))
        finally:
            # The model ran, so what it answered is recorded: also when a row without a
            # class (its scores held a NaN) makes the answer a 400, as `"prediction": null`.
            self._recorder.record(
                route="/predict",
                request_id=request_id,
                model=model.info,
                scores=scores,
                inputs=batch,
                latency_seconds=time.perf_counter() - started,
                in_flight=in_flight,
            )


class ServerMetadata(GetRoute):
    async def on_get(self, req, resp) -> None:
        send_json(resp, {"name": SERVER_NAME, "version": __version__, "extensions": V2_EXTENSIONS})


class Live(GetRoute):
    async def on_get(self, req, resp) -> None:
        send_json(resp, {"live": True})


class Ready(GetRoute):
    def __init__(self, inference: Inference) -> None:
        self._inference = inference

    async def on_get(self, req, resp) -> None:
        if not self._inference.ready:
            raise NotReady()
        send_json(resp, {"ready": True})


class ModelMetadata(GetRoute):
    def __init__(self, inference: Inference) -> None:
        self._inference = inference

    async def on_get(self, req, resp, name: str, version: str | None = None) -> None:
        model = served_model(self._inference, name, version)
        send_json(
            resp,
            {
                "name": model.info.name,
                "versions": [model.info.version],
                "platform": model.info.platform,
                "inputs": [_tensor_metadata(spec) for spec in model.served_inputs],
                "outputs": [_tensor_metadata(spec) for spec in model.served_outputs],
                "parameters": {"sha256": model.info.sha256},
            },
        )


class ModelReady(GetRoute):
    def __init__(self, inference: Inference) -> None:
        self._inference = inference

    async def on_get(self, req, resp, name: str, version: str | None = None) -> None:
        served_model(self._inference, name, version)
        send_json(resp, {"name": name, "ready": True})


class ModelInfer(PredictionRoute):
    """POST /v2/models/{name}[/versions/{version}]/infer, JSON or binary tensors."""

    async def on_post(self, req, resp, name: str, version: str | None = None) -> None:
        started = time.perf_counter()
        header_length = req.get_header(codec.BINARY_HEADER)
        require_media(req, (JSON, "application/octet-stream"))
        model = served_model(self._inference, name, version)
        async with self._held(req):
            body = await self._reader.read(req)
            request = codec.decode_infer(
                body, header_length, model.inputs, model.outputs, self._numbers
            )
            del body
            in_flight = requests_in_flight(req.scope)
            results = await self._inference.run(request.inputs, in_flight == 1)
        payload, json_length = codec.encode_infer(
            model.info.name,
            model.info.version,
            request,
            results,
            model.outputs,
            {model.outputs[0].name: model.labels} if model.labels else None,
        )
        resp.data = payload
        if json_length is None:
            resp.content_type = JSON
        else:
            resp.content_type = "application/octet-stream"
            resp.set_header(codec.BINARY_HEADER, str(json_length))
        self._recorder.record(
            route="/v2/infer",
            request_id=request.id,
            model=model.info,
            scores=results[model.outputs[0].name],
            inputs=request.inputs.get(model.input.name),
            latency_seconds=time.perf_counter() - started,
            in_flight=in_flight,
        )


class MetricsEndpoint(GetRoute):
    """Prometheus text, for scrapers that reach the task directly.

    The load balancer answers `/metrics` itself (a listener rule), but its path match
    is literal, so a percent-encoded path (`/%6Detrics`, decoded by uvicorn) or a second
    leading slash (`//metrics`, stripped by Falcon's router) could pass it and be routed
    here. Every request an Application Load Balancer forwards carries X-Forwarded-For
    (ELB user guide, "HTTP headers and Application Load Balancers"); a direct scrape
    does not. So a request with it is refused as if there were no such route.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def on_get(self, req, resp) -> None:
        if req.get_header("X-Forwarded-For") is not None:
            raise NotServedThroughProxy(req.path)
        resp.content_type = self._metrics.content_type
        resp.data = self._metrics.render()


class OpenApi(GetRoute):
    def __init__(self, document: dict) -> None:
        self._body = orjson.dumps(document)

    async def on_get(self, req, resp) -> None:
        resp.content_type = JSON
        resp.data = self._body


def _tensor_metadata(spec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
