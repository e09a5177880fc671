"""In-process stand-ins for what a release talks to, so its logic runs in the test process.

`Endpoints` answers urllib requests (what `pipeline.release` sends to the service) from
the service's real Falcon ASGI app, called through `falcon.testing.TestClient`: the
status, headers and body are the app's, only the socket is left out. It is installed
with `urllib.request.install_opener`, the standard library's way to give `urlopen` other
handlers (https://docs.python.org/3/library/urllib.request.html#urllib.request.install_opener).
A host that no app serves is refused like a closed port (`URLError`, an OSError).

`Clock` is a virtual `time.monotonic`/`time.sleep` pair: a wait bounded in time runs its
polls without sleeping, and the test reads how long it would have waited.
"""

from __future__ import annotations

import email.message
import io
import urllib.error
import urllib.request
import urllib.response
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from types import SimpleNamespace

from falcon import testing


class _AppHandler(urllib.request.BaseHandler):
    handler_order = 100  # before urllib's own HTTPHandler (500)

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints

    def http_open(self, request: urllib.request.Request):
        self.endpoints.requests.append((request.get_method(), request.full_url))
        self.endpoints.timeouts.append(request.timeout)
        self.endpoints.headers.append(dict(request.header_items()))
        client = self.endpoints.apps.get(request.host)
        if client is None:
            raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        path, _, query = request.selector.partition("?")
        result = client.simulate_request(
            request.get_method(),
            path,
            query_string=query or None,
            headers=dict(request.header_items()),
            body=request.data or b"",
        )
        headers = email.message.Message()
        for name, value in result.headers.items():
            headers[name] = value
        response = urllib.response.addinfourl(
            io.BytesIO(result.content), headers, request.full_url, result.status_code
        )
        response.msg = HTTPStatus(result.status_code).phrase
        return response


class Endpoints:
    """Hosts (`name:port` as in the URL) served by in-process ASGI apps."""

    def __init__(self) -> None:
        self.apps: dict[str, testing.TestClient] = {}
        self.requests: list[tuple[str, str]] = []
        self.timeouts: list[float | None] = []  # each request's socket timeout
        self.headers: list[dict[str, str]] = []  # each request's headers

    def serve(self, host: str, app) -> str:
        """Serve `app` at `http://<host>`; returns that base URL."""
        self.apps[host] = testing.TestClient(app)
        return f"http://{host}"

    @contextmanager
    def installed(self) -> Iterator[Endpoints]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _AppHandler(self))
        urllib.request.install_opener(opener)
        try:
            yield self
        finally:
            urllib.request.install_opener(None)  # urlopen builds its default opener again


class Clock:
    """Virtual monotonic time: `sleep` only moves it on and remembers what it was asked."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def as_time_module(self) -> SimpleNamespace:
        return SimpleNamespace(monotonic=self.monotonic, sleep=self.sleep)
