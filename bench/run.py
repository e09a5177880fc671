"""One bench run: the compute ceiling, the HTTP ceiling, the FastAPI alternative, the service.

Every server runs alone with uvicorn (one worker, httptools, uvloop) pinned to
the server core; wrk runs pinned to the load core. Before a row is timed its
request is sent once and the answer checked against raw onnxruntime's classes,
so a contender that answers fast but wrong cannot win.
"""

from __future__ import annotations

import math
import os
import platform
import re
import resource
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench import bodies, capture_read, compute, count, wrk
from bench.bodies import Body
from bench.moto import PREFIX, CaptureStore, start_store
from bench.processes import (
    ProcessError,
    Processes,
    Server,
    child_env,
    compile_bytecode,
    cpu_seconds,
    free_port,
    require_scheduling_tools,
    rss_bytes,
    wait_quiet,
)
from bench.steal import StealGate
from pipeline.batchable import BatchableCopy, NotBatchable, batchable_copy
from pipeline.datasets import load_dataset, scaled_inputs
from pipeline.reference import fetch_verified, load_reference
from service.auth import bearer_header
from service.config import ConfigError, Settings
from service.errors import ModelLoadError
from service.inference import INLINE_BELOW_SECONDS, probe_latency
from service.loader import load_model
from service.shutdown import MIN_STOP_TIMEOUT_SECONDS

# The capture-read rows' bucket, beside the capture-on rows' one on the same moto server.
READ_BUCKET = "bench-capture-read"
CAPTURE_OFF = "off"  # PREDICTION_LOG_URL=off: service.capture builds no recorder
CAPTURE_ON = "on"
# The capture-on service's histogram of its encoder's slices (service.capture.metrics).
CAPTURE_HOLD_SUM = "prediction_capture_encode_seconds_sum"
METRICS_TIMEOUT_SECONDS = 5.0
# STOP_TIMEOUT_SECONDS for the service: its smallest budget, inside the bench's wait
# (bench.processes.STOP_TIMEOUT_SECONDS) even when capture still has parts to upload.
SERVICE_STOP_SECONDS = MIN_STOP_TIMEOUT_SECONDS
UVICORN_FLAGS = ["--http", "httptools", "--loop", "uvloop", "--no-access-log"]


# What a run measures, in this order (`--only` picks some).
CONTENDERS = ("compute", "bare", "falcon", "fastapi", "service", "capture", "capture-read", "count")


class BenchError(RuntimeError):
    """The bench could not measure something; the message says what and why."""


@dataclass(frozen=True)
class Options:
    seconds: int = 5
    warmup_seconds: int = 1
    concurrency: tuple[int, ...] = (1, 16, 64)
    # A row on several servers (the single-image row on every contender, the service's rows
    # with capture off and on) runs each level as this many alternated rounds of runs (bare,
    # falcon, fastapi, off, on, then again), the level's seconds split between them.
    rounds: int = 3
    compute_seconds: float = 3.0
    batch_size: int = 256
    server_core: int = 0
    load_core: int = 1
    only: tuple[str, ...] = ()  # contenders to run; empty: all
    # A run whose cores lost more than this share of their time to the hypervisor (steal,
    # bench.steal) is measured again, and every run waits for quiet cores, within
    # steal_budget_seconds of waiting and measuring again for the whole bench.
    steal_limit: float = 0.01
    steal_budget_seconds: float = 600.0
    # Requests a counted run sends after its warm-up (bench.count).
    count_requests: int = 512


