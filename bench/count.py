"""Capture's cost counted rather than timed: instructions, cache misses (L1 and L2) and
branch mispredictions a request, capture off and on, under valgrind's callgrind.

On a shared virtual machine the wall clock of one server moves by more than the 5% the
capture target allows between runs seconds apart; callgrind counts the instructions a
process executes and simulates its caches (the first level, and the machine's L2 in place
of the last: `second_level_cache`) and branch predictors, which gives the same counts
whatever else the machine is doing (valgrind user manual, "Callgrind: a call-graph
generating cache and branch prediction profiler"). Where the server's core is the limit,
instructions off over on is the throughput capture on keeps, as far as a miss costs no
more with capture than without: the L2 misses say how far that holds.

Each count is of one process (`bench.counted`) that builds the service's ASGI app
(`service.app.create_app`: the model and its batch-capable copy loaded as a deploy loads
them, a bearer token on every request, the model on the event loop), warms it up on every
row, then sends `requests` of one row and stops. Only those requests are counted: the
process runs them through `sys.call_tracing`, and callgrind collects events only inside
the C function that makes that call (`--toggle-collect`), so start-up and shutdown are
left out exactly. Collection is per thread: only the event loop's thread is counted, so
the model must run on it (bench.run checks that the service would put it there) and
capture's upload thread (here a sink that keeps nothing) is left out. uvicorn is left out
too: its work is the same with capture off and on, so the ratio here is the lower bound
of the served one. With capture on, the measured requests' records form one part, closed
and handed to the sink before the counted phase ends (at full load a part holds up to
10,000 records: its fixed work, about 31,000 instructions, is charged here to 512
requests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.bodies import Body
from bench.counted import CONCURRENCY, CountError

# The single-image rows the capture target is on (bench.run's row names).
ROWS = ("predict single", "v2 json single", "v2 binary single")
# Counted processes a measure starts: one a row, capture off and on.
RUNS = 2 * len(ROWS)
# A counted process that has not ended by then is stopped (CountError).
TIMEOUT_SECONDS = 900
# callgrind's events (`--cache-sim=yes --branch-sim=yes`) the report shows.
EVENTS = {
    "Ir": "instructions",
    "I1mr": "L1 instruction cache misses",
    "D1mr": "L1 data cache read misses",
    "D1mw": "L1 data cache write misses",
    "ILmr": "last-level instruction misses",
    "DLmr": "last-level data read misses",
    "DLmw": "last-level data write misses",
    "Bcm": "conditional branches mispredicted",
    "Bim": "indirect branches mispredicted",
}
# Where Linux describes the first CPU's caches (sysfs cacheinfo: "What:
# /sys/devices/system/cpu/cpuX/cache/indexY/" in the kernel's ABI documentation).
CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
# The table's name for the last level callgrind simulates when this machine's L2 cannot
# stand in for it.
VALGRINDS_LAST_LEVEL_LABEL = "valgrind's own choice (the machine's last level)"
# The C function `sys.call_tracing` calls its argument through: events are collected only
# while it runs, and the counted process sends its measured requests through it.
COUNTED_FUNCTION = "_PyEval_CallTracing"
VALGRIND_ARGV = [
    "valgrind",
    "-q",  # valgrind's own summary would bury the process's error line
    "--tool=callgrind",
    "--collect-atstart=no",
    f"--toggle-collect={COUNTED_FUNCTION}",
    "--cache-sim=yes",
    "--branch-sim=yes",
]
# Whatever could make two runs of one program count differently: numpy's BLAS threads
# (idle threads spin a different number of times each run) and str hashing.
DETERMINISTIC_ENV = {"OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@dataclass(frozen=True)
class Cache:
    """A cache's geometry as valgrind's `--LL=<size>,<associativity>,<line size>` takes it."""

    size: int  # bytes
    ways: int
    line: int  # bytes

    @property
    def option(self) -> str:
        return f"--LL={self.size},{self.ways},{self.line}"

    def __str__(self) -> str:
        return f"{self.size // 1024:,} KiB, {self.ways}-way, {self.line} B lines"


def second_level_cache(caches: Path = CPU_CACHES) -> Cache | None:
    """This machine's L2 (its first CPU's unified level-2 cache, read from sysfs), or None
    when it has none that sysfs describes or valgrind could simulate (the number of sets and
    the line size must be powers of two, lines at least 16 B and the cache larger than one:
    valgrind refuses other geometries).

    callgrind simulates two levels and takes the machine's last one for the second (an L3
    shared by every core, commonly tens of MiB, which the counted process's working set
    fits); the L2 in its place makes a last-level miss an access the core's own L2 could not
    serve, which waits for the L3 (tens of cycles) or memory."""
    for index in sorted(caches.glob("index*")):
        try:
            level, kind, size, ways, line = (
                (index / name).read_text().strip()
                for name in (
                    "level",
                    "type",
                    "size",
                    "ways_of_associativity",
                    "coherency_line_size",
                )
            )
        except OSError:
            continue
        if level != "2" or kind != "Unified" or not size.endswith("K"):
            continue
        cache = Cache(int(size[:-1]) * 1024, int(ways), int(line))
        if cache.ways < 1 or cache.line < 16 or not _power_of_two(cache.line):
            continue
        sets, remainder = divmod(cache.size, cache.ways * cache.line)
        if not remainder and _power_of_two(sets) and cache.size > cache.line:
            return cache
    return None


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class CountedRow:
    """One row's events a request (callgrind's names, EVENTS), capture off and on;
    `last_level`: the cache callgrind simulated as the last level."""

    row: str
    requests: int
    off: dict[str, float]
    on: dict[str, float]
    last_level: str

    def on_over_off(self, event: str) -> float:
        """Capture on's count a request over capture off's (above 1: capture adds)."""
        return self.on[event] / self.off[event]

    @property
    def throughput_ratio(self) -> float:
        """Instructions off over on: the throughput capture on keeps where the core is the limit."""
        return self.off["Ir"] / self.on["Ir"]

    def as_dict(self) -> dict:
        """The row as JSON: its fields and its throughput ratio."""
        return {**asdict(self), "throughput_ratio": self.throughput_ratio}


def worst_throughput_ratio(rows: dict[str, CountedRow] | None) -> float | None:
    """The lowest throughput ratio of `rows` (None: not counted)."""
    return min((row.throughput_ratio for row in rows.values()), default=None) if rows else None


def table(rows: dict[str, CountedRow]) -> str:
    """Each row's events a request, capture off and on, as a Markdown table."""
    some = next(iter(rows.values()))
    lines = [
        f"| counted a request (callgrind; {some.requests:,} requests, {CONCURRENCY} at a "
        f"time, in process; last level: {some.last_level}) | event | capture off | capture on "
        "| on / off |",
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

    `env`: the service's settings (bench.run.service_env) with INFERENCE_OFFLOAD=never;
    `expected`: raw onnxruntime's classes of the bodies' images. Raises CountError when
    valgrind is missing or a counted process fails."""
    require_valgrind()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = _write_spec(workdir, {row: bodies[row] for row in ROWS}, expected)
    jobs = [(row, capture) for row in ROWS for capture in ("off", "on")]
    l2 = second_level_cache()
    options = [l2.option] if l2 else []
    last_level = f"this machine's L2, {l2}" if l2 else VALGRINDS_LAST_LEVEL_LABEL

    def count(job: tuple[str, str]) -> dict[str, float]:
        row, capture = job
        out = workdir / f"{capture}-{row.replace(' ', '-')}.out"
        totals = _count(spec, out, capture, row, requests, env, options)
        return {event: totals[event] / requests for event in EVENTS}

    with ThreadPoolExecutor(max_workers=2) as pool:
        found = dict(zip(jobs, pool.map(count, jobs), strict=True))
    return {
        row: CountedRow(row, requests, found[row, "off"], found[row, "on"], last_level)
        for row in ROWS
    }


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
    spec: Path,
    out: Path,
    capture: str,
    row: str,
    sent: int,
    env: dict[str, str],
    options: list[str],
) -> dict[str, int]:
    """One counted process's totals (callgrind's summary of its measured requests);
    `options`: valgrind's, beside VALGRIND_ARGV."""
    argv = [*VALGRIND_ARGV, *options, f"--callgrind-out-file={out}"]
    argv += [sys.executable, "-m", "bench.counted", str(spec), capture, row, str(sent)]
    what = f"the counted run of {row} with capture {capture}"
    try:
        done = subprocess.run(
            argv,
            env={**env, **DETERMINISTIC_ENV},
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise CountError(f"{what} did not end within {TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-5:])
        raise CountError(f"{what} failed:\n{tail}")
    return summary(out)
