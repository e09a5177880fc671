"""HTTP around the routes: content codings as clients send them, bodies over the limit
from plain clients, query strings, and requests the server refuses before the app."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import struct
import urllib.error
import urllib.parse
import urllib.request
import zlib

import pytest

from service import http
from service.errors import BodyTimeout, InvalidInput, PayloadTooLarge
from service.http import decode_content

ZEROS = {"data": [0] * 784}
BODY = json.dumps(ZEROS).encode()


def post(client, body: bytes, encoding: str, content_type: str = "application/json"):
    return client.simulate_post(
        "/predict", body=body, headers={"Content-Type": content_type, "Content-Encoding": encoding}
    )


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def zlib_with_window(data: bytes, window_bits: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, window_bits)
    return compressor.compress(data) + compressor.flush()


def gzip_with_every_header_field(data: bytes) -> bytes:
    """A gzip member with FEXTRA, FNAME, FCOMMENT and FHCRC set (RFC 1952 section 2.3)."""
    head = b"\x1f\x8b\x08" + bytes([0x02 | 0x04 | 0x08 | 0x10]) + b"\0\0\0\0\0\xff"
    head += struct.pack("<H", 4) + b"ab\x00\x00" + b"body.json\0" + b"a comment\0"
    head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    trailer = struct.pack("<II", zlib.crc32(data), len(data))
    return head + raw_deflate(data) + trailer


# -- content codings that must decode ---------------------------------------------


VALID_BODIES = [
    pytest.param(gzip.compress(BODY), "gzip", id="gzip"),
    pytest.param(gzip.compress(BODY), "GZip", id="gzip-any-case"),
    pytest.param(gzip.compress(BODY), "x-gzip", id="x-gzip"),
    pytest.param(gzip.compress(BODY[:100]) + gzip.compress(BODY[100:]), "gzip", id="two-members"),
    pytest.param(
        b"".join(gzip.compress(BODY[i : i + 500]) for i in range(0, len(BODY), 500)),
        "gzip",
        id="many-members",
    ),
    pytest.param(gzip.compress(BODY) + b"\0" * 512, "gzip", id="zero-padding"),
    pytest.param(gzip_with_every_header_field(BODY), "gzip", id="header-fields"),
    pytest.param(zlib.compress(BODY), "deflate", id="deflate-zlib"),
    pytest.param(zlib.compress(BODY, 1), "deflate", id="deflate-zlib-fast"),
    pytest.param(zlib_with_window(BODY, 9), "deflate", id="deflate-zlib-small-window"),
    pytest.param(raw_deflate(BODY), "deflate", id="deflate-raw"),
    pytest.param(gzip.compress(zlib.compress(BODY)), "deflate, gzip", id="stacked"),
    pytest.param(BODY, "identity", id="identity"),
    pytest.param(BODY, "", id="empty-header"),
]


@pytest.mark.parametrize(("body", "encoding"), VALID_BODIES)
def test_every_valid_coding_decodes_to_the_same_prediction(client, body, encoding):
    result = post(client, body, encoding)
    assert result.status_code == 200, result.text
    assert (
        result.json["prediction"] == client.simulate_post("/predict", json=ZEROS).json["prediction"]
    )


# -- and bodies that must not --------------------------------------------------------


INVALID_BODIES = [
    pytest.param(gzip.compress(BODY)[:-4], "gzip", "truncated", id="gzip-without-trailer"),
    pytest.param(gzip.compress(BODY)[:40], "gzip", "truncated", id="gzip-cut"),
    pytest.param(gzip.compress(BODY) + b"garbage!", "gzip", "gzip member 1", id="gzip-trailing"),
    pytest.param(b"", "gzip", "empty", id="gzip-empty"),
    pytest.param(BODY, "gzip", "not valid gzip", id="not-gzip"),
    pytest.param(zlib.compress(BODY)[:-4], "deflate", "truncated", id="zlib-without-adler"),
    pytest.param(zlib.compress(BODY) + b"xx", "deflate", "after the end", id="zlib-trailing"),
    pytest.param(raw_deflate(BODY) + b"xx", "deflate", "after the end", id="raw-trailing"),
    pytest.param(b"\x78\x9c" + b"\xff" * 20, "deflate", "not valid zlib", id="zlib-garbage"),
]


@pytest.mark.parametrize(("body", "encoding", "message"), INVALID_BODIES)
def test_invalid_coded_bodies_are_400_saying_why(client, body, encoding, message):
    result = post(client, body, encoding)
    assert result.status_code == 400
    assert message in result.json["error"]


@pytest.mark.parametrize("encoding", ["br", "compress", "gzip, zstd"])
def test_unknown_codings_are_415_naming_them(client, encoding):
    result = post(client, BODY, encoding)
    assert result.status_code == 415
    assert encoding.split(", ")[-1] in result.json["error"]


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, br"])
def test_a_415_for_a_coding_says_in_accept_encoding_which_codings_are_accepted(client, encoding):
    """RFC 9110 section 12.5.3: a 415 for a content coding ought to carry Accept-Encoding."""
    result = post(client, BODY, encoding)
    assert result.status_code == 415
    assert result.headers["accept-encoding"] == "gzip, x-gzip, deflate, identity"
    assert "accept-encoding" not in post(client, BODY, "gzip", "text/csv").headers


def test_a_bomb_spread_over_members_stops_at_the_limit():
    member = gzip.compress(b" " * 100_000)
    with pytest.raises(Exception, match="larger than the limit"):
        decode_content(member * 30, ["gzip"], 1_000_000)


def test_decoding_stops_at_the_limit_inside_a_member():
    bomb = gzip.compress(b"0" * 50_000_000)
    with pytest.raises(Exception, match="larger than the limit"):
        decode_content(bomb, ["gzip"], 1_000_000)


def stored_deflate(first: int, checksum: bool) -> tuple[bytes, bytes]:
    """A raw deflate stream (RFC 1951) that opens with the byte `first` and a second byte
    that makes the pair a valid zlib header checksum or not (RFC 1950: a multiple of 31),
    and the bytes it decodes to.

    A non-final stored block whose padding bits (ignored by inflate) fill `first`, its
    LEN being the second byte, then an empty final fixed-Huffman block.
    """
    second = next(b for b in range(1, 256) if (((first << 8) | b) % 31 == 0) == checksum)
    data = bytes((i * 7) % 256 for i in range(second))
    return bytes([first, second, 0, second ^ 0xFF, 0xFF]) + data + b"\x03\x00", data


@pytest.mark.parametrize(
    ("first", "checksum"),
    [
        pytest.param(0x78, False, id="zlib-method-but-bad-check"),
        pytest.param(0x88, True, id="window-too-large-for-zlib"),
        pytest.param(0x70, True, id="check-fits-but-not-deflate-method"),
    ],
)
def test_raw_deflate_that_resembles_a_zlib_header_is_still_raw(first, checksum):
    """Only a header with method 8, a window of at most 32 KiB and a valid check is zlib."""
    body, data = stored_deflate(first, checksum)
    assert decode_content(body, ["deflate"], 1000) == data
    with pytest.raises(InvalidInput, match=r"the raw deflate \(RFC 1951\) body is truncated"):
        decode_content(body[:-2], ["deflate"], 1000)


def test_two_bytes_of_zlib_header_are_a_truncated_zlib_stream():
    with pytest.raises(InvalidInput, match=r"^the zlib \(RFC 1950\) body is truncated"):
        decode_content(b"\x78\x9c", ["deflate"], 1000)
    with pytest.raises(InvalidInput, match=r"^the body is not valid raw deflate \(RFC 1951\) data"):
        decode_content(b"\xff\xff", ["deflate"], 1000)


@pytest.mark.parametrize("coding", ["deflate", "gzip"])
def test_a_body_of_exactly_the_limit_decodes_and_one_byte_more_is_413(coding):
    plain = b"7" * 5000
    packed = zlib.compress(plain) if coding == "deflate" else gzip.compress(plain)
    assert decode_content(packed, [coding], 5000) == plain
    with pytest.raises(PayloadTooLarge, match="larger than the limit of 4999 bytes"):
        decode_content(packed, [coding], 4999)


class Stream:
    """What DrainUnreadBody reads: `chunks` then the end, or no end at all."""

    def __init__(self, chunks: list[bytes], ends: bool = True) -> None:
        self.chunks = list(chunks)
        self.ends = ends
        self.read_bytes = 0

    async def read(self, size: int | None = None) -> bytes:
        if self.chunks:
            if size is None:  # everything that is left, as Falcon's BoundedStream.read()
                chunk, self.chunks = b"".join(self.chunks), []
            else:
                chunk = self.chunks.pop(0)[:size]
            self.read_bytes += len(chunk)
            return chunk
        if not self.ends:
            await asyncio.sleep(3600)
        return b""


def test_the_drain_reads_the_rest_and_says_whether_it_reached_the_end(monkeypatch):
    stream = Stream([b"x" * 100, b"y" * 100])
    assert asyncio.run(http._discard(stream)) is True and stream.read_bytes == 200
    assert asyncio.run(http._discard(Stream([]))) is True
    monkeypatch.setattr(http, "DISCARD_MAX_BYTES", 250)
    endless = Stream([b"z" * 100] * 10)
    assert asyncio.run(http._discard(endless)) is False
    assert endless.read_bytes == 300  # stops at the first chunk past the bound
    exact = Stream([b"z" * 125, b"z" * 125])
    assert asyncio.run(http._discard(exact)) is True


def test_the_drain_gives_up_on_a_body_that_stops_coming(monkeypatch):
    monkeypatch.setattr(http, "DISCARD_MAX_SECONDS", 0.05)
    assert asyncio.run(http._discard(Stream([b"x" * 10], ends=False))) is False


def test_a_charset_other_than_utf8_is_415(client):
    result = client.simulate_post(
        "/predict", body=BODY, headers={"Content-Type": "application/json; charset=latin-1"}
    )
    assert result.status_code == 415
    assert "latin-1" in result.json["error"]
    utf8 = client.simulate_post(
        "/predict", body=BODY, headers={"Content-Type": "application/json; charset=UTF-8"}
    )
    assert utf8.status_code == 200


@pytest.mark.parametrize("path", ["/predict?verbose=1", "/predict?a=1&b"])
def test_query_parameters_are_400_naming_them(client, path):
    result = client.simulate_post(path, json=ZEROS)
    assert result.status_code == 400
    assert "'verbose'" in result.json["error"] or "'a', 'b'" in result.json["error"]


# -- plain clients against the real server ---------------------------------------------


@pytest.fixture(scope="module")
def url(server) -> str:
    return server.url


def urllib_post(url: str, data, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.integration
@pytest.mark.parametrize("megabytes", [5, 40])
def test_urllib_sending_a_body_over_the_limit_reads_the_413(url, megabytes):
    """urllib sends the whole body, asking to close the connection, before it reads the
    answer: the server must read what it refuses, or the client sees a reset."""
    body = b'{"data": [' + b"0," * (megabytes * 512 * 1024) + b"0]}"
    status, answer = urllib_post(url + "/predict", body, {"Content-Type": "application/json"})
    assert status == 413
    assert "limit is 4194304" in answer["error"]


@pytest.mark.integration
def test_urllib_sending_a_chunked_body_over_the_limit_reads_the_413(url):
    chunks = (b"0," * 65536 for _ in range(48))  # 6 MiB without a Content-Length
    status, answer = urllib_post(url + "/predict", chunks, {"Content-Type": "application/json"})
    assert status == 413
    assert "limit of 4194304" in answer["error"]


@pytest.mark.integration
def test_urllib_sending_a_large_body_to_a_refusing_route_reads_the_refusal(url):
    body = b"x" * (3 * 1024 * 1024)
    status, answer = urllib_post(url + "/predict", body, {"Content-Type": "text/csv"})
    assert status == 415
    assert "text/csv" in answer["error"]
    status, answer = urllib_post(url + "/nowhere", body, {"Content-Type": "application/json"})
    assert status == 404
    assert "/openapi.json" in answer["error"]
    status, answer = urllib_post(url + "/predict?x=1", body, {"Content-Type": "application/json"})
    assert status == 400
    assert "'x'" in answer["error"]


def raw_exchange(url: str, request: bytes) -> tuple[bytes, bytes]:
    parsed = urllib.parse.urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.integration
@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET\r\n\r\n", id="request-line"),
        pytest.param(b"GET /v2 HTTX/1.1\r\nHost: x\r\n\r\n", id="version"),
        pytest.param(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", id="length"
        ),
        pytest.param(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(b"POST /predict HTTP/1.1\r\nBad Header\r\n\r\n", id="header"),
    ],
)
def test_requests_refused_below_the_app_still_get_the_json_error(url, request_bytes):
    head, body = raw_exchange(url, request_bytes)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"].startswith("malformed HTTP request")


UNKNOWN_METHOD = (
    "the request does not start with a method this server implements; it implements GET, "
    "HEAD, OPTIONS and POST (method names are case-sensitive, RFC 9110 section 9.1)"
)


@pytest.mark.integration
@pytest.mark.parametrize(
    "request_line",
    [b"FOO /v2 HTTP/1.1", b"get /v2 HTTP/1.1", b"GARBAGE"],
    ids=["FOO", "get", "GARBAGE"],
)
def test_a_method_the_parser_does_not_know_is_400_naming_the_methods_served(url, request_line):
    """Not RFC 9110's 501 (section 9.1, a SHOULD): see service.errors.UnknownMethod."""
    head, body = raw_exchange(url, request_line + b"\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {"error": UNKNOWN_METHOD}


def header_fields(head: bytes) -> dict[bytes, bytes]:
    fields = (line.partition(b": ") for line in head.split(b"\r\n")[1:])
    return {name.lower(): value for name, _, value in fields}


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/v2/models/mnist-8", "/openapi.json", "/v2/models/nope"])
def test_head_on_the_real_server_sends_the_get_headers_and_no_body(url, path):
    """Falcon answers HEAD with the GET answer's Content-Length and no body; uvicorn then
    sends none either (RFC 9110 section 9.3.2)."""
    request = b"%s " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    get_head, get_body = raw_exchange(url, request % b"GET")
    head, body = raw_exchange(url, request % b"HEAD")
    assert body == b""
    assert head.split(b"\r\n")[0] == get_head.split(b"\r\n")[0]
    fields = header_fields(head)
    assert fields[b"content-length"] == str(len(get_body)).encode()
    assert fields[b"content-type"] == header_fields(get_head)[b"content-type"]


@pytest.mark.integration
def test_options_on_the_real_server_is_204_with_allow_and_no_content_headers(url):
    head, body = raw_exchange(
        url, b"OPTIONS /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
    fields = header_fields(head)
    assert fields[b"allow"] == b"OPTIONS, POST"
    assert b"content-type" not in fields and b"content-length" not in fields
    assert body == b""


@pytest.mark.integration
def test_a_refused_body_under_the_bounds_keeps_a_keep_alive_connection_usable(url):
    import http.client

    parsed = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    big = b"0" * (5 * 1024 * 1024)
    conn.request("POST", "/predict", body=big, headers={"Content-Type": "application/json"})
    first = conn.getresponse()
    assert first.status == 413 and json.loads(first.read())["error"]
    conn.request("POST", "/predict", body=BODY, headers={"Content-Type": "application/json"})
    second = conn.getresponse()
    assert second.status == 200 and "prediction" in json.loads(second.read())
    conn.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(zlib.compress(BODY), "the body is not valid gzip data: ", id="zlib-as-gzip"),
        pytest.param(
            gzip.compress(BODY) * 2 + b"garbage!",
            "the data after gzip member 2 is not valid gzip data: ",
            id="after-the-second-member",
        ),
        pytest.param(
            gzip.compress(BODY)[:-4],
            "the gzip body is truncated: its last member does not end",
            id="truncated",
        ),
        pytest.param(b"", "the body is empty, which is not gzip data", id="empty"),
    ],
)
def test_gzip_errors_say_which_part_is_wrong(body, message):
    with pytest.raises(InvalidInput) as raised:
        decode_content(body, ["gzip"], 1_000_000)
    assert str(raised.value).startswith(message)