@dataclass(frozen=True)
class Measurement:
    contender: str  # "service" or a name in REFERENCE_APPS
    row: str
    capture: str | None  # "off" / "on" for the service
    concurrency: int
    images_per_request: int
    result: wrk.WrkResult
    server_cpu_seconds: float | None = None  # CPU the server used during the run
    load_cpu_seconds: float | None = None  # CPU wrk used: near 100% of a core, wrk is the limit
    # The alternated runs `result` combines (bench.wrk.combined), in the order they ran;
    # empty when the level ran once.
    runs: tuple[Measurement, ...] = ()
    # The largest share of its time the server or the load core lost to the hypervisor
    # during the run (bench.steal; the largest of the runs'); None: not read.
    steal_share: float | None = None
    # Seconds capture's encoder held the service's event loop during the run (the growth of
    # its prediction_capture_encode_seconds sum; the runs' added); None: capture off.
    capture_hold_seconds: float | None = None

    @property
    def server_cpu_share(self) -> float | None:
        """Fraction of one core the server got; well below 1 under load means others took it."""
        if self.server_cpu_seconds is None or not self.result.duration_us:
            return None
        return self.server_cpu_seconds / (self.result.duration_us / 1e6)

    @property
    def capture_hold_share(self) -> float | None:
        """Fraction of the run capture's slices held the event loop: the core's time that
        went to encoding and compressing the records instead of requests."""
        if self.capture_hold_seconds is None or not self.result.duration_us:
            return None
        return self.capture_hold_seconds / (self.result.duration_us / 1e6)

    @property
    def load_cpu_share(self) -> float | None:
        if self.load_cpu_seconds is None or not self.result.duration_us:
            return None
        return self.load_cpu_seconds / (self.result.duration_us / 1e6)

    @property
    def requests_per_cpu_second(self) -> float | None:
        """Requests per second of server CPU: less sensitive to a shared machine than req/s."""
        if not self.server_cpu_seconds:
            return None
        return self.result.requests / self.server_cpu_seconds

    def as_dict(self) -> dict:
        r = self.result
        return {
            "contender": self.contender,
            "row": self.row,
            "capture": self.capture,
            "concurrency": self.concurrency,
            "images_per_request": self.images_per_request,
            "requests_per_second": r.requests_per_second,
            "images_per_second": r.requests_per_second * self.images_per_request,
            "p50_ms": r.p50_us / 1000,
            "p90_ms": r.p90_us / 1000,
            "p99_ms": r.p99_us / 1000,
            "max_ms": r.max_us / 1000,
            "non_2xx": r.non_2xx,
            "socket_errors": r.socket_errors,
            "server_cpu_seconds": self.server_cpu_seconds,
            "server_cpu_share": self.server_cpu_share,
            "requests_per_cpu_second": self.requests_per_cpu_second,
            "load_cpu_share": self.load_cpu_share,
            "steal_share": self.steal_share,
            "capture_hold_seconds": self.capture_hold_seconds,
            "capture_hold_share": self.capture_hold_share,
            "wrk": asdict(r),
            "runs": [run.as_dict() for run in self.runs],
        }

    @property
    def run_list(self) -> tuple[Measurement, ...]:
        """The runs this level's figures come from: its alternated runs, or itself."""
        return self.runs or (self,)


