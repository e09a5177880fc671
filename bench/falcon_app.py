"""The framework ceiling: a Falcon app that decodes `/predict`'s body and answers a fixed class.

One Falcon ASGI route that reads the body, decodes it with the service's own JSON lane
(`service.jsonnumbers`: simdjson into one float buffer, then float32) and answers
`{"prediction": 7}` with orjson: no model, middleware, authentication, metrics,
admission, batching or capture. The bare app (`bench.bare_app`) is the HTTP ceiling; this
one adds what any Falcon service of this JSON body must do on top of HTTP, so the ideal's
formula with it in place of the bare app, `1/(1/falcon + t_inference)`, is the most such
a service reaches on the machine running the model once a request (batching can do
better): `uvicorn bench.falcon_app:app`.
"""

from __future__ import annotations

import falcon
import falcon.asgi
import orjson

from service.jsonnumbers import FLOAT32, NumberArrays

ANSWER = orjson.dumps({"prediction": 7})


class Predict:
    def __init__(self) -> None:
        self._numbers = NumberArrays()

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if self._numbers.decode(await req.stream.read(), FLOAT32) is None:
            raise falcon.HTTPBadRequest(description='the body must be {"data": [numbers]}')
        resp.content_type = falcon.MEDIA_JSON
        resp.data = ANSWER


class Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.data = b'{"ready":true}'


def create_app() -> falcon.asgi.App:
    app = falcon.asgi.App()
    app.add_route("/predict", Predict())
    app.add_route("/health", Health())
    return app


app = create_app()