# -- the drain middleware and the JSON 400 below the app, in this process


class DrainRequest:
    """What DrainUnreadBody reads of a request: its length, its headers and its stream."""

    def __init__(self, stream, content_length=None, headers=None, eof=False) -> None:
        self.content_length = content_length
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.stream = stream
        self.stream.eof = eof

    def get_header(self, name: str):
        return self.headers.get(name.lower())


class Answer:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    def set_header(self, name: str, value: str) -> None:
        self.headers[name] = value

    def get_header(self, name: str):
        return self.headers.get(name)


def drain(request) -> dict[str, str]:
    answer = Answer()
    asyncio.run(http.DrainUnreadBody().process_response(request, answer, None, True))
    return answer.headers


def test_the_drain_reads_what_the_route_left_of_a_body_and_keeps_the_connection():
    sized = Stream([b"x" * 100, b"y" * 50])
    assert drain(DrainRequest(sized, content_length=150)) == {}
    assert sized.read_bytes == 150
    chunked = Stream([b"x" * 70])
    assert drain(DrainRequest(chunked, headers={"Transfer-Encoding": "chunked"})) == {}
    assert chunked.read_bytes == 70


def test_the_drain_leaves_requests_without_a_body_or_with_the_body_read_alone():
    for request in (
        DrainRequest(Stream([b"never read"], ends=False), content_length=0),
        DrainRequest(Stream([b"never read"], ends=False)),  # no length, not chunked
        DrainRequest(Stream([b"never read"], ends=False), content_length=10, eof=True),
    ):
        assert drain(request) == {}
        assert request.stream.read_bytes == 0


