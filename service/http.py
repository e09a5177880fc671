"""HTTP around the routes: request bodies and their content codings, bodies a route
did not read, query strings, and how many requests the server has in progress (below
the app, the connection: service.protocol).
"""

from __future__ import annotations

import asyncio
import time
import zlib

import falcon
import falcon.asgi

from service.errors import (
    BodyTimeout,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedContentCoding,
)

# An unread request body is read and thrown away before the answer, up to this much and
# this long, as proxies do (nginx's lingering close): a client that sends its whole body
# before it reads the answer (urllib, which also asks to close the connection) then gets
# the answer instead of a reset. Beyond either bound the connection is closed unread.
DISCARD_MAX_BYTES = 64 * 1024 * 1024
DISCARD_MAX_SECONDS = 10.0
_CHUNK = 64 * 1024
# The longest a request body may be read past its timeout (BodyReader's sweep period).
BODY_SWEEP_SECONDS = 1.0

# Content codings (RFC 9110 section 8.4.1): "x-gzip" is gzip's old name, which
# recipients should take as gzip; "identity" is no coding.
GZIP_CODINGS = ("gzip", "x-gzip")
DEFLATE_CODING = "deflate"
IDENTITY_CODING = "identity"
SUPPORTED_CODINGS = (*GZIP_CODINGS, DEFLATE_CODING, IDENTITY_CODING)

# Every method some route answers (HEAD with GET, OPTIONS everywhere); a test keeps it
# equal to the routes. A method neither llhttp nor Falcon knows is named as unknown.
IMPLEMENTED_METHODS = ("GET", "HEAD", "OPTIONS", "POST")

# The ASGI scope extension (ASGI HTTP connection scope, `extensions`) service.protocol adds
# to every request: {"count": callable} giving the server process's request tasks not yet
# done, this request's included (uvicorn's ServerState.tasks: every connection's and
# every route's; a pipelined request queued behind another has no task yet, and a
# finished one leaves the count at the event loop's next turn).
REQUESTS_IN_FLIGHT = "requests_in_flight"


def requests_in_flight(scope: dict) -> int:
    """How many requests this request's server process is working on, this one included
    (the `REQUESTS_IN_FLIGHT` extension; with several workers, each counts its own): 1
    for a request alone on the server. 0 when the server does not say (uvicorn's own
    protocol, a test client): every caller treats 0 as a load of unknown size, the safe
    answer, which only costs time."""
    extensions = scope.get("extensions")
    in_flight = extensions.get(REQUESTS_IN_FLIGHT) if extensions else None
    return 0 if in_flight is None else in_flight["count"]()


# -- request bodies ------------------------------------------------------------


def content_codings(header: str | None) -> list[str]:
    """The codings a Content-Encoding header lists, in the order they were applied.

    Raises UnsupportedContentCoding (415, with Accept-Encoding) naming any coding other
    than gzip, x-gzip, deflate and identity.
    """
    codings = [c.strip().lower() for c in (header or "").split(",") if c.strip()]
    unknown = [c for c in codings if c not in SUPPORTED_CODINGS]
    if unknown:
        raise UnsupportedContentCoding(unknown, SUPPORTED_CODINGS)
    return codings


def decode_content(body: bytes, codings: list[str], limit: int) -> bytes:
    """Undo the content codings of a request body, last applied first (RFC 9110 8.4).

    gzip is RFC 1952 with every member decoded and zero padding after the last one
    accepted, as gzip(1) does. deflate is meant to be the zlib format (RFC 1950;
    RFC 9110 8.4.1.2), but some clients send raw deflate (RFC 1951): a body that does
    not start with a zlib header is read as raw deflate. Raises InvalidInput for a
    body that is not valid data of its coding, PayloadTooLarge when the decoded body
    is over `limit` bytes (decoding stops there: a small bomb cannot fill memory).
    """
    for coding in reversed(codings):
        if coding in GZIP_CODINGS:
            body = _gunzip(body, limit)
        elif coding == DEFLATE_CODING:
            body = _inflate(body, limit)
    return body


def _gunzip(body: bytes, limit: int) -> bytes:
    plain = bytearray()
    rest = body
    members = 0
    while rest:
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            plain += decoder.decompress(rest, limit + 1 - len(plain))
        except zlib.error as exc:
            where = "the body" if members == 0 else f"the data after gzip member {members}"
            raise InvalidInput(f"{where} is not valid gzip data: {exc}") from None
        _check_size(plain, decoder, limit)
        if not decoder.eof:
            raise InvalidInput("the gzip body is truncated: its last member does not end")
        members += 1
        # Each pass consumes a whole member of at least 18 bytes, so the loop ends.
        rest = decoder.unused_data.lstrip(b"\0")
    if members == 0:
        raise InvalidInput("the body is empty, which is not gzip data")
    return bytes(plain)


def _inflate(body: bytes, limit: int) -> bytes:
    zlib_format = (
        len(body) >= 2
        and body[0] & 0x0F == 8
        and body[0] >> 4 <= 7
        and (body[0] << 8 | body[1]) % 31 == 0
    )
    decoder = zlib.decompressobj(zlib.MAX_WBITS if zlib_format else -zlib.MAX_WBITS)
    kind = "zlib (RFC 1950)" if zlib_format else "raw deflate (RFC 1951)"
    try:
        plain = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid {kind} data: {exc}") from None
    _check_size(plain, decoder, limit)
    if not decoder.eof:
        raise InvalidInput(f"the {kind} body is truncated: its stream does not end")
    if decoder.unused_data:
        raise InvalidInput(
            f"the body has {len(decoder.unused_data)} bytes after the end of its {kind} stream"
        )
    return plain


