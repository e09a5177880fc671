"""Capture's cost counted rather than timed: instructions, L1 cache misses and branch
mispredictions a request, capture off and on, under valgrind's callgrind.

On a shared virtual machine the wall clock of one server moves by more than the 5% the
capture target allows between runs seconds apart; callgrind counts the instructions a
process executes and simulates its first-level caches and branch predictors, which gives
the same counts whatever else the machine is doing (valgrind user manual, "Callgrind: a
call-graph generating cache and branch prediction profiler"). Where the server's core is
the limit, instructions off over on is the throughput capture on keeps.

Each count is of one process that builds the service's ASGI app (`service.app.create_app`,
the model and its batch-capable copy loaded as a deploy loads them, a bearer token on
every request, INFERENCE_OFFLOAD as the caller decided it outside valgrind), warms it up
with WARMUP_REQUESTS requests of each row's body, then sends `requests` of one row,
CONCURRENCY at a time, and stops it. Only that middle phase is
counted: the process runs it through `sys.call_tracing`, and callgrind collects events
only inside the C function that calls it (`--toggle-collect`), so start-up and shutdown
are left out exactly. (A difference of two processes, one that only warmed up, was not
exact: onnxruntime compresses something with zlib while it creates a session, and that
work moved by 11 to 20 million instructions between runs with other work on the
machine.) uvicorn is left out too: its work is the same with capture off and on, so the
ratio here is the lower bound of the served one. Capture on writes parts of PART_RECORDS
records into a sink that keeps nothing, through the recorder's own upload thread, and
the counted phase ends once every record is in the sink. Each process checks that every
answer was 200, that the first of each row named the expected class and, with capture
on, that every answered image was written exactly once.

`python -m bench.count BODIES off|on ROW REQUESTS` is that process (BODIES: the JSON
document `measure` writes; ROW: one of ROWS).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.bodies import Body, classes

# The single-image rows the capture target is on (bench.run's row names).
ROWS = ("predict single", "v2 json single", "v2 binary single")
WARMUP_REQUESTS = 64
# Counted processes a measure starts: one a row, capture off and on.
RUNS = 2 * len(ROWS)
CONCURRENCY = 16
PART_RECORDS = 1_000
# How long the counted process waits for capture to store what it was given.
CAPTURE_WAIT_SECONDS = 10.0
# Parts close when full, never by the clock: under valgrind a second holds a few dozen
# requests, and a part a second would weigh its fixed work a hundred times too much.
FLUSH_SECONDS = 1e6
# callgrind's events (`--cache-sim=yes --branch-sim=yes`) the report shows.
EVENTS = {
    "Ir": "instructions",
    "I1mr": "L1 instruction cache misses",
    "D1mr": "L1 data cache read misses",
    "D1mw": "L1 data cache write misses",
    "Bcm": "conditional branches mispredicted",
    "Bim": "indirect branches mispredicted",
}
# The C function `sys.call_tracing` calls its argument through: events are collected only
# while it runs, and the counted process sends its measured requests through it.
COUNTED_FUNCTION = "_PyEval_CallTracing"
VALGRIND_ARGV = [
    "valgrind",
    "--tool=callgrind",
    "--collect-atstart=no",
    f"--toggle-collect={COUNTED_FUNCTION}",
    "--cache-sim=yes",
    "--branch-sim=yes",
]
# Whatever could make two runs of one program count differently: numpy's BLAS threads
# (idle threads spin a different number of times each run) and str hashing.
DETERMINISTIC_ENV = {"OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


class CountError(RuntimeError):
    """A counted run failed; the message says which and why."""


@dataclass(frozen=True)
class CountedRow:
    """One row's events a request (callgrind's names, EVENTS), capture off and on."""

    row: str
    requests: int
    off: dict[str, float]
    on: dict[str, float]

    def on_over_off(self, event: str) -> float:
        """Capture on's count a request over capture off's (above 1: capture adds)."""
        return self.on[event] / self.off[event]

    @property
    def throughput_ratio(self) -> float:
        """Instructions off over on: the throughput capture on keeps where the core is the limit."""
        return self.off["Ir"] / self.on["Ir"]

    def as_dict(self) -> dict:
        return {**asdict(self), "throughput_ratio": self.throughput_ratio}


def worst_throughput_ratio(rows: dict[str, CountedRow] | None) -> float | None:
    """The lowest throughput ratio of `rows` (None: not counted)."""
    return min((row.throughput_ratio for row in rows.values()), default=None) if rows else None


def table(rows: dict[str, CountedRow]) -> str:
    """Each row's events a request, capture off and on, as a Markdown table."""
    some = next(iter(rows.values()))
    lines = [
        f"| counted a request (callgrind; {some.requests:,} requests, {CONCURRENCY} at a "
        "time, in process) | event | capture off | capture on | on / off |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows.values():
        for event, name in EVENTS.items():
            lines.append(
                f"| {row.row} | {name} | {row.off[event]:,.0f} | {row.on[event]:,.0f} "
                f"| {row.on_over_off(event):.3f} |"
            )
    return "\n".join(lines)


def require_valgrind() -> None:
    """Raises CountError naming the fix when valgrind is not installed."""
    if shutil.which("valgrind") is None:
        raise CountError(
            "valgrind is not installed: run `sudo apt-get install valgrind`, or name the "
            "other contenders with --only"
        )


def summary(path: Path) -> dict[str, int]:
    """The totals in a callgrind output file: its `events:` line's names with its
    `summary:` line's numbers, those it leaves out zero (callgrind's format omits trailing
    zeros: "summary: 0" when nothing was collected). Raises CountError when either line is
    missing or the numbers outnumber the names."""
    names = totals = None
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("summary:"):
            totals = [int(value) for value in line.split()[1:]]
    if names is None or totals is None or len(totals) > len(names):
        raise CountError(f"{path} is not a whole callgrind output file")
    return dict(zip(names, totals + [0] * (len(names) - len(totals)), strict=True))


def measure(
    bodies: dict[str, Body],
    expected: list[int],
    env: dict[str, str],
    requests: int,
    workdir: Path,
) -> dict[str, CountedRow]:
    """Count the rows of `bodies` (ROWS') capture off and on, two processes at a time (what
    is counted leaves start-up out, so no run's count depends on another's).

    `env`: the service's settings (bench.run.service_env); `expected`: raw onnxruntime's
    classes of the bodies' images."""
    require_valgrind()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = _write_spec(workdir, {row: bodies[row] for row in ROWS}, expected)
    jobs = [(row, capture) for row in ROWS for capture in ("off", "on")]

    def count(job: tuple[str, str]) -> dict[str, float]:
        row, capture = job
        out = workdir / f"{capture}-{row.replace(' ', '-')}.out"
        totals = _count(spec, out, capture, row, requests, env)
        return {event: totals[event] / requests for event in EVENTS}

    with ThreadPoolExecutor(max_workers=2) as pool:
        found = dict(zip(jobs, pool.map(count, jobs), strict=True))
    return {row: CountedRow(row, requests, found[row, "off"], found[row, "on"]) for row in ROWS}


def _write_spec(workdir: Path, bodies: dict[str, Body], expected: list[int]) -> Path:
    """Every row's body (bytes in a file beside it) and expected classes, as JSON."""
    document = {}
    for row, body in bodies.items():
        data = workdir / f"{row.replace(' ', '-')}.body"
        data.write_bytes(body.data)
        document[row] = {**asdict(body), "data": str(data), "expected": expected[: body.images]}
    spec = workdir / "bodies.json"
    spec.write_text(json.dumps(document))
    return spec


def _count(
    spec: Path, out: Path, capture: str, row: str, sent: int, env: dict[str, str]
) -> dict[str, int]:
    """One counted process's totals (callgrind's summary of its measured requests)."""
    argv = [*VALGRIND_ARGV, f"--callgrind-out-file={out}"]
    argv += [sys.executable, "-m", "bench.count", str(spec), capture, row, str(sent)]
    done = subprocess.run(
        argv, env={**env, **DETERMINISTIC_ENV}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        raise CountError(f"the counted run of {row} with capture {capture} failed:\n{tail}")
    return summary(out)


# -- the counted process -------------------------------------------------------------


class DiscardSink:
    """A capture sink that keeps nothing (service.capture.sinks.Sink)."""

    url = "discard://"

    def put(self, key: str, body: bytes) -> bool:
        return True


def serve_requests(spec: dict, capture: str, row: str, requests: int) -> None:
    """Build the app from the environment's settings, warm it up on every row of `spec`
    (bench.count's bodies document), then send it `requests` of `row` through
    `sys.call_tracing` (what a count collects: the requests, and with capture on their
    records encoded, compressed and handed to the sink), then stop it. Raises CountError
    when an answer or the capture is not as it must be."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        served = loop.run_until_complete(_start(spec, capture))
        body = served.bodies[row][0]
        statuses = sys.call_tracing(loop.run_until_complete, (_measured(served, body, requests),))
        served.answered += [(status, body.images) for status in statuses]
        loop.run_until_complete(served.lifespan.__aexit__(None, None, None))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    served.check(capture)


@dataclass
class _Served:
    """The app between the counted process's phases, and what it answered so far."""

    app: object
    lifespan: _lifespan
    recorder: object
    registry: object
    bodies: dict[str, tuple[Body, list[int]]]
    answered: list[tuple[int, int]]  # (status, images) of every request

    def check(self, capture: str) -> None:
        statuses = {status for status, _ in self.answered}
        if statuses != {200}:
            raise CountError(f"the app answered statuses {sorted(statuses)}, not only 200")
        written = self.registry.get_sample_value("prediction_capture_records_written_total")
        images = sum(count for _, count in self.answered)
        if capture == "on" and written != images:
            raise CountError(f"capture wrote {written or 0:.0f} records of {images} answered")


async def _start(spec: dict, capture: str) -> _Served:
    """The app as a deploy builds it, started and warmed up on every row, capture idle."""
    from prometheus_client import CollectorRegistry

    from service.app import create_app
    from service.capture.interface import NullRecorder
    from service.capture.metrics import CaptureMetrics
    from service.capture.recorder import CaptureConfig, CaptureRecorder
    from service.config import Settings
    from service.startup import prepare

    settings = Settings.from_env()
    registry = CollectorRegistry()
    recorder = NullRecorder()
    if capture == "on":
        config = CaptureConfig(
            env=settings.app_env,
            spool_dir=Path(tempfile.mkdtemp(prefix="count-spool-")),
            max_part_records=PART_RECORDS,
            flush_seconds=FLUSH_SECONDS,
        )
        recorder = CaptureRecorder(DiscardSink(), config, CaptureMetrics(registry))
    app = create_app(settings, model=prepare(settings), recorder=recorder)
    bodies = {name: _body(document) for name, document in spec.items()}
    served = _Served(app, _lifespan(app), recorder, registry, bodies, [])
    await served.lifespan.__aenter__()
    for body, expected in bodies.values():
        served.answered += await _warm_up(app, body, expected)
    await _captured(recorder)
    return served


async def _measured(served: _Served, body: Body, requests: int) -> list[int]:
    """The counted phase: `requests` of `body`, then their records stored."""
    statuses = await _post_concurrently(served.app, body, requests)
    await _captured(served.recorder)
    return statuses


async def _captured(recorder) -> None:
    """Every record so far encoded, compressed and in the sink (a capture-on recorder)."""
    wait_idle = getattr(recorder, "wait_idle", None)
    if wait_idle is not None and not await wait_idle(CAPTURE_WAIT_SECONDS):
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


class _lifespan:
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
    share, rest = divmod(count, CONCURRENCY)

    async def client(sends: int) -> list[int]:
        return [(await _post(app, body))[0] for _ in range(sends)]

    answers = await asyncio.gather(*(client(share + (i < rest)) for i in range(CONCURRENCY)))
    return [status for statuses in answers for status in statuses]


async def _post(app, body: Body) -> tuple[int, bytes, dict[str, str]]:
    """One POST of `body` through the ASGI app: its status, body and headers."""
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
    spec_path, capture, row, requests = argv
    try:
        serve_requests(json.loads(Path(spec_path).read_text()), capture, row, int(requests))
    except CountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