def test_a_body_past_the_drain_bounds_is_left_unread_and_the_connection_closed(monkeypatch):
    announced = DrainRequest(Stream([b"x"]), content_length=http.DISCARD_MAX_BYTES + 1)
    assert drain(announced) == {"Connection": "close"}
    assert announced.stream.read_bytes == 0
    at_the_bound = DrainRequest(Stream([b"x" * 10]), content_length=http.DISCARD_MAX_BYTES)
    assert drain(at_the_bound) == {}
    monkeypatch.setattr(http, "DISCARD_MAX_BYTES", 100)
    endless = DrainRequest(Stream([b"x" * 60] * 5), headers={"Transfer-Encoding": "chunked"})
    assert drain(endless) == {"Connection": "close"}
    monkeypatch.setattr(http, "DISCARD_MAX_SECONDS", 0.05)
    stalled = DrainRequest(Stream([b"x"], ends=False), content_length=50)
    assert drain(stalled) == {"Connection": "close"}


class BodyRequest:
    """What BodyReader reads: the Content-Encoding and Content-Length headers and the stream."""

    def __init__(self, body: bytes, content_length=None, encoding=None, ends=True) -> None:
        self.content_length = content_length
        self.encoding = encoding
        self.stream = Stream([body] if ends else [], ends=ends)  # not ending: nothing comes

    def get_header(self, name: str):
        return self.encoding if name.lower() == "content-encoding" else None


