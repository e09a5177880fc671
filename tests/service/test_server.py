"""The real server on 127.0.0.1: agreement with onnxruntime, tritonclient, graceful drain."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import threading
import time
import urllib.parse

import numpy as np
import pytest

from tests.conftest import HeldRequest, free_port
from tests.service.conftest import MNIST8_SHA256, Server, start_server
from tests.service.test_http import raw_exchange

pytestmark = pytest.mark.integration


def post(url: str, path: str, document: dict | bytes, connection=None) -> tuple[int, dict]:
    parsed = urllib.parse.urlparse(url)
    conn = connection or http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    body = document if isinstance(document, bytes) else json.dumps(document)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    body = json.loads(response.read())
    if connection is None:
        conn.close()
    return response.status, body


def test_served_predictions_agree_with_onnxruntime_on_1000_images(
    server, mnist_test_set, raw_argmax
):
    images, labels = mnist_test_set
    expected = raw_argmax(images)
    parsed = urllib.parse.urlparse(server.url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    single = [
        post(server.url, "/predict", {"data": image.reshape(-1).tolist()}, conn)[1]["prediction"]
        for image in images
    ]
    batched = []
    for start in range(0, len(images), 100):
        rows = images[start : start + 100].reshape(-1, 784).tolist()
        batched += post(server.url, "/predict", {"data": rows}, conn)[1]["predictions"]
    conn.close()
    assert single == expected
    assert batched == expected
    assert np.mean(np.array(single) == labels) > 0.98


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infers_in_both_modes(server, mnist_test_set, raw_argmax, binary):
    import tritonclient.http as triton

    images = mnist_test_set[0][:4].astype(np.float32).reshape(4, 1, 28, 28)
    client = triton.InferenceServerClient(urllib.parse.urlparse(server.url).netloc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist-8")
    metadata = client.get_model_metadata("mnist-8")
    assert metadata["inputs"][0]["name"] == "Input3"
    tensor = triton.InferInput("Input3", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    outputs = [triton.InferRequestedOutput("Plus214_Output_0", binary_data=binary)]
    result = client.infer("mnist-8", [tensor], outputs=outputs, request_id="triton-1")
    scores = result.as_numpy("Plus214_Output_0")
    assert scores.shape == (4, 10)
    assert scores.argmax(axis=1).tolist() == raw_argmax(images)
    assert result.get_response()["id"] == "triton-1"
    defaults = client.infer("mnist-8", [tensor])  # no outputs named: all, binary
    np.testing.assert_allclose(defaults.as_numpy("Plus214_Output_0"), scores)
    client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_classification_ranks_like_onnxruntime(
    server, mnist_test_set, raw_argmax, binary
):
    """Triton's classification extension: BYTES [batch, k], "<score>:<index>:<label>",
    highest first, the labels being the digits model.toml declares."""
    import tritonclient.http as triton

    images = mnist_test_set[0][:16].astype(np.float32).reshape(16, 1, 28, 28)
    client = triton.InferenceServerClient(urllib.parse.urlparse(server.url).netloc)
    assert "classification" in client.get_server_metadata()["extensions"]
    tensor = triton.InferInput("Input3", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    output = triton.InferRequestedOutput("Plus214_Output_0", binary_data=binary, class_count=3)
    result = client.infer("mnist-8", [tensor], outputs=[output])
    (described,) = result.get_response()["outputs"]
    assert described["datatype"] == "BYTES" and described["shape"] == [16, 3]
    classes = result.as_numpy("Plus214_Output_0")
    assert classes.shape == (16, 3)
    rows = [
        [(e.decode() if isinstance(e, bytes) else e).split(":") for e in row] for row in classes
    ]
    assert [int(row[0][1]) for row in rows] == raw_argmax(images)
    for row in rows:
        scores = [float(score) for score, _, _ in row]
        assert scores == sorted(scores, reverse=True)
        assert all(label == index for _, index, label in row)  # the digits: label = index
    client.close()


def test_sigterm_drains_in_flight_requests(mnist8_path, tmp_path, raw_argmax):
    """Requests the server has when SIGTERM comes are answered, then the process exits.
    They are held in flight until a second after the server stopped accepting connections
    (the last byte of each body sent only then), so the test does not depend on how fast
    the machine answers them, and a drain shorter than that second fails it."""
    server = start_server(
        {
            "MODEL_URL": str(mnist8_path),
            "MODEL_SHA256": MNIST8_SHA256,
            "MODEL_CACHE_DIR": str(tmp_path),
            "PREDICTION_LOG_URL": str(tmp_path),
        }
    )
    images = [[row % 100] * 784 for row in range(100)]
    held = [
        HeldRequest(server.url, "/predict", json.dumps({"data": images}).encode()) for _ in range(8)
    ]
    HeldRequest.confirm_received(server.url)
    server.process.send_signal(signal.SIGTERM)
    HeldRequest.wait_until_refused(server.url)
    time.sleep(1.0)  # in flight through the drain's start (uvicorn polls every 0.1 s)
    answers = [request.finish() for request in held]
    assert [status for status, _ in answers] == [200] * 8
    expected = raw_argmax(np.array(images, dtype=np.float32))
    assert all(json.loads(body)["predictions"] == expected for _, body in answers)
    # uvicorn re-raises the signal once it has drained, so the exit is "killed by SIGTERM"
    assert server.wait(timeout=30) in (0, -signal.SIGTERM)


def test_plain_uvicorn_with_the_services_protocol_serves_as_python_m_service_does(
    mnist8_path, mnist_test_set, raw_argmax, tmp_path
):
    """`uvicorn service.asgi:app --http service.protocol:HttpProtocol`, as the README shows
    it: uvicorn takes the protocol class by its import string, so a request uvicorn cannot
    parse gets the service's JSON 400 instead of uvicorn's plain text, and predictions
    answer."""
    port = free_port()
    command = ("uvicorn", "service.asgi:app", "--http", "service.protocol:HttpProtocol")
    server = start_server(
        {"MODEL_URL": str(mnist8_path), "MODEL_CACHE_DIR": str(tmp_path)},
        port=port,
        module=(*command, "--host", "127.0.0.1", "--port", str(port)),
    )
    try:
        head, body = raw_exchange(server.url, b"GET /v2 HTTX/1.1\r\nHost: x\r\n\r\n")
        images = mnist_test_set[0][:3]
        answers = [
            post(server.url, "/predict", {"data": image.reshape(-1).tolist()}) for image in images
        ]
    finally:
        server.stop()  # uvicorn re-raises SIGTERM once it has shut down: status -15
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["error"].startswith("malformed HTTP request")
    assert [status for status, _ in answers] == [200, 200, 200]
    assert [answer["prediction"] for _, answer in answers] == raw_argmax(images)


SLOW_BODY_LIMIT = 256 * 1024


def slow_body_server(mnist8_path, tmp_path, timeout_seconds: int) -> tuple[Server, bytes]:
    """`python -m service` with a body limit of SLOW_BODY_LIMIT and BODY_TIMEOUT_SECONDS
    `timeout_seconds`, and the head of a `/predict` announcing a body of the limit."""
    server = start_server(
        {
            "MODEL_URL": str(mnist8_path),
            "MODEL_CACHE_DIR": str(tmp_path),
            "PREDICTION_LOG_URL": "off",
            "MAX_BODY_BYTES": str(SLOW_BODY_LIMIT),
            "BODY_TIMEOUT_SECONDS": str(timeout_seconds),
        }
    )
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {SLOW_BODY_LIMIT}\r\n\r\n"
    ).encode()
    return server, head


def test_clients_that_send_their_bodies_slowly_hold_the_other_requests_back_only_so_long(
    mnist8_path, mnist_test_set, raw_argmax, tmp_path
):
    """Two clients announce bodies of MAX_BODY_BYTES and send a byte every 0.2 s: between
    them they hold the whole body budget. A small `/predict` (no more than the server
    reads ahead) is answered at once; a larger one waits for the budget until their reads
    are cut off at BODY_TIMEOUT_SECONDS, not until they stop sending; each of them gets
    the 408 in JSON with the connection closed."""
    server, head = slow_body_server(mnist8_path, tmp_path, timeout_seconds=2)
    parsed = urllib.parse.urlparse(server.url)
    slow = [socket.create_connection((parsed.hostname, parsed.port), timeout=10) for _ in "ab"]
    stop_sending = threading.Event()
    answered: dict[str, tuple[float, int, dict]] = {}
    cut: list[tuple[float, bytes]] = []

    def trickle(conn: socket.socket) -> None:
        conn.sendall(head)
        deadline = time.monotonic() + 8  # bounded: the old code would wait for this
        while not stop_sending.is_set() and time.monotonic() < deadline:
            try:
                conn.sendall(b" ")
            except OSError:  # the server closed the connection
                return
            time.sleep(0.2)

    def read_answer(conn: socket.socket) -> None:
        received = b""
        while chunk := conn.recv(65536):  # the server closes the connection after it
            received += chunk
        cut.append((time.monotonic(), received))

    def predict(name: str, images: np.ndarray) -> None:
        data = images.reshape(len(images), -1).tolist()
        status, answer = post(server.url, "/predict", {"data": data})
        answered[name] = (time.monotonic(), status, answer)

    images = mnist_test_set[0][:60]
    small, large = images[:1], images  # about 2.5 kB and 155 kB of JSON
    threads = [threading.Thread(target=trickle, args=(conn,)) for conn in slow]
    threads += [threading.Thread(target=read_answer, args=(conn,)) for conn in slow]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # both reads have started and hold the budget
        started = time.monotonic()
        requests = [
            threading.Thread(target=predict, args=("small", small)),
            threading.Thread(target=predict, args=("large", large)),
        ]
        for thread in requests:
            thread.start()
        for thread in requests:
            thread.join()
    finally:
        stop_sending.set()
        for thread in threads:
            thread.join()
        for conn in slow:
            conn.close()
        server.stop()
    first_cut = min(at for at, _ in cut)
    (small_at, small_status, small_answer) = answered["small"]
    (large_at, large_status, large_answer) = answered["large"]
    assert small_status == large_status == 200
    assert small_answer["predictions"] == raw_argmax(small)
    assert large_answer["predictions"] == raw_argmax(large)
    assert small_at < first_cut  # never waited for the budget
    assert first_cut <= large_at < started + 6  # waited for the cut, not for the 8 s
    for _, received in cut:
        head_bytes, _, body = received.partition(b"\r\n\r\n")
        assert head_bytes.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in head_bytes.lower()
        assert json.loads(body)["error"].startswith("the request body did not arrive within 2 s")


def test_a_client_cut_off_mid_body_reads_its_408_and_a_clean_end_while_still_sending(
    mnist8_path, tmp_path
):
    """RFC 9112 section 9.6: the service shuts its writing side after the 408 and reads
    what still comes, so a client (or a load balancer) still sending its body gets the
    answer and the connection's end, not a reset that can erase the answer."""
    server, head = slow_body_server(mnist8_path, tmp_path, timeout_seconds=1)
    parsed = urllib.parse.urlparse(server.url)
    received = b""
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as conn:
            conn.sendall(head)
            conn.settimeout(0.1)
            deadline = time.monotonic() + 5  # bounded: the cut comes after 1 to 2 s
            while b"\r\n\r\n" not in received and time.monotonic() < deadline:
                conn.sendall(b" " * 100)
                with contextlib.suppress(TimeoutError):
                    received += conn.recv(65536)
            conn.settimeout(5)
            while chunk := conn.recv(65536):  # the rest of the answer, then its end
                received += chunk
            for _ in range(5):  # still sending after the end: read and dropped, no reset
                conn.sendall(b" " * 1024)
                time.sleep(0.1)
            assert conn.recv(65536) == b""
    finally:
        server.stop()
    head_bytes, _, body = received.partition(b"\r\n\r\n")
    assert head_bytes.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"].startswith("the request body did not arrive within 1 s")
