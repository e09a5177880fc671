"""Below the app: uvicorn's protocol as `python -m service` runs it, fed request bytes and
writing to a transport that records each write as the socket would get it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httptools
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.http import REQUESTS_IN_FLIGHT, requests_in_flight
from service.protocol import CorkedTransport, HttpProtocol
from tests.service.test_http import UNKNOWN_METHOD

DATE = b"Mon, 30 Nov 2026 12:00:00 GMT"


class SocketTransport:
    """The transport uvloop would give: what reaches the socket, one entry a write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof = False
        self.buffered = 0

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after close"
        if self.eof:  # as uvloop: stream.pyx
            raise RuntimeError("Cannot call write() after write_eof()")
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 50000)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connect(
    app, keep_alive: float = 5, state: ServerState | None = None
) -> tuple[HttpProtocol, SocketTransport]:
    """A connection to `app` (ASGI) through the service's protocol, closed after
    `keep_alive` seconds idle, on the server whose state is `state` (a new server's by
    default); call in a running loop."""
    config = Config(
        app=app, http=HttpProtocol, lifespan="off", log_config=None, timeout_keep_alive=keep_alive
    )
    config.load()
    if state is None:
        state = ServerState()
        state.default_headers = [(b"date", DATE)]
    protocol = HttpProtocol(config=config, server_state=state, app_state={})
    socket = SocketTransport()
    protocol.connection_made(socket)  # type: ignore[arg-type]
    return protocol, socket


async def until(condition: Callable[[], bool], turns: int = 100) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not within {turns} turns of the event loop")


def echo_app(after_answer: Callable[[], None]):
    """An ASGI app answering a request's body, as Falcon answers: start, then the body;
    `after_answer` runs right after its last send returns, before any other turn."""

    async def app(scope, receive, send) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        after_answer()

    return app


def test_each_response_reaches_the_socket_in_one_write_as_its_last_send_returns():
    async def exchange() -> tuple[list[bytes], list[int]]:
        written_by_answer: list[int] = []
        protocol, socket = connect(echo_app(lambda: written_by_answer.append(len(socket.writes))))
        for body in (b"hello", b"again, on the same connection"):
            request = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
            protocol.data_received(request + body)
            answered = len(written_by_answer) + 1
            await until(lambda: len(written_by_answer) == answered)  # noqa: B023
        return socket.writes, written_by_answer

    writes, written_by_answer = asyncio.run(exchange())
    assert written_by_answer == [1, 2]  # sent as the response completed, not a turn later
    assert len(writes) == 2
    for write, body in zip(writes, (b"hello", b"again, on the same connection"), strict=True):
        assert write.startswith(b"HTTP/1.1 200 OK\r\n")
        assert write.endswith(b"\r\n\r\n" + body)
        assert b"date: " + DATE + b"\r\n" in write


KEEP_ALIVE = 0.2  # seconds; the tests' sleeps are fractions of it
REQUEST = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"


async def answered(protocol: HttpProtocol, socket: SocketTransport) -> None:
    """Send REQUEST and wait for its answer."""
    before = len(socket.writes)
    protocol.data_received(REQUEST)
    await until(lambda: len(socket.writes) > before)


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout_not_before():
    async def exchange() -> tuple[bool, bool, float]:
        loop = asyncio.get_running_loop()
        protocol, socket = connect(echo_app(lambda: None), KEEP_ALIVE)
        await answered(protocol, socket)
        idle_from = loop.time()
        await asyncio.sleep(KEEP_ALIVE * 0.6)
        open_midway = not socket.closed
        await asyncio.sleep(KEEP_ALIVE * 0.8)
        return open_midway, socket.closed, loop.time() - idle_from

    open_midway, closed, waited = asyncio.run(exchange())
    assert open_midway
    assert closed, f"still open {waited:.2f} s after its answer"


def test_answers_in_a_row_share_one_keep_alive_timer():
    async def exchange() -> list[bool]:
        protocol, socket = connect(echo_app(lambda: None), KEEP_ALIVE)
        await answered(protocol, socket)
        timer = protocol.timeout_keep_alive_task
        same = []
        for _ in range(10):
            await answered(protocol, socket)
            same.append(protocol.timeout_keep_alive_task is timer)
        return same

    assert asyncio.run(exchange()) == [True] * 10


