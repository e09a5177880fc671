"""AWS when it is busy or a connection stalls, which moto never is: a loopback HTTP server
that passes each request on to moto, answers it as a throttled JSON-protocol API does
(ECS: HTTP 400 with `ThrottlingException`, "Common Errors" of the ECS API reference), or
reads it and never answers. A test points one service at it through boto3's
service-specific endpoint variable (`AWS_ENDPOINT_URL_ECS`: "Service-specific endpoints",
AWS SDKs and Tools reference guide) and switches `mode` as it goes."""

from __future__ import annotations

import collections
import http.client
import http.server
import threading
import urllib.parse

PASS, THROTTLE, SILENT = "pass", "throttle", "silent"
THROTTLED = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class AwsFront:
    """`with AwsFront(moto_endpoint) as front:` serves at `front.url` until the block ends;
    `front.requests[mode]` counts the requests it took in each mode."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.mode = PASS
        self.requests: collections.Counter[str] = collections.Counter()
        self._release = threading.Event()  # ends the requests held unanswered
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                front.take(self)

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> AwsFront:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def take(self, request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length)
        mode = self.mode
        self.requests[mode] += 1
        if mode == SILENT:
            self._release.wait(60)
            request.close_connection = True
            return
        if mode == THROTTLE:
            status, answer = 400, THROTTLED
            headers = [("Content-Type", "application/x-amz-json-1.1")]
        else:
            status, headers, answer = self._pass_on(request, body)
        request.send_response(status)
        for name, value in headers:
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(answer)))
        request.end_headers()
        request.wfile.write(answer)

    def _pass_on(
        self, request: http.server.BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(
            self.upstream.hostname, self.upstream.port, timeout=30
        )
        try:
            connection.request(request.command, request.path, body, dict(request.headers))
            response = connection.getresponse()
            answer = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            return response.status, headers, answer
        finally:
            connection.close()