def combined(runs: list[Measurement]) -> Measurement:
    """Alternated runs of one row and level as one measurement: requests and CPU added,
    percentiles the median run's (bench.wrk.combined); the runs kept in `runs`."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]

    def total(seconds: list[float | None]) -> float | None:
        return None if None in seconds else sum(seconds)

    return Measurement(
        first.contender,
        first.row,
        first.capture,
        first.concurrency,
        first.images_per_request,
        wrk.combined([m.result for m in runs]),
        total([m.server_cpu_seconds for m in runs]),
        total([m.load_cpu_seconds for m in runs]),
        tuple(runs),
        None if None in (shares := [m.steal_share for m in runs]) else max(shares),
        total([m.capture_hold_seconds for m in runs]),
    )


@dataclass
class Workload:
    """The model and the images every contender is asked about."""

    model_path: Path
    model_sha256: str
    model_name: str
    input_name: str
    output_name: str
    images: np.ndarray  # float32 [N,1,28,28]
    expected: list[int]  # raw onnxruntime's classes for `images`
    batched: BatchableCopy | None = None  # what a deploy would ship beside the model

    def service_bodies(self) -> dict[str, Body]:
        name, i, o = self.model_name, self.input_name, self.output_name
        return {
            "predict single": bodies.predict_json(self.images[:1]),
            "predict batch 64": bodies.predict_json(self.images[:64]),
            "v2 json single": bodies.v2_json(self.images[:1], name, i),
            "v2 binary single": bodies.v2_binary(self.images[:1], name, i, o),
            "v2 binary 256": bodies.v2_binary(self.images[:256], name, i, o),
        }


@dataclass
class Results:
    options: Options
    machine: dict
    compute: compute.ComputeCeiling | None = None
    # Raw onnxruntime's median single-image time (seconds) read before each round of the
    # single-image row, by level (connections): the ideal of each round.
    single_image_seconds: dict[int, list[float]] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    ready_seconds: dict[str, float] = field(default_factory=dict)
    rss_bytes: dict[str, int] = field(default_factory=dict)
    capture_written: dict[str, int] | None = None
    capture_read: capture_read.CaptureRead | None = None
    counted: dict[str, count.CountedRow] | None = None  # bench.count's rows
    steal: StealGate | None = None  # None: runs are measured once, their steal not read

    def find(
        self, contender: str, row: str, capture: str | None, concurrency: int
    ) -> Measurement | None:
        key = (contender, row, capture, concurrency)
        for m in self.measurements:
            if (m.contender, m.row, m.capture, m.concurrency) == key:
                return m
        return None

    def rps(self, contender: str, row: str, capture: str | None, concurrency: int) -> float | None:
        found = self.find(contender, row, capture, concurrency)
        return found.result.requests_per_second if found else None

    def per_cpu(
        self, contender: str, row: str, capture: str | None, concurrency: int
    ) -> float | None:
        found = self.find(contender, row, capture, concurrency)
        return found.requests_per_cpu_second if found else None


def load_workload(batch_size: int, workdir: Path | None = None) -> Workload:
    """The committed reference model and the first `batch_size` test images, verified.

    With `workdir`, also the batch-capable copy a deploy would ship (made and proven
    equal on the whole test set by `pipeline.batchable`), when the model needs one.
    """
    reference = load_reference(environ=os.environ)
    model_path, sha256 = fetch_verified(reference.model)
    dataset = load_dataset(
        fetch_verified(reference.test_images)[0],
        fetch_verified(reference.test_labels)[0],
        reference.test_format,
    )
    if len(dataset) < batch_size:
        raise BenchError(f"the test set has {len(dataset)} images; the bench needs {batch_size}")
    session = compute.session(model_path)
    item_shape = tuple(session.get_inputs()[0].shape[1:])
    scaled = scaled_inputs(dataset.images, np.dtype(np.float32), item_shape, reference.input_scale)
    images = scaled[:batch_size]
    batched = None
    if workdir is not None and session.get_inputs()[0].shape[0] == 1:
        try:
            batched = batchable_copy(model_path, scaled, workdir / "batch-capable.onnx")
        except NotBatchable as exc:
            print(f"bench: no batch-capable copy ({exc})", file=sys.stderr)
    return Workload(
        model_path=model_path,
        model_sha256=sha256,
        model_name=reference.name,
        input_name=session.get_inputs()[0].name,
        output_name=session.get_outputs()[0].name,
        images=images,
        expected=compute.reference_classes(model_path, images),
        batched=batched,
    )


def machine() -> dict:
    import onnxruntime

    cpu = "unknown"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


# -- one row -----------------------------------------------------------------


def post(url: str, body: Body, timeout: float = 10.0) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body.data, headers=body.headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def check_answer(server: Server, row: str, body: Body, expected: list[int]) -> None:
    try:
        status, answer, headers = post(server.url + body.path, body)
    except OSError as exc:
        server.check_alive()
        raise BenchError(f"{server.name} did not answer the {row!r} request: {exc}") from None
    if status != 200:
        raise BenchError(
            f"{server.name} answered {status} to the {row!r} request: {answer[:300]!r}"
        )
    if body.kind == "fixed":
        return
    got = bodies.classes(body, answer, headers)
    if got != expected[: body.images]:
        raise BenchError(
            f"{server.name} answered the {row!r} request with classes {got[:8]}..., "
            f"raw onnxruntime says {expected[:8]}..."
        )


@dataclass(frozen=True)
class PreparedRow:
    """A row ready to be timed on one server: its URL and wrk's Lua script for its body."""

    server: Server
    contender: str
    row: str
    capture: str | None
    images_per_request: int
    url: str
    script: Path


