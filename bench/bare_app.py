"""The HTTP ceiling: a bare ASGI app that reads the request and answers a fixed JSON body.

Served by uvicorn with httptools and uvloop like the service, it measures what
one core spends on HTTP alone: `uvicorn bench.bare_app:app`.
"""

from __future__ import annotations

BODY = b'{"prediction":7}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole request body, as a real handler would
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
