"""HTTP around the routes: content codings as clients send them, bodies over the limit
from plain clients, query strings, and requests the server refuses before the app."""

from __future__ import annotations

import gzip
import json
import socket
import struct
import urllib.error
import urllib.parse
import urllib.request
import zlib

import pytest

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


def test_a_bomb_spread_over_members_stops_at_the_limit():
    member = gzip.compress(b" " * 100_000)
    with pytest.raises(Exception, match="larger than the limit"):
        decode_content(member * 30, ["gzip"], 1_000_000)


def test_decoding_stops_at_the_limit_inside_a_member():
    bomb = gzip.compress(b"0" * 50_000_000)
    with pytest.raises(Exception, match="larger than the limit"):
        decode_content(bomb, ["gzip"], 1_000_000)


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
        pytest.param(b"GARBAGE\r\n\r\n", id="request-line"),
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