def prepare_row(
    server: Server,
    contender: str,
    row: str,
    body: Body,
    capture: str | None,
    workload: Workload,
    options: Options,
    workdir: Path,
) -> PreparedRow:
    """Write the row's body and script, check the server's answer against raw
    onnxruntime's, and warm the server up on it (options.warmup_seconds at the middle
    level). Raises BenchError when the answer is wrong."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{server.name} {row}".lower())
    body_path = workdir / f"{slug}.body"
    body_path.write_bytes(body.data)
    script = workdir / f"{slug}.lua"
    script.write_text(wrk.lua_script(body_path, body.headers))
    url = server.url + body.path

    check_answer(server, row, body, workload.expected)
    if options.warmup_seconds > 0:
        middle = options.concurrency[len(options.concurrency) // 2]
        wrk.run(
            url, script, connections=middle, seconds=options.warmup_seconds, core=options.load_core
        )
    return PreparedRow(server, contender, row, capture, body.images, url, script)


def measure_level(
    prepared: PreparedRow, connections: int, seconds: int, options: Options
) -> Measurement:
    """One wrk run of `seconds` at `connections`, with the CPU the server and wrk used."""
    server = prepared.server
    hold_before = capture_hold_seconds(prepared)
    cpu_before, load_before = cpu_seconds(server.pid), _children_cpu_seconds()
    result = wrk.run(
        prepared.url,
        prepared.script,
        connections=connections,
        seconds=seconds,
        core=options.load_core,
    )
    server.check_alive()
    cpu, load = cpu_seconds(server.pid) - cpu_before, _children_cpu_seconds() - load_before
    hold_after = capture_hold_seconds(prepared)
    return Measurement(
        prepared.contender,
        prepared.row,
        prepared.capture,
        connections,
        prepared.images_per_request,
        result,
        cpu,
        load,
        capture_hold_seconds=None if hold_before is None else hold_after - hold_before,
    )


def capture_hold_seconds(prepared: PreparedRow) -> float | None:
    """Seconds the capture-on service's encoder has held its event loop since it started:
    the sum of its `prediction_capture_encode_seconds` histogram on `/metrics`. None for
    every other server. Raises BenchError when the service does not export it."""
    if prepared.capture != CAPTURE_ON:
        return None
    url = prepared.server.url + "/metrics"
    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_SECONDS) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == CAPTURE_HOLD_SUM:
                return sample.value
    raise BenchError(f"{prepared.server.name}'s /metrics has no {CAPTURE_HOLD_SUM}")


def gated_level(
    prepared: PreparedRow,
    connections: int,
    seconds: int,
    options: Options,
    gate: StealGate | None,
    before_run: Callable[[PreparedRow], None],
) -> Measurement:
    """measure_level once the cores are quiet, and again while the run lost more than the
    gate's limit to steal (bench.steal), `before_run` and the server's own quiet before each
    repeat; with no gate, measured once."""
    before_run(prepared)
    if gate is None:
        return measure_level(prepared, connections, seconds, options)

    def settle() -> None:
        before_run(prepared)
        wait_quiet(prepared.server.pid)

    measured, lost = gate.measure(
        lambda: measure_level(prepared, connections, seconds, options), settle
    )
    return replace(measured, steal_share=lost)


def measure_levels(
    rows: list[PreparedRow],
    options: Options,
    before_run: Callable[[PreparedRow], None] = lambda row: None,
    gate: StealGate | None = None,
    round_start: Callable[[int], None] = lambda connections: None,
) -> list[list[Measurement]]:
    """Every prepared row at every level, in order: one prepared row runs once a level for
    `options.seconds`; several (the same row on several servers) run as `options.rounds`
    alternated runs a level of `ceil(options.seconds / options.rounds)` seconds each,
    `round_start` called (with the level's connections) before each round and
    `before_run` before every run, each run kept by `gate` (gated_level). Each row's
    level measurements, its runs combined."""
    rounds = max(1, options.rounds) if len(rows) > 1 else 1
    seconds = math.ceil(options.seconds / rounds)
    measured: list[list[Measurement]] = [[] for _ in rows]
    for connections in options.concurrency:
        runs: list[list[Measurement]] = [[] for _ in rows]
        for _ in range(rounds):
            round_start(connections)
            for prepared, its_runs in zip(rows, runs, strict=True):
                its_runs.append(
                    gated_level(prepared, connections, seconds, options, gate, before_run)
                )
        for its_levels, its_runs in zip(measured, runs, strict=True):
            its_levels.append(combined(its_runs))
            print(_progress(its_levels[-1]), file=sys.stderr, flush=True)
    return measured


def _children_cpu_seconds() -> float:
    """CPU used by finished children of this process (wrk, once it has been waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _progress(m: Measurement) -> str:
    r = m.result
    label = f"{m.contender} {m.row}" + (f" (capture {m.capture})" if m.capture else "")
    p99s = " ".join(f"{run.result.p99_us / 1000:.2f}" for run in m.runs)
    runs = f"  ({len(m.runs)} runs, p99s {p99s} ms)"
    return (
        f"  {label:<40} c={m.concurrency:<3} {r.requests_per_second:>9.0f} req/s  "
        f"p50 {r.p50_us / 1000:.2f} ms  p99 {r.p99_us / 1000:.2f} ms"
        f"  non-2xx {r.non_2xx}  errors {r.socket_errors}  server CPU {m.server_cpu_share or 0:.0%}"
        f"  wrk CPU {m.load_cpu_share or 0:.0%}"
        + (f"  steal {m.steal_share:.1%}" if m.steal_share is not None else "")
        + (f"  capture hold {m.capture_hold_share:.1%}" if m.capture_hold_share is not None else "")
        + (runs if m.runs else "")
    )


# -- contenders ----------------------------------------------------------------


def uvicorn_argv(app: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *UVICORN_FLAGS,
        "--log-level",
        "warning",
    ]


@dataclass(frozen=True)
class ReferenceApp:
    """A server the service is compared with, measured on the single-image row."""

    title: str
    target: str  # uvicorn's APP argument
    ready_path: str
    model: bool  # runs the model (MODEL_PATH), so its answers are checked


# In the order each round runs them: the HTTP ceiling, the framework ceiling, the alternative.
REFERENCE_APPS = {
    "bare": ReferenceApp("bare ASGI app (HTTP ceiling)", "bench.bare_app:app", "/", False),
    "falcon": ReferenceApp(
        "Falcon + the JSON lane, a fixed answer (framework ceiling)",
        "bench.falcon_app:app",
        "/health",
        False,
    ),
    "fastapi": ReferenceApp(
        "FastAPI + pydantic (the alternative)", "bench.fastapi_app:app", "/health", True
    ),
}


@dataclass
class UnderTest:
    """One started server: the service (capture off or on, its requests carrying its
    bearer token) or one of REFERENCE_APPS (`contender` its name, capture None)."""

    server: Server
    capture: str | None
    token: str | None
    contender: str = "service"
    # Its answers are the model's, checked against raw onnxruntime's; False: it answers a
    # fixed body (bare, falcon), sent what it expects.
    checked: bool = True
    rss: list[int] = field(default_factory=list)  # VmRSS after each row
    measurements: list[Measurement] = field(default_factory=list)

    def body(self, body: Body) -> Body:
        """`body` as this server is sent it."""
        if not self.checked:
            return bodies.fixed("/predict", body)
        return signed(body, self.token) if self.token else body


def start_reference(
    processes: Processes, workload: Workload, options: Options, name: str
) -> UnderTest:
    """Start `name` of REFERENCE_APPS on the server core."""
    app = REFERENCE_APPS[name]
    port = free_port()
    env = {"MODEL_PATH": str(workload.model_path), "INTRA_OP_THREADS": "1"} if app.model else {}
    server = processes.start(
        name,
        uvicorn_argv(app.target, port),
        env=child_env(env),
        port=port,
        ready_path=app.ready_path,
        core=options.server_core,
    )
    return UnderTest(server, None, None, contender=name, checked=app.model)


def service_env(workload: Workload, workdir: Path, tag: str, token: str) -> dict[str, str]:
    """The settings every run of the service here shares, as a deploy runs it: the model
    and the batch-capable copy the gate proved, one worker with one intra-op thread, and
    a bearer token in API_TOKENS (a deploy asks for one: require_authentication)."""
    return {
        "MODEL_URL": str(workload.model_path),
        "MODEL_SHA256": workload.model_sha256,
        "MODEL_NAME": workload.model_name,
        "MODEL_CACHE_DIR": str(workdir / f"cache-{tag}"),
        "APP_ENV": "local",
        "INTRA_OP_THREADS": "1",
        "WEB_CONCURRENCY": "1",
        "API_TOKENS": token,
        "MODEL_BATCHED_URL": str(workload.batched.path) if workload.batched else "",
        "MODEL_BATCHED_SHA256": workload.batched.sha256 if workload.batched else "",
    }


def start_service(
    processes: Processes,
    workload: Workload,
    workdir: Path,
    store: CaptureStore | None,
    core: int,
) -> UnderTest:
    """`python -m service` on `core`, capture off (store None) or on (into the moto bucket)."""
    capture = CAPTURE_ON if store is not None else CAPTURE_OFF
    port = free_port()
    token = secrets.token_urlsafe(32)
    env = {
        **service_env(workload, workdir, f"capture-{capture}", token),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        # The service's whole stop (drain, then capture flush) fits in the bench's wait.
        "STOP_TIMEOUT_SECONDS": str(SERVICE_STOP_SECONDS),
        "PREDICTION_LOG_URL": store.url if store is not None else CAPTURE_OFF,
        "PREDICTION_LOG_SPOOL_DIR": str(workdir / f"spool-{capture}"),
        **(store.env if store is not None else {}),
    }
    server = processes.start(
        f"service-capture-{capture}",
        [sys.executable, "-m", "service"],
        env=child_env(env),
        port=port,
        ready_path="/v2/health/ready",
        core=core,
    )
    return UnderTest(server, capture, token)


# The row every contender answers, and the one the throughput targets compare them on.
SINGLE_ROW = "predict single"


def bench_servers(
    processes: Processes,
    workload: Workload,
    results: Results,
    workdir: Path,
    references: list[str],
    stores: list[CaptureStore | None],
) -> None:
    """The reference apps named and the service with capture off (a None store) and/or on,
    measured a row at a time: the single-image row on every one of them, the service's
    other rows on the service alone; wherever a row runs on several servers, each level as
    `options.rounds` alternated rounds of runs (bare, falcon, fastapi, capture off, capture
    on, then again) of `ceil(options.seconds / options.rounds)` seconds each, and, with the
    compute ceiling measured, raw onnxruntime's single-image time read before each round of
    the single-image row (`Results.single_image_seconds`).

    The readings a ratio compares are then seconds apart, not minutes, and come in rounds:
    on a shared machine one server's rate drifted by up to 15% between runs minutes apart
    and p99 by 2x between runs seconds apart, more than the targets' margins, and
    onnxruntime's time a image by 1.7x within a day; bench.report takes the median of the
    rounds' ratios. Before every run each other server of the row is waited on until it
    has gone quiet (capture's last records encoded and stored), so no server works while
    another is measured.
    """
    options = results.options
    titles = [REFERENCE_APPS[name].title for name in references]
    titles += [f"the service, capture {CAPTURE_OFF if s is None else CAPTURE_ON}" for s in stores]
    print(f"bench: {'; '.join(titles)}: a row at a time in turn", file=sys.stderr, flush=True)
    refs = [start_reference(processes, workload, options, name) for name in references]
    services = [
        start_service(processes, workload, workdir, store, options.server_core) for store in stores
    ]
    for started in [*refs, *services]:
        if started.checked:
            results.ready_seconds[started.server.name] = started.server.ready_seconds
    read_single_image = single_image_reader(workload, results, [*refs, *services])
    rows = workload.service_bodies()
    if not services:
        rows = {SINGLE_ROW: rows[SINGLE_ROW]}
    for row, body in rows.items():
        single = row == SINGLE_ROW
        measure_row(
            [*refs, *services] if single else services,
            row,
            body,
            workload,
            options,
            workdir,
            results.steal,
            read_single_image if single else lambda connections: None,
        )
        for service in services:
            service.rss.append(rss_bytes(service.server.pid))
    stop_servers(processes, results, refs, services)


def single_image_reader(
    workload: Workload, results: Results, servers: list[UnderTest]
) -> Callable[[int], None]:
    """What runs before each round of the single-image row: raw onnxruntime's time on the
    server core (compute.SingleImage), once every server of the row has gone quiet (the
    last run's capture stored) and, with a gate, the cores too (bench.steal), appended to
    `results.single_image_seconds` under the level's connections. Reads nothing when the
    compute ceiling is not measured."""
    if results.compute is None:
        return lambda connections: None
    timer = compute.SingleImage(workload.model_path, workload.images, results.options.server_core)

    def quiet() -> None:
        for under_test in servers:
            wait_quiet(under_test.server.pid)

    def read() -> float:
        return timer.median_seconds(ROUND_COMPUTE_SECONDS)

    def before_round(connections: int) -> None:
        quiet()
        seconds = results.steal.measure(read, quiet)[0] if results.steal else read()
        results.single_image_seconds.setdefault(connections, []).append(seconds)

    return before_round


def stop_servers(
    processes: Processes, results: Results, refs: list[UnderTest], services: list[UnderTest]
) -> None:
    """Keep every server's measurements and memory, then stop it; ProcessError when a
    service does not exit cleanly on SIGTERM."""
    for ref in refs:
        results.measurements += ref.measurements
        results.rss_bytes[ref.server.name] = rss_bytes(ref.server.pid)
        processes.stop(ref.server)
    for service in services:
        name = service.server.name
        results.measurements += service.measurements
        results.rss_bytes[f"{name} after the first row"] = service.rss[0]
        results.rss_bytes[f"{name} as the last row ends"] = service.rss[-1]
        # What the service keeps once the load is over: its last requests answered and,
        # with capture on, their records encoded and stored (service.memory gives the heap
        # back then).
        wait_quiet(service.server.pid)
        results.rss_bytes[name] = rss_bytes(service.server.pid)
        code = processes.stop(service.server)
        if code not in (0, -15):
            raise ProcessError(
                f"{name} exited with {code} on SIGTERM:\n{service.server.log_tail()}"
            )


# Seconds of single-image runs read before each round of the single-image row.
ROUND_COMPUTE_SECONDS = 0.5


def measure_row(
    servers: list[UnderTest],
    row: str,
    body: Body,
    workload: Workload,
    options: Options,
    workdir: Path,
    gate: StealGate | None = None,
    round_start: Callable[[int], None] = lambda connections: None,
) -> None:
    """One row on every server, prepared on each, then measured in alternated runs
    (measure_levels, each run kept by `gate`, `round_start` before each round), each other
    server quiet before every run; each server's level measurements appended to its own."""

    def alone(server: Server) -> None:
        for other in servers:
            if other.server is not server:
                wait_quiet(other.server.pid)

    prepared = []
    for under_test in servers:
        alone(under_test.server)
        prepared.append(
            prepare_row(
                under_test.server,
                under_test.contender,
                row,
                under_test.body(body),
                under_test.capture,
                workload,
                options,
                workdir,
            )
        )
    levels = measure_levels(prepared, options, lambda row: alone(row.server), gate, round_start)
    for under_test, measured in zip(servers, levels, strict=True):
        under_test.measurements += measured


def require_tools(wanted: set[str]) -> None:
    """Stop before anything is measured when a tool the contenders need is missing."""
    wrk.require_wrk()
    require_scheduling_tools()
    if "count" in wanted:
        count.require_valgrind()


def run(options: Options, workdir: Path | None = None) -> Results:
    """Measure every contender; stop every started process whatever happens."""
    wanted = set(options.only or CONTENDERS)
    require_tools(wanted)
    results = Results(options, machine())
    results.steal = StealGate(
        (options.server_core, options.load_core),
        options.steal_limit,
        options.steal_budget_seconds,
    )
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        work = workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        print(
            "bench: compiling the servers' Python modules, as an image build does", file=sys.stderr
        )
        compile_bytecode()
        print("bench: loading the reference model and test images", file=sys.stderr)
        workload = load_workload(options.batch_size, work)
        if "compute" in wanted:
            print("bench: raw onnxruntime (compute ceiling)", file=sys.stderr, flush=True)
            ceiling, lost = results.steal.measure(
                lambda: compute.measure(
                    workload.model_path,
                    workload.images,
                    batch_size=options.batch_size,
                    batched_path=workload.batched.path if workload.batched else None,
                    seconds=options.compute_seconds,
                    core=options.server_core,
                ),
                settle=lambda: None,
            )
            results.compute = replace(ceiling, steal_share=lost)
        with Processes(work) as processes:
            store = None
            if {"capture", "capture-read"} & wanted:
                store = start_store(processes, core=options.load_core)
            references = [name for name in REFERENCE_APPS if name in wanted]
            stores = [None] if "service" in wanted else []
            if "capture" in wanted:
                stores.append(store)
            if references or stores:
                bench_servers(processes, workload, results, work, references, stores)
            if "capture" in wanted:
                time.sleep(0.2)
                results.capture_written = store.written()
            if "capture-read" in wanted:
                print("bench: capture read back and compacted (moto S3)", file=sys.stderr)
                store.client().create_bucket(Bucket=READ_BUCKET)
                results.capture_read = capture_read.measure(
                    f"s3://{READ_BUCKET}/{PREFIX}", store.env, server=store.server.pid
                )
        if "count" in wanted:
            results.counted = count_capture(workload, options.count_requests, work)
    return results


def count_capture(workload: Workload, requests: int, workdir: Path) -> dict[str, count.CountedRow]:
    """bench.count's rows: the service's single-image rows counted capture off and on."""
    print(
        f"bench: capture counted under callgrind ({len(count.ROWS)} rows, "
        f"{count.RUNS} runs, two at a time)",
        file=sys.stderr,
        flush=True,
    )
    token = secrets.token_urlsafe(32)
    bodies = {
        row: signed(body, token)
        for row, body in workload.service_bodies().items()
        if row in count.ROWS
    }
    settings = {
        **service_env(workload, workdir, "count", token),
        "PREDICTION_LOG_URL": CAPTURE_OFF,  # the counted process makes its own recorder
        # Under valgrind every inference takes many times longer, and auto would move the
        # model to the worker thread, which a count leaves out.
        "INFERENCE_OFFLOAD": "never",
    }
    # Where the service itself puts the model (INFERENCE_OFFLOAD=auto: on the event loop
    # when a row takes under 1 ms), measured here at full speed.
    try:
        seconds = probe_latency(load_model(Settings.from_env(settings)))
    except (ConfigError, ModelLoadError) as exc:
        raise count.CountError(f"the counted model: {exc}") from None
    if seconds >= INLINE_BELOW_SECONDS:
        raise count.CountError(
            f"one row of this model takes {seconds * 1000:.1f} ms, so the service runs it in "
            "its worker thread, which a count leaves out: name the other contenders with --only"
        )
    return count.measure(
        bodies, workload.expected, child_env(settings), requests, workdir / "count"
    )


def signed(body: Body, token: str) -> Body:
    """`body` with the bearer token the service under test asks for."""
    return replace(body, headers={**body.headers, **bearer_header(token)})