def read_body(request, limit: int, timeout: float = 30.0) -> object:
    """BodyReader(limit, timeout).read(request), as a coroutine to run."""
    return http.BodyReader(limit, timeout).read(request)


def test_a_body_without_a_length_is_read_to_the_limit_and_one_byte_more_is_413():
    # Chunked bodies come without Content-Length: only the bytes read can tell.
    assert asyncio.run(read_body(BodyRequest(b"x" * 100), 100)) == b"x" * 100
    over = BodyRequest(b"x" * 101)
    with pytest.raises(PayloadTooLarge) as raised:
        asyncio.run(read_body(over, 100))
    assert str(raised.value) == "the body is larger than the limit of 100 bytes"


def test_an_announced_length_over_the_limit_is_413_before_reading():
    request = BodyRequest(b"x" * 10, content_length=101)
    with pytest.raises(PayloadTooLarge) as raised:
        asyncio.run(read_body(request, 100))
    assert str(raised.value) == "the body has 101 bytes; the limit is 100"
    assert request.stream.read_bytes == 0
    at_limit = BodyRequest(b"y" * 100, content_length=100)
    assert asyncio.run(read_body(at_limit, 100)) == b"y" * 100


def test_the_reader_undoes_the_codings_and_refuses_an_unknown_one():
    packed = BodyRequest(gzip.compress(b"z" * 300), encoding="gzip")
    assert asyncio.run(read_body(packed, 1000)) == b"z" * 300
    from service.errors import UnsupportedMediaType

    with pytest.raises(UnsupportedMediaType) as raised:
        asyncio.run(read_body(BodyRequest(b"{}", encoding="gzip, BR , zstd"), 1000))
    assert str(raised.value) == (
        "Content-Encoding br, zstd is not supported; use one of gzip, x-gzip, deflate, "
        "identity (or none)"
    )
    assert http.content_codings(" GZip , identity,,") == ["gzip", "identity"]
    assert http.content_codings(None) == []