def test_a_request_within_the_timeout_moves_the_close_to_its_own_answer():
    async def exchange() -> list[bool]:
        protocol, socket = connect(echo_app(lambda: None), KEEP_ALIVE)
        closed = []
        await answered(protocol, socket)
        for _ in range(3):  # answers half a timeout apart: never idle for a whole one
            await asyncio.sleep(KEEP_ALIVE * 0.5)
            await answered(protocol, socket)
            closed.append(socket.closed)
        await asyncio.sleep(KEEP_ALIVE * 0.6)  # past the first answer's deadline, not the last's
        closed.append(socket.closed)
        await asyncio.sleep(KEEP_ALIVE * 0.8)
        closed.append(socket.closed)
        return closed

    assert asyncio.run(exchange()) == [False, False, False, False, True]


def test_a_connection_with_a_request_in_progress_is_not_closed_by_the_timer():
    errors: list[dict] = []

    async def exchange() -> tuple[bool, bool]:
        asyncio.get_running_loop().set_exception_handler(lambda loop, error: errors.append(error))
        protocol, socket = connect(echo_app(lambda: None), KEEP_ALIVE)
        await answered(protocol, socket)
        protocol.data_received(REQUEST[:20])  # the next request, still arriving
        await asyncio.sleep(KEEP_ALIVE * 1.5)
        open_while_busy = not socket.closed
        protocol.data_received(REQUEST[20:])
        await until(lambda: len(socket.writes) == 2)
        await asyncio.sleep(KEEP_ALIVE * 1.5)
        return open_while_busy, socket.closed

    assert asyncio.run(exchange()) == (True, True)
    assert errors == []  # the timer fired while the request was in progress, quietly


@pytest.mark.parametrize("error", [None, ConnectionResetError(104, "reset by peer")])
def test_a_lost_connection_stops_its_keep_alive_timer(error):
    """uvicorn closes its side when the peer's end arrives (no error), not after a reset."""

    async def exchange() -> tuple[object, bool, bool]:
        protocol, socket = connect(echo_app(lambda: None), KEEP_ALIVE)
        await answered(protocol, socket)
        timer = protocol.timeout_keep_alive_task
        protocol.connection_lost(error)
        return (
            protocol.timeout_keep_alive_task,
            timer is not None and timer.cancelled(),
            socket.closed,
        )

    assert asyncio.run(exchange()) == (None, True, error is None)


def test_pipelined_requests_are_answered_in_order_and_counted():
    async def exchange() -> tuple[list[bytes], int]:
        protocol, socket = connect(echo_app(lambda: None), KEEP_ALIVE)
        first = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nfirst"
        second = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nsecond"
        protocol.data_received(first + second)  # both in one read: the second waits its turn
        await until(lambda: len(socket.writes) == 2)
        await answered(protocol, socket)
        return socket.writes, protocol.server_state.total_requests

    writes, total = asyncio.run(exchange())
    assert [write.rpartition(b"\r\n\r\n")[2] for write in writes] == [b"first", b"second", b"hi"]
    assert total == 3  # what uvicorn's --limit-max-requests counts


def test_every_request_is_told_how_many_requests_the_server_has_in_progress():
    """The scope's extension counts the server's request tasks not yet done, every
    connection's: a request read alone counts 1; two read in one turn, on two
    connections, count 2 each; once they are answered, the next counts 1 again."""

    async def exchange() -> list[int]:
        seen: list[int] = []

        async def app(scope, receive, send) -> None:
            seen.append(requests_in_flight(scope))
            await echo_app(lambda: None)(scope, receive, send)

        state = ServerState()
        state.default_headers = [(b"date", DATE)]
        (one, one_socket), (two, two_socket) = connect(app, state=state), connect(app, state=state)
        await answered(one, one_socket)
        one.data_received(REQUEST)
        two.data_received(REQUEST)
        await until(lambda: len(one_socket.writes) == 2 and len(two_socket.writes) == 1)
        await asyncio.sleep(0)  # uvicorn forgets a finished request at the next turn
        await answered(two, two_socket)
        return seen

    assert asyncio.run(exchange()) == [1, 2, 2, 1]


