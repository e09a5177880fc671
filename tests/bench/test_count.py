"""bench.count and bench.counted: capture's cost counted under callgrind, and the process
it counts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import count, counted, report
from bench.processes import child_env
from bench.run import CAPTURE_OFF, Options, Results, Workload, load_workload, service_env, signed
from tests.conftest import REPO, require_tool

TOKEN = "count-token-" + "x" * 32


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    return load_workload(256, tmp_path_factory.mktemp("workload"))


@pytest.fixture(scope="module")
def env(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    settings = service_env(workload, tmp_path_factory.mktemp("count"), "count", TOKEN)
    return child_env({**settings, "PREDICTION_LOG_URL": CAPTURE_OFF, "INFERENCE_OFFLOAD": "never"})


def bodies_for(
    workload: Workload, directory: Path, token: str = TOKEN, expected: list[int] | None = None
) -> Path:
    bodies = {
        row: signed(body, token)
        for row, body in workload.service_bodies().items()
        if row in count.ROWS
    }
    return count._write_spec(directory, bodies, expected or workload.expected)


def counted_process(spec: Path, capture: str, row: str, requests: int, env: dict[str, str]):
    return subprocess.run(
        [sys.executable, "-m", "bench.counted", str(spec), capture, row, str(requests)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("row", count.ROWS)
@pytest.mark.parametrize("capture", ["off", "on"])
def test_the_counted_process_serves_every_single_image_row(
    workload: Workload, env: dict[str, str], tmp_path: Path, row: str, capture: str
) -> None:
    done = counted_process(bodies_for(workload, tmp_path), capture, row, 40, env)
    assert (done.returncode, done.stdout) == (0, ""), done.stderr


def test_a_refused_request_fails_the_count_with_its_answer(
    workload: Workload, env: dict[str, str], tmp_path: Path
) -> None:
    spec = bodies_for(workload, tmp_path, token="not-the-token")
    refused = counted_process(spec, "on", "predict single", 8, env)
    assert refused.returncode == 1
    assert refused.stderr.startswith('error: /predict answered b\'{"error"')


def test_an_answer_of_another_class_fails_the_count(
    workload: Workload, env: dict[str, str], tmp_path: Path
) -> None:
    wrong = [(c + 1) % 10 for c in workload.expected]
    refused = counted_process(
        bodies_for(workload, tmp_path, expected=wrong), "off", "v2 binary single", 8, env
    )
    assert refused.returncode == 1
    assert f"not [{wrong[0]}]" in refused.stderr.splitlines()[-1]


def test_a_model_off_the_event_loop_cannot_be_counted(
    workload: Workload, env: dict[str, str], tmp_path: Path
) -> None:
    refused = counted_process(
        bodies_for(workload, tmp_path),
        "off",
        "predict single",
        8,
        {**env, "INFERENCE_OFFLOAD": "always"},
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: INFERENCE_OFFLOAD=always: only the event loop's")


def test_capture_that_cannot_store_fails_the_count(
    workload: Workload, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = json.loads(bodies_for(workload, tmp_path).read_text())
    monkeypatch.setattr(counted.DiscardSink, "put", _refuse)
    monkeypatch.setattr(counted, "CAPTURE_WAIT_SECONDS", 1.0)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(count.CountError, match=r"capture did not store its records within 1 s"):
        counted.serve_requests(spec, "on", "predict single", 8)


def _refuse(self, key: str, body: bytes) -> bool:
    raise OSError("the sink is down")


def called_under_callgrind(out: Path, code: str) -> dict[str, int]:  # needs `valgrind`
    subprocess.run(
        [*count.VALGRIND_ARGV, f"--callgrind-out-file={out}", sys.executable, "-c", code],
        check=True,
        capture_output=True,
    )
    return count.summary(out)


def test_only_what_runs_through_call_tracing_is_counted(tmp_path: Path, valgrind: str) -> None:
    loop = "sum(i * i for i in range({}))"
    counted = f"sys.call_tracing(exec, ({loop.format(10_000)!r},))"
    nothing = called_under_callgrind(tmp_path / "0.out", loop.format(50_000))
    alone = called_under_callgrind(tmp_path / "1.out", f"import sys; {counted}")
    after = called_under_callgrind(
        tmp_path / "2.out", f"import sys; {loop.format(50_000)}; {counted}"
    )
    in_a_thread = called_under_callgrind(
        tmp_path / "3.out",
        "import sys, threading; "
        f"t = threading.Thread(target=exec, args=({loop.format(10_000)!r},)); "
        "sys.call_tracing(lambda: (t.start(), t.join()), ())",
    )
    assert set(count.EVENTS) <= set(alone)
    # Collection is per thread: a loop another thread runs meanwhile is left out.
    assert in_a_thread["Ir"] < alone["Ir"] / 10
    assert nothing["Ir"] == 0
    # The interpreter's start and the loop before the call (five times the call's work) are
    # left out: the call alone, give or take the interpreter's state it meets.
    assert 0 < after["Ir"] == pytest.approx(alone["Ir"], rel=0.05)
    out = tmp_path / "1.out"
    lines = out.read_text().splitlines()
    out.write_text("\n".join(line for line in lines if not line.startswith("summary:")))
    with pytest.raises(count.CountError, match="not a whole callgrind output file"):
        count.summary(out)


@pytest.mark.parametrize("cache", [count.Cache(1024 * 1024, 16, 64), None])
def test_a_rows_events_are_its_runs_totals_over_the_requests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workload: Workload, cache: count.Cache | None
) -> None:
    runs = []

    def fake_count(spec, out, capture, row, sent, env, options):
        runs.append((row, capture, sent, tuple(options)))
        scale = {"off": 1000, "on": 1100}[capture] * (1 + count.ROWS.index(row))
        return {event: scale * sent for event in count.EVENTS}

    monkeypatch.setattr(count, "_count", fake_count)
    monkeypatch.setattr(count, "second_level_cache", lambda: cache)
    bodies = {row: workload.service_bodies()[row] for row in count.ROWS}
    rows = count.measure(bodies, workload.expected, {}, 64, tmp_path)
    # valgrind simulates the L2 as the last level when there is one it can simulate.
    options = ("--LL=1048576,16,64",) if cache else ()
    assert sorted(runs) == sorted((r, c, 64, options) for r in count.ROWS for c in ("off", "on"))
    assert rows["v2 json single"].off["Ir"] == 2000
    assert rows["v2 json single"].on["Bcm"] == 2200
    assert rows["v2 binary single"].throughput_ratio == pytest.approx(1 / 1.1)
    assert {row.last_level for row in rows.values()} == {
        "this machine's L2, 1,024 KiB, 16-way, 64 B lines"
        if cache
        else count.VALGRINDS_LAST_LEVEL_LABEL
    }


def describe(directory: Path, index: str, **files: str) -> None:
    (directory / index).mkdir(parents=True)
    for name, value in files.items():
        (directory / index / name).write_text(value + "\n")


def a_cache(level: str, kind: str, size: str, ways: str, line: str = "64") -> dict[str, str]:
    return {
        "level": level,
        "type": kind,
        "size": size,
        "ways_of_associativity": ways,
        "coherency_line_size": line,
    }


def test_the_last_level_simulated_is_the_machines_unified_l2(tmp_path: Path) -> None:
    caches = tmp_path / "cache"
    describe(caches, "index0", **a_cache("1", "Data", "48K", "12"))
    describe(caches, "index1", **a_cache("1", "Instruction", "32K", "8"))
    describe(caches, "index2", **a_cache("2", "Unified", "1024K", "16"))
    describe(caches, "index3", **a_cache("3", "Unified", "32768K", "16"))
    l2 = count.second_level_cache(caches)
    assert l2 == count.Cache(1024 * 1024, 16, 64)
    assert (l2.option, str(l2)) == ("--LL=1048576,16,64", "1,024 KiB, 16-way, 64 B lines")
    separate = tmp_path / "separate"  # an L2 for data only is not the last level of both
    describe(separate, "index2", **a_cache("2", "Data", "1024K", "16"))
    assert count.second_level_cache(separate) is None
    unreadable = tmp_path / "unreadable"  # sysfs leaves out what it does not know
    describe(unreadable, "index2", level="2", type="Unified", size="1024K")
    assert count.second_level_cache(unreadable) is None
    assert count.second_level_cache(tmp_path / "none") is None


@pytest.fixture
def valgrind() -> str:
    return require_tool(
        "valgrind is not installed: `sudo apt-get install valgrind` (.ci/setup.sh installs it)",
        shutil.which("valgrind"),
    )


@pytest.mark.parametrize(
    ("size", "ways", "line"),
    [
        ("1024K", "16", "64"),  # 1,024 sets
        ("2048K", "16", "64"),
        ("1280K", "10", "64"),  # 2,048 sets of 10 ways
        ("1280K", "16", "64"),  # 1,280 sets
        ("1024K", "16", "48"),  # a line size not a power of two
        ("1024K", "16", "8"),  # lines under 16 B
        ("1K", "1", "1024"),  # one line
        ("1024K", "0", "64"),  # no ways
    ],
)
def test_a_geometry_is_taken_exactly_when_valgrind_can_simulate_it(
    tmp_path: Path, valgrind: str, size: str, ways: str, line: str
) -> None:
    caches = tmp_path / "cache"
    describe(caches, "index2", **a_cache("2", "Unified", size, ways, line))
    taken = count.second_level_cache(caches)
    size_bytes = int(size[:-1]) * 1024
    done = subprocess.run(
        [
            valgrind,
            "--tool=callgrind",
            "--cache-sim=yes",
            f"--LL={size_bytes},{ways},{line}",
            f"--callgrind-out-file={tmp_path / 'true.out'}",
            "true",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (taken is not None) == (done.returncode == 0), done.stderr
    assert taken is None or taken.option == f"--LL={size_bytes},{ways},{line}"


def counted_row(row: str, off: float, on: float) -> count.CountedRow:
    events = dict.fromkeys(count.EVENTS, 1.0)
    return count.CountedRow(
        row, 1024, {**events, "Ir": off}, {**events, "Ir": on}, count.VALGRINDS_LAST_LEVEL_LABEL
    )


def test_the_counted_target_is_the_worst_rows_instructions_off_over_on() -> None:
    rows = {
        "predict single": counted_row("predict single", 640_000, 672_000),
        "v2 json single": counted_row("v2 json single", 850_000, 880_000),
    }
    assert rows["predict single"].throughput_ratio == pytest.approx(640 / 672)
    assert count.worst_throughput_ratio(rows) == pytest.approx(640 / 672)
    assert count.worst_throughput_ratio(None) is None

    results = Results(
        Options(only=("count",)), {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"}
    )
    results.counted = rows
    found = {t.name: t for t in report.targets(results, report.ratios(results))}
    verdict = found["capture on / off by instructions, worst single-image row"]
    assert (verdict.value, verdict.met) == (pytest.approx(640 / 672), True)
    printed = report.summary(results)
    assert "| predict single | instructions | 640,000 | 672,000 | 1.050 |" in printed
    assert "| predict single | last-level data write misses | 1 | 1 | 1.000 |" in printed
    assert f"last level: {count.VALGRINDS_LAST_LEVEL_LABEL})" in printed
    assert json.loads(json.dumps(report.document(results)))["counted"]["v2 json single"][
        "throughput_ratio"
    ] == pytest.approx(850 / 880)


def test_without_valgrind_the_count_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(count.CountError, match=r"sudo apt-get install valgrind"):
        count.require_valgrind()
