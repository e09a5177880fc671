"""Turn a bench run into the printed table, the ratios, the targets and the JSON document."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import capture_read, count
from bench.run import CAPTURE_OFF, CAPTURE_ON, SINGLE_ROW, Measurement, Results
from bench.steal import StealGate

REFERENCE_CONCURRENCY = 16
MB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """One of the benchmark's targets and whether this run met it."""

    name: str
    value: float | None
    goal: str
    met: bool | None  # None: not measured in this run
    # The same measure for the framework ceiling's ideal (bench.falcon_app plus one
    # inference a request) in the service's place: below the goal, no Falcon service
    # of this body that runs the model once a request meets it.
    ceiling: float | None = None


def reference_concurrency(results: Results) -> int:
    levels = results.options.concurrency
    return REFERENCE_CONCURRENCY if REFERENCE_CONCURRENCY in levels else levels[len(levels) // 2]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _ideal(http: float | None, inference_seconds: float | None) -> float | None:
    """Requests a second of an app answering at `http` req/s that also runs the model once
    (raw onnxruntime's median time per image, `inference_seconds`)."""
    return 1 / (1 / http + inference_seconds) if http and inference_seconds else None


# The single-image row's contenders, as `Results.find` names them.
SINGLE_ROW_CONTENDERS = {
    "service": CAPTURE_OFF,
    "bare": None,
    "falcon": None,
    "fastapi": None,
}


def single_row_rounds(
    results: Results, c: int, value: Callable[[Measurement], float | None]
) -> list[dict[str, float | None]]:
    """The single-image row at level `c`, round by round: each contender's `value` in that
    round's run (None where it did not run) and, under "inference", raw onnxruntime's
    single-image seconds read just before the round (None where it was not read).

    Every contender runs this row in one set of alternated rounds (bench.run.bench_servers),
    so the i-th runs of all of them are seconds apart. Rounds that do not line up (a
    contender with another number of runs) are taken as one round of the level's figures.
    """
    found = {
        name: results.find(name, SINGLE_ROW, capture, c)
        for name, capture in SINGLE_ROW_CONTENDERS.items()
    }
    inference = results.single_image_seconds.get(c, [])
    counts = {len(m.run_list) for m in found.values() if m is not None}
    if counts == {len(inference)} or (len(counts) == 1 and not inference):
        count = counts.pop() if counts else 0
        return [
            {
                **{name: value(m.run_list[i]) if m else None for name, m in found.items()},
                "inference": inference[i] if inference else None,
            }
            for i in range(count)
        ]
    middle = statistics.median(inference) if inference else None
    return [{**{name: value(m) if m else None for name, m in found.items()}, "inference": middle}]


def _median_over(
    rounds: list[dict[str, float | None]], of: Callable[[dict[str, float | None]], float | None]
) -> float | None:
    """The median of `of` over the rounds; None when any round lacks it."""
    values = [of(r) for r in rounds]
    return statistics.median(values) if values and None not in values else None


def ratios(results: Results) -> dict[str, float | None]:
    """The service against its ceilings and its alternative, at the reference concurrency.

    The ideal, `1/(1/bare + t_inference)`, leaves out what every service of this body does
    on top of HTTP: decode 784 JSON numbers and route the request. The same formula over
    the framework ceiling (bench.falcon_app: Falcon and the JSON lane, a fixed answer) is
    the most a Falcon service of this body reaches running the model once a request
    (batching can do better); both are printed. A ratio whose rows did not run is None.

    The `*_per_cpu` variants divide requests by the server's own CPU seconds
    instead of wall-clock seconds: on a machine shared with other work they
    compare efficiency rather than whichever process the scheduler favoured.
    """
    c = reference_concurrency(results)
    ceiling = results.compute
    out: dict[str, float | None] = {"concurrency": c}
    for suffix, rate in (("", results.rps), ("_per_cpu", results.per_cpu)):
        rounds = single_row_rounds(results, c, RUN_RATES[suffix])

        def ideal(r: dict[str, float | None]) -> float | None:
            return _ideal(r["bare"], r["inference"])

        def falcon_ideal(r: dict[str, float | None]) -> float | None:
            # The same formula over the framework ceiling: the most of the ideal a Falcon
            # service that decodes this JSON body reaches running the model once a request.
            return _ideal(r["falcon"], r["inference"])

        out[f"ideal_predict_rps{suffix}"] = _median_over(rounds, ideal)
        out[f"service_over_bare{suffix}"] = _median_over(
            rounds, lambda r: _ratio(r["service"], r["bare"])
        )
        out[f"service_over_ideal{suffix}"] = _median_over(
            rounds, lambda r: _ratio(r["service"], ideal(r))
        )
        out[f"falcon_ideal_predict_rps{suffix}"] = _median_over(rounds, falcon_ideal)
        out[f"falcon_ideal_over_ideal{suffix}"] = _median_over(
            rounds, lambda r: _ratio(falcon_ideal(r), ideal(r))
        )
        out[f"service_over_falcon_ideal{suffix}"] = _median_over(
            rounds, lambda r: _ratio(r["service"], falcon_ideal(r))
        )
        out[f"service_over_fastapi{suffix}"] = _median_over(
            rounds, lambda r: _ratio(r["service"], r["fastapi"])
        )
        out[f"falcon_ideal_over_fastapi{suffix}"] = _median_over(
            rounds, lambda r: _ratio(falcon_ideal(r), r["fastapi"])
        )
        binary = rate("service", "v2 binary 256", "off", c)
        out[f"v2_binary_256_over_raw_onnxruntime{suffix}"] = _ratio(
            binary * 256 if binary is not None else None,
            ceiling.batch_images_per_second if ceiling else None,
        )
        for m in results.measurements:
            if m.contender == "service" and m.capture == "on" and m.concurrency == c:
                off = results.find("service", m.row, "off", c)
                out[f"capture_on_over_off{suffix}: {m.row}"] = paired_ratio(
                    m, off, RUN_RATES[suffix]
                )
    return out


# A run's requests a second: of wall-clock time, and of the server's CPU time.
RUN_RATES = {
    "": lambda m: m.result.requests_per_second,
    "_per_cpu": lambda m: m.requests_per_cpu_second,
}


def paired_ratio(
    on: Measurement | None, off: Measurement | None, value: Callable[[Measurement], float | None]
) -> float | None:
    """`value` with capture on over with capture off at one row and level: the median of
    the ratios of the alternated pairs of runs (on's i-th run over off's i-th), so a
    machine whose speed drifts between pairs moves both sides of each ratio alike. Levels
    measured once give the one ratio; None when either side is missing or not positive."""
    if on is None or off is None:
        return None
    same = len(on.run_list) == len(off.run_list)
    pairs = list(zip(on.run_list, off.run_list, strict=True)) if same else [(on, off)]
    ratios = [_ratio(value(a), value(b)) for a, b in pairs]
    if not ratios or None in ratios:
        return None
    return statistics.median(ratios)


def capture_cost(results: Results) -> tuple[float | None, dict[int, float | None]]:
    """Capture on against off on the single-image rows: the worst throughput ratio over
    every row and level, and at each level the worst p99 ratio (on / off); each ratio the
    median of its alternated pairs' (paired_ratio)."""
    throughput: list[float] = []
    tails: dict[int, float | None] = {}
    for c in results.options.concurrency:
        worst = None
        for row in results.measurements:
            if row.capture != "on" or row.concurrency != c or row.images_per_request != 1:
                continue
            off = results.find("service", row.row, "off", c)
            rate = paired_ratio(row, off, RUN_RATES[""])
            tail = paired_ratio(row, off, lambda m: m.result.p99_us)
            if rate is None or tail is None:
                continue
            throughput.append(rate)
            worst = tail if worst is None else max(worst, tail)
        tails[c] = worst
    return min(throughput, default=None), tails


def run_spread(results: Results) -> tuple[float, str, int] | None:
    """How far the machine alone moved this run: the largest ratio of the fastest to the
    slowest of one level's capture-off runs (the same server, row and level, seconds
    apart) over the single-image rows, with its row and level; None when no level ran in
    alternated runs. A capture ratio nearer its goal than this is within the noise."""
    spreads = [
        (max(rates) / min(rates), m.row, m.concurrency)
        for m in results.measurements
        if m.contender == "service"
        and m.capture == CAPTURE_OFF
        and m.images_per_request == 1
        and len(m.runs) > 1
        and min(rates := [run.result.requests_per_second for run in m.runs]) > 0
    ]
    return max(spreads, default=None)


def targets(results: Results, found: dict[str, float | None]) -> list[Target]:
    c = reference_concurrency(results)
    single = results.find("service", "predict single", "off", c)
    p99 = single.result.p99_us / 1000 if single else None
    capture, tails = capture_cost(results)
    ready = results.ready_seconds.get("service-capture-off")
    whole = [results.rss_bytes.get(f"service-capture-{capture}") for capture in ("off", "on")]
    rss = max((v for v in whole if v is not None), default=None)

    def at_least(
        name: str, value: float | None, goal: float, text: str, ceiling: float | None = None
    ) -> Target:
        return Target(name, value, text, None if value is None else value >= goal, ceiling)

    def at_most(name: str, value: float | None, goal: float, text: str) -> Target:
        return Target(name, value, text, None if value is None else value <= goal)

    return [
        *capture_read_targets(results, at_least, at_most),
        at_least(
            "predict single / ideal",
            found["service_over_ideal"],
            0.70,
            ">= 0.70",
            found["falcon_ideal_over_ideal"],
        ),
        at_least(
            "predict single / FastAPI",
            found["service_over_fastapi"],
            5.0,
            ">= 5",
            found["falcon_ideal_over_fastapi"],
        ),
        at_most(f"predict single p99 at c={c} (ms)", p99, 3.0, "< 3 ms"),
        at_least("capture on / off req/s, worst single-image row", capture, 0.95, ">= 0.95"),
        at_least(
            "capture on / off by instructions, worst single-image row",
            count.worst_throughput_ratio(results.counted),
            0.95,
            ">= 0.95",
        ),
        *(
            at_most(f"capture on / off p99 at c={level}, worst single row", tail, 1.2, "<= 1.2")
            for level, tail in tails.items()
        ),
        at_least(
            "v2 binary 256 / raw onnxruntime",
            found["v2_binary_256_over_raw_onnxruntime"],
            0.50,
            ">= 0.50",
        ),
        at_most("ready after start, local model (s)", ready, 1.0, "<= 1 s"),
        at_most(
            "service resident memory once quiet after the whole bench (MB)",
            rss / MB if rss else None,
            150.0,
            "< 150 MB",
        ),
    ]


def peak_capture_records_per_second(results: Results) -> float | None:
    """The most records a second one service task captured in this run: the capture-on
    row with the most images (one record each) a second."""
    rates = [
        m.result.requests_per_second * m.images_per_request
        for m in results.measurements
        if m.contender == "service" and m.capture == "on"
    ]
    return max(rates, default=None)


def capture_read_targets(results: Results, at_least, at_most) -> list[Target]:
    found = results.capture_read
    if found is None:
        return []
    before = found.row(capture_read.SEQUENTIAL)
    engine = found.row(capture_read.ENGINE)
    merge = next((row for row in found.rows if row.name.startswith("compaction, peak")), None)
    day = next((row for row in found.rows if row.name.startswith("report engine, compacted")), None)
    peak = peak_capture_records_per_second(results)
    return [
        at_least(
            "capture read: engine / sequential (records/s)",
            _ratio(engine.records_per_second, before.records_per_second)
            if engine and before
            else None,
            5.0,
            ">= 5",
        ),
        at_most(
            "capture read: objects per compacted task-hour",
            found.objects_per_task_hour,
            4,
            "<= 4",
        ),
        at_most(
            "capture read: compacted day / sequential hour (time)",
            _ratio(day.seconds, before.seconds) if day and before else None,
            1.0,
            "<= 1",
        ),
        at_least(
            "compaction / peak capture of one task (records/s)",
            _ratio(merge.records_per_second, peak) if merge else None,
            10.0,
            ">= 10",
        ),
    ]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _service_rounds(results: Results) -> int:
    """How many alternated rounds the levels of rows on several servers ran in (1: once)."""
    return max((len(m.runs) for m in results.measurements), default=0) or 1


def table(results: Results) -> str:
    """The Markdown table of every measured row."""
    lines = [
        "| contender | row | capture | c | req/s | images/s | p50 ms | p99 ms | non-2xx | errors "
        "| server CPU | wrk CPU | req/CPU-s | steal | capture hold |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for m in results.measurements:
        r = m.result
        lines.append(
            f"| {m.contender} | {m.row} | {m.capture or '-'} | {m.concurrency} "
            f"| {r.requests_per_second:,.0f} | {r.requests_per_second * m.images_per_request:,.0f} "
            f"| {r.p50_us / 1000:.2f} | {r.p99_us / 1000:.2f} | {r.non_2xx} | {r.socket_errors} "
            f"| {_fmt(m.server_cpu_share, '.0%')} | {_fmt(m.load_cpu_share, '.0%')} "
            f"| {_fmt(m.requests_per_cpu_second, ',.0f')} | {_fmt(m.steal_share, '.1%')} "
            f"| {_fmt(m.capture_hold_share, '.1%')} |"
        )
    return "\n".join(lines)


# What the table's less obvious columns mean, printed under it.
COLUMN_NOTES = (
    "server CPU / wrk CPU: share of one core each used during the run. A server below",
    "~90% with wrk near 100% was limited by the load generator (or by other work on the",
    "machine); req/CPU-s (requests per second of server CPU) is then the fairer figure.",
    "capture hold: share of the run capture's encoder held the service's event loop",
    "(its prediction_capture_encode_seconds), time the core gave no request.",
)


COUNT_NOTES = (
    "counted: the service's ASGI app in one process (no uvicorn: its work is the same either",
    "way), capture into a sink that keeps nothing; instructions and callgrind's simulated",
    "caches and branch predictors, the same whatever else the machine does. Instructions",
    "off over on is the throughput capture on keeps where the core is the limit and a miss",
    "costs no more with capture than without; an L2 miss (the last level when the table",
    "names the L2) waits tens of cycles for the L3 where an instruction takes under one, so",
    "where capture adds more of them than instructions, the wall clock reads less than the",
    "instruction ratio.",
)


def _head_lines(results: Results) -> list[str]:
    """The machine, how rows were measured, and the compute ceiling's readings."""
    m = results.machine
    parts = [
        f"machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}; server on core {results.options.server_core}, "
        f"wrk on core {results.options.load_core}; {results.options.seconds} s per level",
        *(
            [
                "rows on several servers (the single-image row on every contender, the "
                f"service's rows with capture off and on): each level {rounds} alternated "
                f"rounds of {math.ceil(results.options.seconds / rounds)} s runs; req/s over "
                "all of a level's runs, p50/p99 the median of the runs', ratios the median "
                "of the rounds' ratios"
            ]
            if (rounds := _service_rounds(results)) > 1
            else []
        ),
        "",
    ]
    ceiling = results.compute
    if ceiling is not None:
        parts += [
            "raw onnxruntime (1 intra-op thread): "
            f"{ceiling.single_seconds * 1e6:.1f} us per image (median), "
            f"{ceiling.single_runs_per_second:,.0f} single-image runs/s; "
            f"batch of {ceiling.batch_size}: {ceiling.batch_images_per_second:,.0f} images/s "
            f"({ceiling.batch_method}: {ceiling.copy_note})"
            + (f"; steal {ceiling.steal_share:.1%}" if ceiling.steal_share is not None else ""),
            "",
        ]
    c = reference_concurrency(results)
    if readings := results.single_image_seconds.get(c):
        parts += [
            f"raw onnxruntime's single image, read before each round of the single-image row "
            f"at c={c}: {' / '.join(f'{s * 1e6:.1f}' for s in readings)} us (each round's "
            "ideal takes its own)",
            "",
        ]
    return parts


def summary(results: Results) -> str:
    """Everything a reader needs: machine, ceilings, table, ratios and targets."""
    found = ratios(results)
    parts = _head_lines(results)
    parts += [
        table(results),
        "",
        *COLUMN_NOTES,
        *_ratio_lines(found),
        "",
        *_target_lines(targets(results, found)),
        *_spread_lines(run_spread(results), results),
        *_steal_lines(results.steal),
        "",
    ]
    ready = ", ".join(f"{k} {v:.2f} s" for k, v in results.ready_seconds.items())
    rss = ", ".join(f"{k} {v / MB:.0f} MB" for k, v in results.rss_bytes.items())
    if ready:
        parts.append(f"ready after start: {ready}")
    if rss:
        parts.append(f"resident memory after load: {rss}")
    if results.capture_read is not None:
        parts += ["", *_capture_read_lines(results, results.capture_read)]
    if results.counted:
        parts += ["", count.table(results.counted), *COUNT_NOTES]
    if results.capture_written is not None:
        w = results.capture_written
        parts.append(
            f"capture wrote {w['records']:,} records in {w['objects']} objects "
            f"({w['bytes'] / MB:.1f} MB) to the moto bucket"
        )
    return "\n".join(parts)


def _ratio_lines(found: dict[str, float | None]) -> list[str]:
    """The ratios whose rows ran (none: no lines), under their heading."""
    shown = {k: v for k, v in found.items() if k != "concurrency" and v is not None}
    if not shown:
        return []
    width = max(map(len, shown))
    lines = ["", f"ratios at c={found['concurrency']}:"]
    for key, value in shown.items():
        spec = ",.0f" if "ideal_predict_rps" in key else ".2f"
        lines.append(f"  {key:<{width}} {_fmt(value, spec)}")
    return lines


def _target_lines(found: list[Target]) -> list[str]:
    width = max((len(t.name) for t in found), default=0)
    lines = ["targets:"]
    for t in found:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t.met]
        if t.ceiling is not None:
            verdict += f" (framework ceiling {t.ceiling:.2f})"
        lines.append(f"  {t.name:<{width}} {_fmt(t.value, '.2f'):>8}  {t.goal:<8} {verdict}")
    return lines


def _spread_lines(spread: tuple[float, str, int] | None, results: Results) -> list[str]:
    if spread is None:
        return []
    ratio, row, level = spread
    line = (
        f"the machine's own moves: capture-off runs of one level differed by up to {ratio:.2f}x "
        f"({row} at c={level})"
    )
    if any(m.capture == CAPTURE_ON for m in results.measurements):
        line += "; a capture ratio nearer its goal than that is within the noise"
    return [line]


def _steal_lines(gate: StealGate | None) -> list[str]:
    """What the hypervisor took (bench.steal): how the runs were kept, how many were
    measured again, and how many were kept disturbed, whose wall-clock figures are then
    the machine's."""
    if gate is None or not gate.runs:
        return []
    runs = f"{gate.runs} run{'' if gate.runs == 1 else 's'}"
    limit = f"{gate.limit:.1%} of either core"
    if gate.budget_seconds <= 0:
        kept = f"{runs}, each measured once (a steal budget of 0 s: no waiting, no repeats)"
    else:
        unquiet = (
            f", {gate.unquiet_starts} attempt{'' if gate.unquiet_starts == 1 else 's'} "
            "started without (the budget had run out)"
            if gate.unquiet_starts
            else ""
        )
        kept = (
            f"{runs}, each started once the cores lost at most {limit} and measured again "
            f"while it lost more, within a budget ({gate.remeasured} measured again"
            f"{unquiet}; {gate.spent_seconds:.0f} s of the {gate.budget_seconds:.0f} s "
            "budget spent)"
        )
    lines = [f"steal (time the hypervisor took from the server and wrk cores): {kept}"]
    if gate.over_limit:
        lines.append(
            f"  {gate.over_limit} kept with more steal than {limit} (the table's steal "
            "column): their rows' wall-clock figures are the machine's, not the code's"
        )
    else:
        lines.append(
            f"  every run kept lost at most {limit} to steal (the cores' own speed may still "
            "move under other guests' load, which no guest counter shows)"
        )
    return lines


def _capture_read_lines(results: Results, found: capture_read.CaptureRead) -> list[str]:
    peak = peak_capture_records_per_second(results)
    ceiling = _fmt(found.ceiling(), ".2f")
    return [
        capture_read.table(found),
        f"objects per task-hour after compaction: {found.objects_per_task_hour}; "
        f"peak capture of one task in this run: {_fmt(peak, ',.0f')} records/s",
        "ceiling of any reader over the sequential one on this S3 server (sequential "
        f"seconds / the server's CPU seconds for the engine's GETs): {ceiling}",
    ]


def document(results: Results) -> dict:
    found = ratios(results)
    return {
        "machine": results.machine,
        "options": asdict(results.options),
        "compute": results.compute.as_dict() if results.compute else None,
        "single_image_seconds": results.single_image_seconds,
        "measurements": [m.as_dict() for m in results.measurements],
        "ready_seconds": results.ready_seconds,
        "rss_bytes": results.rss_bytes,
        "capture_written": results.capture_written,
        "capture_read": results.capture_read.as_dict() if results.capture_read else None,
        "counted": (
            {row: counted.as_dict() for row, counted in results.counted.items()}
            if results.counted
            else None
        ),
        "ratios": found,
        "targets": [asdict(t) for t in targets(results, found)],
        "capture_off_run_spread": run_spread(results),
        "steal": results.steal.as_dict() if results.steal else None,
    }


def write_json(results: Results, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document(results), indent=2) + "\n")
    return path