def _check_size(plain: bytes | bytearray, decoder, limit: int) -> None:
    if len(plain) > limit or decoder.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed body is larger than the limit of {limit} bytes")


class BodyReader:
    """Reads the prediction routes' request bodies: content codings undone, at most `limit`
    bytes each way, the whole body within `timeout` seconds of the first read.

    A prediction route holds its share of the body budget (service.admission) from before
    its body is read until its answer is computed, so a client that sends its body slowly
    holds it all that time: two clients announcing 4 MiB bodies and sending a byte a second
    held every other `/predict` (a 4 kB one waited 11 s) for as long as they kept sending,
    and a load balancer keeps such a connection open as long as a byte comes within its
    idle timeout (ELB guide, "Connection idle timeout": an upload that sends a byte before
    each timeout goes on). Past `timeout` the read stops with BodyTimeout (408), which
    gives the budget back and closes the connection.

    One timer for all reads rather than one a read (`asyncio.timeout` around each read
    took 7 us a request on uvloop, a tenth of a `/predict`): every read notes its task and
    when it started, and a sweep every `sweep_seconds` (at most BODY_SWEEP_SECONDS, runs
    only while reads are in progress) cancels those past the timeout, which they turn into
    BodyTimeout. A read stops between `timeout` and `timeout` + `sweep_seconds` after it
    started; time spent waiting for the budget, before the read, does not count.
    """

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self.sweep_seconds = min(BODY_SWEEP_SECONDS, timeout / 2)
        self._reading: dict[asyncio.Task, float] = {}  # task -> when it started (monotonic)
        self._cut: set[asyncio.Task] = set()  # reads the sweep cancelled
        # The event loop the sweep is armed on; None while no read is in progress.
        self._sweep_loop: asyncio.AbstractEventLoop | None = None

    async def read(self, req: falcon.asgi.Request) -> bytes:
        """The request body with its content codings undone.

        Raises PayloadTooLarge (413) for a body over the limit, compressed or not (the
        unread rest is drained by DrainUnreadBody), BodyTimeout (408) for one that did not
        arrive within the timeout, UnsupportedMediaType (415) for an unknown coding,
        InvalidInput (400) for data its coding cannot decode.
        """
        codings = content_codings(req.get_header("Content-Encoding"))
        limit = self.limit
        length = req.content_length  # parsed from the header on every read: read once
        if length is not None and length > limit:
            raise PayloadTooLarge(f"the body has {length} bytes; the limit is {limit}")
        task = asyncio.current_task()
        self._reading[task] = time.monotonic()
        loop = task.get_loop()
        if self._sweep_loop is not loop:  # none armed, or on a loop that has gone
            self._sweep_loop = loop
            loop.call_later(self.sweep_seconds, self._sweep_due)
        try:
            body = await req.stream.read(limit + 1)
        except asyncio.CancelledError:
            # Ours alone (the sweep's cut): a 408. Another cancel besides, in the same
            # turn of the loop (a server's shutdown), is kept and goes on.
            if task not in self._cut or task.uncancel() > 0:
                raise
            raise BodyTimeout(self.timeout) from None
        finally:
            del self._reading[task]
            if self._cut:
                self._cut.discard(task)
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
        return decode_content(body, codings, limit) if codings else body

    def _sweep_due(self) -> None:
        """Cancel this loop's reads that started `timeout` ago or more; look again in
        `sweep_seconds` while any read is in progress."""
        loop = asyncio.get_running_loop()
        if self._sweep_loop is not loop:  # a later loop armed its own sweep
            return
        if not self._reading:
            self._sweep_loop = None
            return
        due = time.monotonic() - self.timeout
        for task, started in self._reading.items():
            if started <= due and task not in self._cut and task.get_loop() is loop:
                self._cut.add(task)
                task.cancel()
        loop.call_later(self.sweep_seconds, self._sweep_due)


# -- middleware ------------------------------------------------------------------


class DrainUnreadBody:
    """Reads and discards what a route left of the request body before the answer goes.

    An error answered before the body was read (413, 415, 404 ...) would otherwise
    close a connection whose client is still sending: the unread bytes make the kernel
    reset it, and a client that reads only after sending (urllib) sees the reset, not
    the answer. The drain is bounded by DISCARD_MAX_BYTES and DISCARD_MAX_SECONDS;
    past either the answer says `Connection: close`. An answer that says it already (a
    408 from BodyReader, whose client has not sent its body in time) is not drained.
    """

    async def process_response(self, req, resp, resource, req_succeeded) -> None:
        length = req.content_length
        if length == 0 or (length is None and req.get_header("Transfer-Encoding") is None):
            return
        stream = req.stream
        if stream.eof or resp.get_header("Connection") == "close":
            return  # nothing left, or the connection closes unread (BodyTimeout)
        if length is not None and length > DISCARD_MAX_BYTES:
            resp.set_header("Connection", "close")
            return
        if not await _discard(stream):
            resp.set_header("Connection", "close")


async def _discard(stream) -> bool:
    """Read and drop the rest of `stream`; False when a bound stopped it first."""
    discarded = 0
    try:
        async with asyncio.timeout(DISCARD_MAX_SECONDS):
            while discarded <= DISCARD_MAX_BYTES:
                chunk = await stream.read(_CHUNK)
                if not chunk:
                    return True
                discarded += len(chunk)
    except TimeoutError:
        return False
    return False


class RefuseQueryParameters:
    """No route takes query parameters: one is refused by name, not silently ignored."""

    async def process_resource(self, req, resp, resource, params) -> None:
        if resource is not None and req.query_string:
            names = sorted({part.split("=", 1)[0] for part in req.query_string.split("&")})
            raise InvalidInput(
                f"{req.path} takes no query parameters; got {', '.join(map(repr, names))}"
            )