def test_the_reader_reads_at_most_one_byte_past_the_limit():
    request = BodyRequest(b"x" * 10_000)
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(request, 100))
    assert request.stream.read_bytes == 101


def test_a_body_that_does_not_arrive_in_time_is_408_and_closes_the_connection():
    reader = http.BodyReader(100, 0.2)
    assert reader.sweep_seconds == 0.1
    stalled = BodyRequest(b"", content_length=100, ends=False)

    async def scenario() -> tuple[float, object, object]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BodyTimeout) as raised:
            await reader.read(stalled)
        took = loop.time() - started
        # The task was cancelled only to stop its read: it is not left cancelling.
        left = asyncio.current_task().cancelling()
        # A read that comes in time, after it, is not cut.
        on_time = await reader.read(BodyRequest(b"y" * 5))
        return took, (raised.value, left), on_time

    took, (error, left), on_time = asyncio.run(scenario())
    assert 0.2 <= took < 0.2 + 0.1 + 0.1  # the timeout, at most a sweep more
    assert left == 0 and on_time == b"y" * 5
    assert error.status == 408 and error.headers == {"Connection": "close"}
    assert str(error) == (
        "the request body did not arrive within 0.2 s of the service starting to read it, so "
        "this connection is closed: send the whole body within 0.2 s"
    )
    assert http.BodyReader(100, 30.0).sweep_seconds == http.BODY_SWEEP_SECONDS


