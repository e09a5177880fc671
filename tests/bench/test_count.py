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
from tests.conftest import REPO

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


def called_under_callgrind(out: Path, code: str) -> dict[str, int]:
    subprocess.run(
        [*count.VALGRIND_ARGV, f"--callgrind-out-file={out}", sys.executable, "-c", code],
        check=True,
        capture_output=True,
    )
    return count.summary(out)


def test_only_what_runs_through_call_tracing_is_counted(tmp_path: Path) -> None:
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


def test_a_rows_events_are_its_runs_totals_over_the_requests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workload: Workload
) -> None:
    runs = []
    cache = count.second_level_cache()

    def fake_count(spec, out, capture, row, sent, env, options):
        runs.append((row, capture, sent))
        assert options == [cache.option] if cache else []
        scale = {"off": 1000, "on": 1100}[capture] * (1 + count.ROWS.index(row))
        return {event: scale * sent for event in count.EVENTS}

    monkeypatch.setattr(count, "_count", fake_count)
    bodies = {row: workload.service_bodies()[row] for row in count.ROWS}
    rows = count.measure(bodies, workload.expected, {}, 64, tmp_path)
    assert sorted(runs) == sorted((r, c, 64) for r in count.ROWS for c in ("off", "on"))
    assert rows["v2 json single"].off["Ir"] == 2000
    assert rows["v2 json single"].on["Bcm"] == 2200
    assert rows["v2 binary single"].throughput_ratio == pytest.approx(1 / 1.1)
    assert {row.last_level for row in rows.values()} == {
        f"this machine's L2, {cache}" if cache else count.VALGRINDS_LAST_LEVEL
    }


def describe(directory: Path, index: str, **files: str) -> None:
    (directory / index).mkdir(parents=True)
    for name, value in files.items():
        (directory / index / name).write_text(value + "\n")


def test_the_last_level_simulated_is_the_machines_l2_when_valgrind_can_simulate_it(
    tmp_path: Path,
) -> None:
    caches = tmp_path / "cache"
    geometry = {"size": "1024K", "ways_of_associativity": "16", "coherency_line_size": "64"}
    describe(
        caches,
        "index0",
        level="1",
        type="Data",
        size="48K",
        ways_of_associativity="12",
        coherency_line_size="64",
    )
    describe(caches, "index2", level="2", type="Unified", **geometry)
    describe(
        caches,
        "index3",
        level="3",
        type="Unified",
        size="32768K",
        ways_of_associativity="16",
        coherency_line_size="64",
    )
    l2 = count.second_level_cache(caches)
    assert l2 == count.Cache(1024 * 1024, 16, 64)
    assert (l2.option, str(l2)) == ("--LL=1048576,16,64", "1,024 KiB, 16-way, 64 B lines")
    # 1,280 KiB in 16 ways of 64 B lines is 1,280 sets: valgrind refuses a count of sets
    # that is not a power of two ("Cache set count is not a power of two").
    odd = tmp_path / "odd"
    describe(odd, "index2", level="2", type="Unified", **{**geometry, "size": "1280K"})
    assert count.second_level_cache(odd) is None
    assert count.second_level_cache(tmp_path / "none") is None
    if (found := count.second_level_cache()) is not None:  # this machine's, as valgrind takes it
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--cache-sim=yes",
                found.option,
                f"--callgrind-out-file={tmp_path / 'true.out'}",
                "true",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def counted_row(row: str, off: float, on: float) -> count.CountedRow:
    events = dict.fromkeys(count.EVENTS, 1.0)
    return count.CountedRow(row, 1024, {**events, "Ir": off}, {**events, "Ir": on})


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
    assert f"last level: {count.VALGRINDS_LAST_LEVEL})" in printed
    assert json.loads(json.dumps(report.document(results)))["counted"]["v2 json single"][
        "throughput_ratio"
    ] == pytest.approx(850 / 880)


def test_without_valgrind_the_count_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(count.CountError, match=r"sudo apt-get install valgrind"):
        count.require_valgrind()
