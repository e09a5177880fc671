"""HTTP/1.1 connections below the app: uvicorn's protocol as `python -m service` runs it.

Five changes to uvicorn's httptools protocol: the requests uvicorn refuses before the
app sees them are answered in the service's JSON error shape, what one response writes
leaves in one send (`CorkedTransport`), a connection keeps one keep-alive timer instead
of starting one for every response, every request's scope tells the app how many
requests the server has in progress (`service.http.REQUESTS_IN_FLIGHT`), and a
connection closed while its request's body is still coming closes in stages (RFC 9112
section 9.6), so its client reads the answer instead of a reset.
`uvicorn service.asgi:app` runs uvicorn's own protocol, without any of them, unless given
this one (`--http service.protocol:HttpProtocol`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from http import HTTPStatus

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import InvalidInput, ServiceError, UnknownMethod
from service.http import IMPLEMENTED_METHODS, REQUESTS_IN_FLIGHT

# How long a connection closed in stages (HttpProtocol._close_in_stages) reads and drops
# what its client still sends before it closes, from the answer (nginx reads for up to
# 30 s, lingering_time, waiting at most 5 s for each read, lingering_timeout).
LINGER_SECONDS = 5.0

# llhttp's reason when a request line starts with no method it knows. It raises the same
# error class, with another reason ("Expected space after method"), for a known method
# not followed by a space: that request stays malformed (400). A test pins both.
_UNKNOWN_METHOD_REASON = "Invalid method encountered"


class CorkedTransport:
    """A connection's transport that sends what one response writes as one write.

    uvicorn writes a response's status line and headers, then its body, as two `write`
    calls, and uvloop sends each at once while its buffer is empty: two send(2) calls and
    two TCP segments for every answer (strace of the served process: 2.0 writes a
    `/predict` at c=16, 1.0 corked, for about 2.5 us less CPU a request: bench/README.md,
    "Where a request's CPU goes"). Here writes are
    held and go out joined, in order, when the response completes (`flush`, which
    `HttpProtocol` calls), when the connection is closed or its end of writing is
    signalled, and at the event loop's next turn at the latest for writes no completion
    follows (a `100 Continue`, a streamed body). `abort` drops what is held, as it drops
    the transport's own buffer, and so does a connection lost before they go.

    `close` first asks `close_in_stages` (HttpProtocol._close_in_stages), which either
    shuts the writing side itself and answers True, or answers False for a plain close.
    Once the writing side is shut the transport says it is closing and drops any write
    (uvloop refuses a write after `write_eof`). Everything else is the wrapped
    transport's.
    """

    __slots__ = ("_close_in_stages", "_eof", "_held", "_loop", "_transport", "_turn_flush_due")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        close_in_stages: Callable[[], bool] | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._turn_flush_due = False  # a flush at the loop's next turn is scheduled
        self._close_in_stages = close_in_stages
        self._eof = False  # the writing side is shut

    def write(self, data: bytes) -> None:
        if self._eof:
            return
        self._held.append(data)
        if not self._turn_flush_due:
            self._turn_flush_due = True
            self._loop.call_soon(self._flush_at_turn)

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def flush(self) -> None:
        """Send everything held, in one write to the wrapped transport; drop it when the
        connection is already lost (every close of ours sends first), whose bytes could
        not be delivered, and to whose closed handle uvloop refuses a write."""
        held = self._held
        if held:
            self._held = []
            if not self.is_closing():
                self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def _flush_at_turn(self) -> None:
        self._turn_flush_due = False
        self.flush()

    def close(self) -> None:
        self.flush()
        if self._close_in_stages is None or not self._close_in_stages():
            self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._eof = True
        self._transport.write_eof()

    def is_closing(self) -> bool:
        return self._eof or self._transport.is_closing()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with each response sent in one write, one keep-alive
    timer a connection rather than one a request, the requests it cannot parse answered
    in JSON, the count of the server's requests in every request's scope, and a close in
    stages for a connection whose request body is still coming (`_close_in_stages`).

    Keep-alive: uvicorn closes a connection `timeout_keep_alive` seconds after its last
    response unless data comes first, and does it by cancelling a timer on every request
    and starting one on every response (a libuv timer each under uvloop: 2.6% of
    `/predict`'s throughput at c=16 with no timer at all, bench/README.md, "Where a
    request's CPU goes"). Here the
    connection notes when it went idle, and one timer, started when none is running,
    looks when it fires: it closes a connection idle for the whole timeout, starts again
    for the rest of it when the connection went idle since, and stops while a request is
    in progress (the response's completion starts it again). A connection is never closed
    sooner than uvicorn would close it, and the timer stops when the connection is lost.

    Errors below the app: uvicorn answers a malformed request (request line, header,
    Content-Length or chunk framing) with its own 400 in plain text before the app sees
    it; here that answer has the service's `{"error": ...}` shape, and says which methods
    the service implements when the request line starts with no method llhttp knows (a
    400, not RFC 9110's 501: see UnknownMethod).

    Requests in progress: every request's scope carries the `REQUESTS_IN_FLIGHT`
    extension, whose count is uvicorn's `ServerState.tasks` (the server's request tasks
    not yet done, every connection's, this request's included). A request that counts 1
    is alone: the model can run it at once instead of waiting a turn of the event loop
    for others to batch with (service.batching); capture's slices are due sooner the
    fewer requests are in progress (service.capture.recorder).
    """

    # The event loop's time when the connection's last response completed with nothing
    # else to answer; None while a request is in progress.
    _idle_since: float | None = None
    # Set while the connection closes in stages: the timer that ends it.
    _lingering: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._socket = transport  # the connection's own transport, below the cork
        corked = CorkedTransport(transport, self.loop, self._close_in_stages)
        super().connection_made(corked)  # type: ignore[arg-type]
        # One dict a connection, shared by its requests' scopes (the app only reads it).
        self._extensions = {REQUESTS_IN_FLIGHT: {"count": self.tasks.__len__}}

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self._extensions

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._idle_since = None
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None

    def _close_in_stages(self) -> bool:
        """Close a connection whose request body has not all arrived in two stages, as
        RFC 9112 section 9.6 ("Tear-down") advises: closed at once, the client's bytes
        still coming make the kernel answer with a reset, which can erase the response
        before the client reads it (a client still sending its body, as one cut off by
        service.http.BodyReader is, or a load balancer forwarding it). Instead the
        writing side is shut (the client reads the response, then the end), what still
        comes is read and dropped, and the connection closes when the client closes its
        side (uvicorn's eof_received lets the transport close) or LINGER_SECONDS after.
        True when it does so; False leaves the close to the caller: the body came whole,
        the transport cannot shut one side, or the close comes before the app's answer is
        complete (a request uvicorn refuses below the app, whose route uvicorn then tells
        the client went away).
        """
        if self._lingering is not None:  # closing in stages already
            return True
        cycle = self.cycle
        socket = self._socket
        if (
            cycle is None
            or not cycle.response_complete
            or not cycle.more_body
            or socket.is_closing()
            or not socket.can_write_eof()
        ):
            return False
        self.transport.write_eof()
        self.flow.resume_reading()  # uvicorn stops reading a body the app does not read
        self._lingering = self.loop.call_later(LINGER_SECONDS, socket.close)
        return True

    def data_received(self, data: bytes) -> None:
        if self._lingering is None:
            super().data_received(data)
        # else: the rest of a body whose answer has gone out whole: dropped

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this when data arrives: the connection is busy. The running timer
        # stays; it looks when it fires.
        self._idle_since = None

    def on_response_complete(self) -> None:
        # uvicorn calls this right after a response's last write: send the response now,
        # not at the loop's next turn, which may first run a batch through the model. The
        # rest is uvicorn's own (HttpToolsProtocol.on_response_complete, uvicorn 0.54)
        # but for the keep-alive timer.
        self.transport.flush()  # type: ignore[attr-defined]
        self.server_state.total_requests += 1
        if self.transport.is_closing():  # also while it closes in stages
            return
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request waits: answer it
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_due
            )

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # a request is in progress; its response starts the timer again
        remaining = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if remaining > 0:
            self.timeout_keep_alive_task = self.loop.call_later(remaining, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this inside `except httptools.HttpParserError`, so the parser's
        # own reason is the exception being handled. Only this refusal path reads it.
        reason = sys.exc_info()[1]
        if (
            isinstance(reason, httptools.HttpParserInvalidMethodError)
            and str(reason) == _UNKNOWN_METHOD_REASON
        ):
            error: ServiceError = UnknownMethod(None, IMPLEMENTED_METHODS)
        else:
            detail = f": {reason}" if reason is not None and str(reason) else ""
            error = InvalidInput(f"malformed HTTP request{detail}")
        body = orjson.dumps({"error": error.message})
        status = HTTPStatus(error.status)
        head = [f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()