def test_a_read_cancelled_from_outside_stays_cancelled():
    reader = http.BodyReader(100, 30.0)

    async def scenario() -> None:
        task = asyncio.create_task(reader.read(BodyRequest(b"", ends=False)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not reader._reading  # forgotten, and the sweep finds nothing to cut

    asyncio.run(scenario())


@pytest.mark.parametrize("sweep_first", [True, False], ids=["sweep-first", "cancel-first"])
def test_a_cancel_in_the_same_turn_as_the_cut_stays_a_cancel(sweep_first):
    reader = http.BodyReader(100, 30.0)

    async def scenario() -> str:
        task = asyncio.create_task(reader.read(BodyRequest(b"", ends=False)))
        await asyncio.sleep(0.01)
        reader._reading[task] -= 60  # its read started a minute ago: due for the cut
        if sweep_first:
            reader._sweep_due()
            task.cancel()
        else:
            task.cancel()
            reader._sweep_due()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except BodyTimeout:
            return "408"
        return "read"

    assert asyncio.run(scenario()) == "cancelled"
    assert not reader._reading and not reader._cut


def test_a_reader_cuts_reads_on_every_event_loop_it_serves():
    """One app, run by one event loop after another (tests do; uvicorn runs one a
    worker): a loop that ends with a read in progress and its sweep armed leaves the
    next loop's reads cut all the same."""
    reader = http.BodyReader(100, 0.2)

    async def left_reading() -> None:
        reading = asyncio.create_task(reader.read(BodyRequest(b"", ends=False)))
        await asyncio.sleep(0.01)  # the loop ends with the read in progress (cancelled
        assert not reading.done()  # by asyncio.run) and the sweep armed on it

    async def cut() -> str:
        try:
            await asyncio.wait_for(reader.read(BodyRequest(b"", ends=False)), 2)
        except BodyTimeout:
            return "408"
        return "read"

    asyncio.run(left_reading())
    assert asyncio.run(cut()) == "408"


def test_the_drain_leaves_a_connection_that_closes_unread():
    stalled = Stream([b"x"], ends=False)
    request = DrainRequest(stalled, content_length=50)
    answer = Answer()
    answer.set_header("Connection", "close")
    asyncio.run(http.DrainUnreadBody().process_response(request, answer, None, False))
    assert stalled.read_bytes == 0


def test_only_zero_bytes_pad_a_gzip_body():
    with pytest.raises(InvalidInput) as raised:
        decode_content(gzip.compress(BODY) + b"\0\0" + b"X" * 20, ["gzip"], 1_000_000)
    assert str(raised.value).startswith("the data after gzip member 1 is not valid gzip data: ")


def test_a_query_parameter_is_named_up_to_its_first_equals_sign(client):
    result = client.simulate_post("/predict?x=1=2&y", json=ZEROS)
    assert result.status_code == 400
    assert result.json == {"error": "/predict takes no query parameters; got 'x', 'y'"}