def test_a_scope_without_the_servers_count_counts_zero_requests_in_flight():
    """Under another server (uvicorn's own protocol, a test client) nothing says how
    many requests are in progress: 0, never 1 (alone), so the routes take the way that
    is right under any load."""
    assert requests_in_flight({"type": "http"}) == 0
    assert requests_in_flight({"type": "http", "extensions": {}}) == 0
    assert requests_in_flight({"type": "http", "extensions": {"http.response.trailers": {}}}) == 0
    assert requests_in_flight({"extensions": {REQUESTS_IN_FLIGHT: {"count": lambda: 1}}}) == 1
    assert requests_in_flight({"extensions": {REQUESTS_IN_FLIGHT: {"count": lambda: 3}}}) == 3


def test_a_100_continue_goes_out_at_the_next_turn_while_the_app_waits_for_the_body():
    async def exchange() -> tuple[list[bytes], list[bytes]]:
        protocol, socket = connect(echo_app(lambda: None))
        protocol.data_received(
            b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        await until(lambda: bool(socket.writes))
        before_body = list(socket.writes)
        protocol.data_received(b"hello")
        await until(lambda: len(socket.writes) == 2)
        return before_body, socket.writes

    before_body, writes = asyncio.run(exchange())
    assert before_body == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert writes[1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[1].endswith(b"\r\n\r\nhello")


def test_held_writes_leave_joined_in_order_at_a_flush_or_the_next_turn():
    async def run() -> list[list[bytes]]:
        socket = SocketTransport()
        corked = CorkedTransport(socket, asyncio.get_running_loop())  # type: ignore[arg-type]
        corked.write(b"head ")
        corked.writelines([b"bo", b"dy"])
        socket.buffered = 10
        assert corked.get_write_buffer_size() == 10 + len(b"head body")
        seen = [list(socket.writes)]
        corked.flush()
        seen.append(list(socket.writes))
        corked.write(b"late")
        seen.append(list(socket.writes))
        await asyncio.sleep(0)
        seen.append(list(socket.writes))
        corked.flush()  # nothing held: no empty write
        seen.append(list(socket.writes))
        return seen

    nothing, flushed, held, turned, unchanged = asyncio.run(run())
    assert nothing == []
    assert flushed == [b"head body"]
    assert held == [b"head body"]
    assert turned == [b"head body", b"late"]
    assert unchanged == turned


class Turns:
    """An event loop's `call_soon`, run by hand: what is scheduled for the next turn."""

    def __init__(self) -> None:
        self.scheduled: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.scheduled.append(callback)

    def turn(self) -> None:
        due, self.scheduled = self.scheduled, []
        for callback in due:
            callback()


def test_a_turn_has_one_flush_scheduled_however_many_writes_it_makes():
    socket, turns = SocketTransport(), Turns()
    corked = CorkedTransport(socket, turns)  # type: ignore[arg-type]
    for piece in (b"a", b"b", b"c"):
        corked.write(piece)
    assert len(turns.scheduled) == 1
    turns.turn()
    corked.write(b"d")  # a later turn's writes get their own flush
    assert len(turns.scheduled) == 1
    turns.turn()
    assert socket.writes == [b"abc", b"d"]
    corked.abort()
    corked.write(b"after the abort")  # dropped by the aborted transport, as uncorked
    turns.turn()
    assert socket.aborted


def test_what_is_held_is_dropped_when_the_connection_is_lost_before_it_goes():
    socket, turns = SocketTransport(), Turns()
    corked = CorkedTransport(socket, turns)  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    socket.closed = True  # the peer went away: the transport closed itself
    turns.turn()  # SocketTransport refuses a write after close, as uvloop does
    corked.write(b"a streamed chunk")
    corked.close()  # uvicorn closes its side when the peer's end arrives
    assert socket.writes == []
    assert corked.get_write_buffer_size() == 0


def test_closing_sends_what_is_held_first_and_aborting_drops_it():
    async def run() -> dict[str, SocketTransport]:
        sockets = {"close": SocketTransport(), "write_eof": SocketTransport()}
        sockets["abort"] = SocketTransport()
        for ending, socket in sockets.items():
            corked = CorkedTransport(socket, asyncio.get_running_loop())  # type: ignore[arg-type]
            corked.write(b"answer")
            getattr(corked, ending)()
        await asyncio.sleep(0)  # the turn's flush finds nothing left to send
        return sockets

    sockets = asyncio.run(run())
    assert sockets["close"].writes == [b"answer"]
    assert sockets["close"].closed
    assert sockets["write_eof"].writes == [b"answer"]
    assert sockets["write_eof"].eof
    assert sockets["abort"].writes == []
    assert sockets["abort"].aborted


def test_everything_else_is_the_wrapped_transports():
    async def run() -> tuple[object, bool, bool]:
        socket = SocketTransport()
        corked = CorkedTransport(socket, asyncio.get_running_loop())  # type: ignore[arg-type]
        open_before = corked.is_closing()
        socket.closed = True
        return corked.get_extra_info("peername"), open_before, corked.is_closing()

    assert asyncio.run(run()) == (("127.0.0.1", 50000), False, True)


# -- requests uvicorn's parser refuses ------------------------------------------------


def refused(reason: BaseException | None) -> tuple[bytes, dict, SocketTransport]:
    """What reaches the socket when uvicorn's parser refuses a request for `reason`."""

    async def refuse() -> SocketTransport:
        protocol, socket = connect(echo_app(lambda: None))
        if reason is None:
            protocol.send_400_response("Invalid HTTP request received.")
        else:
            try:
                raise reason
            except type(reason):
                protocol.send_400_response("Invalid HTTP request received.")
        return socket

    socket = asyncio.run(refuse())
    assert len(socket.writes) == 1
    head, _, body = socket.writes[0].partition(b"\r\n\r\n")
    return head, json.loads(body), socket


def test_a_request_the_parser_refuses_is_answered_in_json_with_the_parsers_reason():
    head, body, socket = refused(ValueError("invalid header token"))
    assert body == {"error": "malformed HTTP request: invalid header token"}
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 400 Bad Request",
        b"date: " + DATE,
        b"content-type: application/json",
        b"content-length: " + str(len(raw)).encode(),
        b"connection: close",
    ]
    assert socket.closed


def test_a_method_the_parser_does_not_know_is_named_and_a_missing_space_is_malformed():
    head, body, socket = refused(
        httptools.HttpParserInvalidMethodError("Invalid method encountered")
    )
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    assert body == {"error": UNKNOWN_METHOD}
    assert socket.closed
    # llhttp words a known method without the space after it the same way: still malformed.
    head, body, _ = refused(httptools.HttpParserInvalidMethodError("Expected space after method"))
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    assert body == {"error": "malformed HTTP request: Expected space after method"}


def test_a_refusal_without_a_reason_says_only_malformed():
    assert refused(None)[1] == {"error": "malformed HTTP request"}
    assert refused(ValueError(""))[1] == {"error": "malformed HTTP request"}


@pytest.mark.parametrize("request_line", [b"FOO /v2 HTTP/1.1", b"GET /v2 HTTP/1.1 extra"])
def test_bytes_the_parser_refuses_are_answered_in_one_write_and_the_connection_closed(
    request_line,
):
    async def exchange() -> SocketTransport:
        protocol, socket = connect(echo_app(lambda: None))
        protocol.data_received(request_line + b"\r\nHost: t\r\n\r\n")
        return socket

    socket = asyncio.run(exchange())
    assert len(socket.writes) == 1
    assert socket.writes[0].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert socket.closed


def closing_app(read_body: bool):
    """An ASGI app answering 408 with `Connection: close`, as the service does to a body
    that does not come in time: without reading the body, or after reading all of it."""

    async def app(scope, receive, send) -> None:
        more = read_body
        while more:
            more = (await receive()).get("more_body", False)
        headers = [(b"content-length", b"2"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 408, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def test_a_connection_closed_with_its_body_still_coming_closes_in_stages(monkeypatch):
    monkeypatch.setattr("service.protocol.LINGER_SECONDS", 0.05)
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"

    async def scenario() -> list[tuple[bool, bool, int]]:
        protocol, socket = connect(closing_app(read_body=False))
        protocol.data_received(head + b"x" * 10)
        await until(lambda: bool(socket.writes))
        seen = [(socket.eof, socket.closed, len(socket.writes))]
        protocol.data_received(b"y" * 50)  # the body goes on coming: read and dropped
        protocol.data_received(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")  # never answered
        protocol.shutdown()  # the server stopping does not cut the linger short
        await asyncio.sleep(0)
        assert protocol.timeout_keep_alive_task is None  # no keep-alive: it closes
        seen.append((socket.eof, socket.closed, len(socket.writes)))
        await asyncio.sleep(0.1)  # LINGER_SECONDS
        seen.append((socket.eof, socket.closed, len(socket.writes)))
        return seen

    # Half-closed after the answer, still reading, closed once the linger is over.
    assert asyncio.run(scenario()) == [(True, False, 1), (True, False, 1), (True, True, 1)]


def test_a_connection_whose_body_came_whole_closes_at_once():
    async def scenario() -> tuple[bool, bool]:
        protocol, socket = connect(closing_app(read_body=True))
        protocol.data_received(b"POST /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        await until(lambda: socket.closed)
        return socket.eof, protocol._lingering is None

    assert asyncio.run(scenario()) == (False, True)


def test_a_request_refused_below_the_app_mid_body_closes_at_once():
    """uvicorn answers bad chunk framing with its 400 while the route still reads the
    body: that close is not staged (the route learns the client went away when the
    connection is lost), and nothing the route or uvicorn writes afterwards fails."""

    async def scenario() -> tuple[bool, bool, dict]:
        received: list[dict] = []

        async def app(scope, receive, send) -> None:
            while True:
                message = await receive()
                received.append(message)
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    return

        protocol, socket = connect(app)
        protocol.data_received(
            b"POST /v2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Expect: 100-continue\r\n\r\n5\r\nhello\r\n"
        )
        await until(lambda: bool(received))
        protocol.data_received(b"ZZZ\r\n")  # not a chunk size: uvicorn's 400
        await until(lambda: socket.closed)
        protocol.connection_lost(None)  # what the event loop does after the close
        await until(lambda: received[-1]["type"] == "http.disconnect")
        return socket.eof, protocol._lingering is None, received[-1]

    eof, not_lingering, last = asyncio.run(scenario())
    assert not eof and not_lingering and last == {"type": "http.disconnect"}


def test_a_transport_that_cannot_shut_one_side_closes_at_once():
    async def scenario() -> tuple[bool, bool]:
        protocol, socket = connect(closing_app(read_body=False))
        socket.can_write_eof = lambda: False  # as a TLS transport
        protocol.data_received(b"POST /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\na")
        await until(lambda: socket.closed)
        return socket.eof, protocol._lingering is None

    assert asyncio.run(scenario()) == (False, True)


def test_a_connection_lost_while_it_closes_in_stages_stops_its_timer():
    async def scenario() -> bool:
        protocol, socket = connect(closing_app(read_body=False))
        protocol.data_received(b"POST /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\na")
        await until(lambda: socket.eof)
        timer = protocol._lingering
        protocol.connection_lost(None)
        return timer is not None and timer.cancelled() and protocol._lingering is None

    assert asyncio.run(scenario())


def test_the_protocol_is_read_against_the_uvicorn_it_mirrors():
    """HttpProtocol.on_response_complete repeats uvicorn 0.54's own steps but for the
    keep-alive timer, and overrides its keep-alive hooks: another uvicorn release must be
    read against it before it is locked."""
    import inspect

    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert uvicorn.__version__ == "0.54.0", (
        "compare HttpToolsProtocol.on_response_complete, _unset_keepalive_if_required, "
        "connection_lost, data_received and RequestResponseCycle.more_body with "
        "service.protocol.HttpProtocol, then update this version"
    )
    steps = inspect.getsource(HttpToolsProtocol.on_response_complete)
    for step in ("total_requests += 1", "is_closing()", "resume_reading()", "pipeline.pop()"):
        assert step in steps
