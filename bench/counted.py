"""The process `bench.count` counts: the service's ASGI app in process, warmed up, then
`requests` of one row sent through `sys.call_tracing` (the only part callgrind collects).

`python -m bench.counted BODIES off|on ROW REQUESTS` (BODIES: the JSON document
`bench.count.measure` writes; ROW: one of its rows) exits 0, or 1 with one error line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.bodies import Body, classes

if TYPE_CHECKING:
    import falcon.asgi
    from prometheus_client import CollectorRegistry

    from service.capture import PredictionRecorder

WARMUP_REQUESTS = 64
CONCURRENCY = 16
# How long the counted process waits for capture to store what it was given.
CAPTURE_WAIT_SECONDS = 10.0
# Parts never close by the clock: under valgrind a second holds a few dozen requests, and
# a part a second would weigh its fixed work a hundred times too much.
FLUSH_SECONDS = 1e6


class CountError(RuntimeError):
    """A counted run failed; the message says which and why."""


class DiscardSink:
    """A capture sink that keeps nothing (service.capture.sinks.Sink)."""

    url = "discard://"

    def put(self, key: str, body: bytes) -> bool:
        """Keeps nothing; True, as a sink that wrote the part says."""
        return True


def serve_requests(spec: dict, capture: str, row: str, requests: int) -> None:
    """Build the app from the environment's settings, warm it up on every row of `spec`
    (bench.count's bodies document: WARMUP_REQUESTS each), then send it `requests` of
    `row`, CONCURRENCY at a time, through `sys.call_tracing` (what a count collects: the
    requests, and with capture on their records encoded, compressed and handed to the
    sink), then stop it. Raises CountError when an answer or the capture is not as it
    must be, and whatever the service raises when it cannot start."""
    with tempfile.TemporaryDirectory(prefix="count-spool-") as spool:
        _serve_requests(spec, capture, row, requests, spool)


def _serve_requests(spec: dict, capture: str, row: str, requests: int, spool: str) -> None:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        served = loop.run_until_complete(_start(spec, capture, Path(spool)))
        body = served.bodies[row][0]
        statuses = sys.call_tracing(loop.run_until_complete, (_measured(served, body, requests),))
        served.answered += [(status, body.images) for status in statuses]
        loop.run_until_complete(served.lifespan.__aexit__(None, None, None))
    finally:
        _close(loop)
    served.check()


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what still runs on `loop` (the app's lifespan and capture's tasks, after a
    failure), let it unwind, then close the loop, as `asyncio.run` ends."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    asyncio.set_event_loop(None)
    loop.close()


@dataclass
class _Served:
    """The app between the counted process's phases, and what it answered so far."""

    capture: str  # "off" or "on"
    app: falcon.asgi.App
    lifespan: _Lifespan
    recorder: PredictionRecorder
    registry: CollectorRegistry
    bodies: dict[str, tuple[Body, list[int]]]
    answered: list[tuple[int, int]]  # (status, images) of every request

    def check(self) -> None:
        """Raises CountError unless every answer was 200 and, with capture on, every
        answered image was written exactly once."""
        statuses = {status for status, _ in self.answered}
        if statuses != {200}:
            raise CountError(f"the app answered statuses {sorted(statuses)}, not only 200")
        written = self.registry.get_sample_value("prediction_capture_records_written_total")
        images = sum(count for _, count in self.answered)
        if self.capture == "on" and written != images:
            raise CountError(f"capture wrote {written or 0:.0f} records of {images} answered")


async def _start(spec: dict, capture: str, spool: Path) -> _Served:
    """The app as a deploy builds it, started and warmed up on every row, capture idle."""
    from prometheus_client import CollectorRegistry

    from service.app import create_app
    from service.capture.interface import NullRecorder
    from service.capture.metrics import CaptureMetrics
    from service.capture.recorder import CaptureConfig, CaptureRecorder
    from service.config import Settings
    from service.memory import release_free_memory
    from service.startup import prepare

    settings = Settings.from_env()
    if settings.inference_offload != "never":
        raise CountError(
            f"INFERENCE_OFFLOAD={settings.inference_offload}: only the event loop's thread "
            "is counted, so the model must run on it (never)"
        )
    registry = CollectorRegistry()
    recorder = NullRecorder()
    if capture == "on":
        config = CaptureConfig(env=settings.app_env, spool_dir=spool, flush_seconds=FLUSH_SECONDS)
        recorder = CaptureRecorder(
            DiscardSink(), config, CaptureMetrics(registry), when_drained=release_free_memory
        )
    app = create_app(settings, model=prepare(settings), recorder=recorder)
    bodies = {name: _body(document) for name, document in spec.items()}
    served = _Served(capture, app, _Lifespan(app), recorder, registry, bodies, [])
    await served.lifespan.__aenter__()
    for body, expected in bodies.values():
        served.answered += await _warm_up(app, body, expected)
    await _captured(served)
    return served


async def _measured(served: _Served, body: Body, requests: int) -> list[int]:
    """The counted phase: `requests` of `body`, then their records stored."""
    statuses = await _post_concurrently(served.app, body, requests)
    await _captured(served)
    return statuses


async def _captured(served: _Served) -> None:
    """With capture on, every record so far encoded, compressed and in the sink."""
    if served.capture == "on" and not await served.recorder.wait_idle(CAPTURE_WAIT_SECONDS):
        raise CountError(
            f"capture did not store its records within {CAPTURE_WAIT_SECONDS:g} s "
            "(the sink that keeps nothing refused them)"
        )


def _body(document: dict) -> tuple[Body, list[int]]:
    """A row of the bodies document: its Body and raw onnxruntime's classes for it."""
    fields = {key: value for key, value in document.items() if key != "expected"}
    return Body(**{**fields, "data": Path(fields["data"]).read_bytes()}), document["expected"]


async def _warm_up(app, body: Body, expected: list[int]) -> list[tuple[int, int]]:
    """WARMUP_REQUESTS of `body`, the first answer checked: (status, images) of each."""
    status, answer, headers = await _post(app, body)
    if status != 200 or classes(body, answer, headers) != expected:
        raise CountError(f"{body.path} answered {answer[:200]!r}, not {expected}")
    rest = await _post_concurrently(app, body, WARMUP_REQUESTS - 1)
    return [(code, body.images) for code in (status, *rest)]


class _Lifespan:
    """The ASGI lifespan protocol around a block: start-up before, shutdown after."""

    def __init__(self, app) -> None:
        self._app = app
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._outbox: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        self._task = asyncio.create_task(self._app(scope, self._inbox.get, self._outbox.put))
        await self._step("startup")

    async def __aexit__(self, *exc_info) -> None:
        await self._step("shutdown")
        await self._task

    async def _step(self, phase: str) -> None:
        await self._inbox.put({"type": f"lifespan.{phase}"})
        answer = await self._outbox.get()
        if answer["type"] != f"lifespan.{phase}.complete":
            raise CountError(f"the app's {phase} failed: {answer}")


async def _post_concurrently(app, body: Body, count: int) -> list[int]:
    """`count` POSTs of `body`, CONCURRENCY clients at a time: their statuses."""
    share, rest = divmod(count, CONCURRENCY)

    async def client(sends: int) -> list[int]:
        return [(await _post(app, body))[0] for _ in range(sends)]

    answers = await asyncio.gather(*(client(share + (i < rest)) for i in range(CONCURRENCY)))
    return [status for statuses in answers for status in statuses]


async def _post(app, body: Body) -> tuple[int, bytes, dict[str, str]]:
    """One POST of `body` through the ASGI app: its status, body and headers.

    A bare ASGI call rather than falcon.testing's conductor: the client's own instructions
    are counted too, the same with capture off and on, so every one of them raises the
    denominator and flatters the ratio; this one does only what an ASGI server must."""
    headers = [(k.lower().encode(), v.encode()) for k, v in body.headers.items()]
    headers += [(b"content-length", str(len(body.data)).encode()), (b"host", b"count")]
    path, _, query = body.path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    inbox = [{"type": "http.disconnect"}, {"type": "http.request", "body": body.data}]
    start: dict = {}
    chunks: list[bytes] = []

    async def receive() -> dict:
        return inbox.pop() if len(inbox) > 1 else inbox[0]

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    answer_headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    return start.get("status", 0), b"".join(chunks), answer_headers


def main(argv: list[str]) -> int:
    """`python -m bench.count BODIES off|on ROW REQUESTS`: 0, or 1 with one error line."""
    from service.startup import failure_line

    spec_path, capture, row, requests = argv
    try:
        serve_requests(json.loads(Path(spec_path).read_text()), capture, row, int(requests))
    except Exception as exc:  # anything: one line, which the bench quotes
        line = str(exc) if isinstance(exc, CountError) else failure_line(exc)
        print(f"error: {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
