"""The bench harness: wrk output parsing, request bodies the service accepts, the
batch-capable copy, the ratios, and one tiny real run. No timed assertions."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from falcon import testing

from bench import bodies, capture_read, compute, falcon_app, report, wrk
from bench.__main__ import parser
from bench.moto import start_store
from bench.processes import Processes
from bench.run import Measurement, Options, Results, Workload, combined, load_workload
from service.app import create_app
from service.config import Settings
from service.loader import load_model
from tests.conftest import REPO

HERE = Path(__file__).parent


# -- wrk ---------------------------------------------------------------------------


def test_parses_captured_wrk_output() -> None:
    result = wrk.parse_output((HERE / "wrk_output_ok.txt").read_text())
    assert result.requests == 3097
    assert result.requests_per_second == pytest.approx(3097 / 1.007795)
    assert (result.p50_us, result.p99_us) == (314, 27521)
    assert result.non_2xx == 0
    assert result.socket_errors == 0


def test_counts_non_2xx_answers() -> None:
    result = wrk.parse_output((HERE / "wrk_output_non2xx.txt").read_text())
    assert result.non_2xx == result.requests == 31
    assert result.p99_us == 626075


def test_socket_errors_add_up() -> None:
    line = (HERE / "wrk_output_ok.txt").read_text().splitlines()[-1]
    fields = json.loads(line.removeprefix(wrk.MARKER))
    fields.update(connect_errors=1, read_errors=2, write_errors=3, timeouts=4)
    assert wrk.parse_output(wrk.MARKER + json.dumps(fields)).socket_errors == 10


def test_output_without_result_line_says_so() -> None:
    text = (HERE / "wrk_output_ok.txt").read_text().replace(wrk.MARKER, "")
    with pytest.raises(wrk.WrkError, match="no BENCH_RESULT line"):
        wrk.parse_output(text)


def test_lua_script_posts_the_body_file_with_its_headers(tmp_path: Path) -> None:
    script = wrk.lua_script(tmp_path / "body.bin", {bodies.BINARY_HEADER: "123"})
    assert f'io.open([==[{tmp_path / "body.bin"}]==], "rb")' in script
    assert 'wrk.headers["Inference-Header-Content-Length"] = "123"' in script
    assert 'wrk.method = "POST"' in script
    assert "function done(summary, latency, requests)" in script


def test_wrk_only_reaches_loopback(tmp_path: Path) -> None:
    with pytest.raises(wrk.WrkError, match=r"only sends traffic to 127\.0\.0\.1"):
        wrk.run("http://example.com/", tmp_path / "x.lua", connections=1, seconds=1)


def test_wrk_is_pinned_to_the_load_core(tmp_path: Path) -> None:
    argv = wrk.command("http://127.0.0.1:1/", tmp_path / "s.lua", connections=16, seconds=5, core=1)
    assert argv[:3] == ["taskset", "-c", "1"]
    assert argv[argv.index("--connections") :][:2] == ["--connections", "16"]


def test_the_capture_store_runs_at_idle_priority_on_the_load_core(tmp_path: Path) -> None:
    """moto stands in for S3, which runs on other machines: it may not take the core from
    wrk (or anything else) while wrk waits to read an answer."""
    with Processes(tmp_path) as processes:
        store = start_store(processes, core=1)
        pid = store.server.pid
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.sched_getaffinity(pid) == {1}


# -- bodies against the real service -------------------------------------------------


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    return load_workload(256, tmp_path_factory.mktemp("workload"))


@pytest.fixture(scope="module")
def client(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> testing.TestClient:
    settings = Settings(
        model_url=str(workload.model_path),
        model_sha256=workload.model_sha256,
        model_name=workload.model_name,
        cache_dir=tmp_path_factory.mktemp("cache"),
        prediction_log_url="off",
    )
    return testing.TestClient(create_app(settings, model=load_model(settings)))


@pytest.mark.parametrize(
    "row",
    ["predict single", "predict batch 64", "v2 json single", "v2 binary single", "v2 binary 256"],
)
def test_service_accepts_each_body_and_answers_raw_onnxruntimes_classes(
    client: testing.TestClient, workload: Workload, row: str
) -> None:
    body = workload.service_bodies()[row]
    answer = client.simulate_post(body.path, body=body.data, headers=body.headers)
    assert answer.status_code == 200, answer.text
    assert bodies.classes(body, answer.content, answer.headers) == workload.expected[: body.images]


def test_the_framework_ceiling_decodes_the_body_with_the_lane_and_refuses_a_bad_one(
    workload: Workload,
) -> None:
    client = testing.TestClient(falcon_app.create_app())
    body = bodies.predict_json(workload.images[:1])
    answer = client.simulate_post(body.path, body=body.data, headers=body.headers)
    assert answer.status_code == 200 and answer.json == {"prediction": 7}
    refused = client.simulate_post("/predict", body=b'{"data": "seven"}')
    assert refused.status_code == 400 and "data" in refused.json["description"]


def test_binary_body_layout(workload: Workload) -> None:
    body = bodies.v2_binary(workload.images[:2], "m", "x", "y")
    length = int(body.headers[bodies.BINARY_HEADER])
    header = json.loads(body.data[:length])
    assert header["inputs"][0]["shape"] == [2, 1, 28, 28]
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 2 * 784 * 4
    tail = np.frombuffer(body.data[length:], dtype="<f4").reshape(2, 1, 28, 28)
    assert np.array_equal(tail, workload.images[:2])


# -- compute ceiling -------------------------------------------------------------------


def test_the_workload_carries_the_proven_batch_capable_copy(workload: Workload) -> None:
    assert workload.batched is not None and workload.batched.images_checked == 10_000
    copy = compute.session(workload.batched.path)
    batched = copy.run(None, {copy.get_inputs()[0].name: workload.images})[0]
    original = compute.one_at_a_time(compute.session(workload.model_path), workload.images)
    assert batched.shape == (256, 10)
    np.testing.assert_array_equal(batched, original)
    assert batched.argmax(axis=1).tolist() == workload.expected


# -- report ----------------------------------------------------------------------------


def _measurement(
    contender: str, row: str, capture: str | None, rps: float, cpu: float | None = None
) -> Measurement:
    result = wrk.WrkResult(
        requests=int(rps),
        duration_us=1_000_000,
        bytes=0,
        connect_errors=0,
        read_errors=0,
        write_errors=0,
        timeouts=0,
        non_2xx=0,
        p50_us=1000,
        p90_us=1500,
        p99_us=2000,
        max_us=3000,
        mean_us=1100,
    )
    images = 256 if row.endswith("256") else 1
    return Measurement(contender, row, capture, 16, images, result, cpu)


def test_ratios_follow_the_targets_formulas() -> None:
    results = Results(Options(), {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"})
    results.compute = compute.ComputeCeiling(
        single_seconds=50e-6,
        single_runs_per_second=20_000,
        single_runs_per_second_sustained=20_000,
        batch_size=256,
        batch_images_per_second=40_000,
        batch_images_per_second_sustained=40_000,
        batch_method="batch-capable copy",
        copy_max_abs_diff=0.0,
        copy_note="",
    )
    results.single_image_seconds = {16: [50e-6]}
    results.measurements = [
        _measurement("bare", "predict single", None, 20_000, cpu=1.0),
        _measurement("fastapi", "predict single", None, 1_000),
        _measurement("falcon", "predict single", None, 15_000),
        _measurement("service", "predict single", "off", 8_000, cpu=0.5),
        _measurement("service", "predict single", "on", 7_600),
        _measurement("service", "v2 binary 256", "off", 100),
    ]
    found = report.ratios(results)
    assert found["ideal_predict_rps"] == pytest.approx(1 / (1 / 20_000 + 50e-6))  # 10,000
    assert found["service_over_ideal"] == pytest.approx(0.8)
    assert found["service_over_bare"] == pytest.approx(0.4)
    assert found["service_over_fastapi"] == pytest.approx(8.0)
    falcon_ideal = 1 / (1 / 15_000 + 50e-6)  # about 8,571
    assert found["falcon_ideal_predict_rps"] == pytest.approx(falcon_ideal)
    assert found["falcon_ideal_over_ideal"] == pytest.approx(falcon_ideal / 10_000)
    assert found["service_over_falcon_ideal"] == pytest.approx(8_000 / falcon_ideal)
    assert found["falcon_ideal_over_fastapi"] == pytest.approx(falcon_ideal / 1_000)
    assert found["v2_binary_256_over_raw_onnxruntime"] == pytest.approx(25_600 / 40_000)
    assert found["capture_on_over_off: predict single"] == pytest.approx(0.95)
    # per CPU-second: the service used half a core for 8,000 requests, bare a whole one
    assert found["service_over_bare_per_cpu"] == pytest.approx(16_000 / 20_000)
    assert found["service_over_fastapi_per_cpu"] is None  # FastAPI's CPU was not measured
    met = {t.name: t.met for t in report.targets(results, found)}
    assert met["predict single / ideal"] is True
    ceilings = {t.name: t.ceiling for t in report.targets(results, found)}
    assert ceilings["predict single / ideal"] == pytest.approx(falcon_ideal / 10_000)
    assert ceilings["predict single / FastAPI"] == pytest.approx(falcon_ideal / 1_000)
    assert met["ready after start, local model (s)"] is None  # not measured here
    printed = report.summary(results)
    assert "  service_over_falcon_ideal " in printed
    lines = {line.split("  ")[1]: line for line in printed.splitlines() if "  predict " in line}
    assert lines["predict single / ideal"].endswith(" met (framework ceiling 0.86)")
    assert lines["predict single / FastAPI"].endswith(" met (framework ceiling 8.57)")
    assert "service_over_fastapi_per_cpu" not in printed  # a ratio of rows not measured
    assert "ready after start:" not in printed
    assert "| service | predict single | off | 16 | 8,000 |" in report.table(results)
    assert "| 50% | - | 16,000 |" in report.table(results)


def test_the_summary_prints_only_what_was_measured_and_aligns_the_targets() -> None:
    results = Results(Options(), {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"})
    printed = report.summary(results)
    for heading in ("ratios at", "ready after start:", "resident memory after load:"):
        assert heading not in printed
    rows = [line for line in printed.splitlines() if line.endswith("not measured")]
    assert len(rows) == len(report.targets(results, report.ratios(results)))
    assert len({line.index(" -  ") for line in rows}) == 1  # every value in one column


def _row(row: str, capture: str, c: int, rps: float, p99_ms: float) -> Measurement:
    m = _measurement("service", row, capture, rps)
    result = dataclasses.replace(m.result, p99_us=int(p99_ms * 1000))
    return dataclasses.replace(m, concurrency=c, result=result)


def test_capture_targets_are_the_worst_single_image_row_at_every_level() -> None:
    """Throughput: the worst on/off ratio of any single-image row at any level; tail: at
    each level the worst p99 ratio; batch rows count in neither."""
    results = Results(
        Options(concurrency=(1, 16, 64)),
        {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"},
    )
    results.measurements = [
        _row("predict single", "off", 1, 3000, 0.5),
        _row("predict single", "on", 1, 2940, 0.55),  # 0.98, tail 1.1
        _row("v2 json single", "off", 1, 3000, 0.5),
        _row("v2 json single", "on", 1, 2700, 0.7),  # 0.90, tail 1.4
        _row("predict single", "off", 16, 8000, 2.0),
        _row("predict single", "on", 16, 7900, 2.2),
        _row("predict single", "off", 64, 8000, 8.0),
        _row("predict single", "on", 64, 7900, 8.8),
        _row("v2 binary 256", "off", 64, 100, 100.0),
        _row("v2 binary 256", "on", 64, 10, 1000.0),  # a batch row: counted in neither
    ]
    results.rss_bytes = {
        "service-capture-off after the first row": 90 * report.MB,
        "service-capture-off": 140 * report.MB,
        "service-capture-on": 160 * report.MB,
    }
    throughput, tails = report.capture_cost(results)
    assert throughput == pytest.approx(0.90)
    assert tails == {1: pytest.approx(1.4), 16: pytest.approx(1.1), 64: pytest.approx(1.1)}
    found = {t.name: t for t in report.targets(results, report.ratios(results))}
    assert found["capture on / off req/s, worst single-image row"].met is False
    assert found["capture on / off p99 at c=1, worst single row"].met is False
    assert found["capture on / off p99 at c=16, worst single row"].met is True
    memory = found["service resident memory once quiet after the whole bench (MB)"]
    assert memory.value == pytest.approx(160) and memory.met is False


def test_capture_read_targets_compare_the_engine_compaction_and_day_with_the_baseline() -> None:
    results = Results(Options(), {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"})
    results.measurements = [_measurement("service", "v2 binary 256", "on", 100.0)]  # 25,600/s
    results.capture_read = capture_read.CaptureRead(
        rows=[
            capture_read.ReadRow("sequential GETs (baseline)", 360_000, 3600, 20.0),
            capture_read.ReadRow("report engine", 360_000, 3600, 2.0),
            capture_read.ReadRow("compaction", 360_000, 3600, 1.0),
            capture_read.ReadRow("report engine, compacted 24 h", 8_640_000, 24, 25.0),
            capture_read.ReadRow("compaction, peak-size parts (10,000 records)", 360_000, 36, 1.0),
        ],
        objects_per_task_hour=2,
    )
    found = {t.name: t for t in report.targets(results, report.ratios(results))}
    assert found["capture read: engine / sequential (records/s)"].value == pytest.approx(10)
    assert found["capture read: objects per compacted task-hour"].met
    day = found["capture read: compacted day / sequential hour (time)"]
    assert day.value == pytest.approx(1.25) and day.met is False
    merge = found["compaction / peak capture of one task (records/s)"]
    assert merge.value == pytest.approx(360_000 / 25_600) and merge.met
    assert "| report engine | 360,000 | 3,600 | 2.00 | 180,000 |" in report.summary(results)


def test_the_readers_ceiling_is_the_sequential_time_over_the_servers_cpu() -> None:
    """No reader finishes before the S3 server has spent its CPU on the GETs: with 20 s
    sequential and 8 s of server CPU during the engine's read, 2.5x is the most any
    reader could gain, and the summary says so."""
    results = Results(Options(), {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"})
    results.capture_read = capture_read.CaptureRead(
        rows=[
            capture_read.ReadRow("sequential GETs (baseline)", 360_000, 3600, 20.0, 9.0),
            capture_read.ReadRow("report engine", 360_000, 3600, 10.0, 8.0),
        ]
    )
    assert results.capture_read.ceiling() == pytest.approx(2.5)
    assert results.capture_read.as_dict()["ceiling_over_sequential"] == pytest.approx(2.5)
    shown = report.summary(results)
    assert "| report engine | 360,000 | 3,600 | 10.00 | 36,000 | 8.00 | 2.22 |" in shown
    assert "the server's CPU seconds for the engine's GETs): 2.50" in shown
    unmeasured = capture_read.CaptureRead(rows=results.capture_read.rows[:1])
    assert unmeasured.ceiling() is None


@pytest.mark.integration
def test_capture_read_rows_on_a_small_capture(aws) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench-read")
    found = capture_read.measure(
        "s3://bench-read/capture",
        {},
        hours=3,
        parts_per_hour=12,
        records_per_part=5,
        server=aws.process.pid,
    )
    assert [(row.name, row.records, row.objects) for row in found.rows] == [
        ("sequential GETs (baseline)", 60, 12),
        ("report engine", 60, 12),
        ("compaction", 60, 12),
        ("report engine, compacted 3 h", 180, 3),
        ("compaction, peak-size parts (60 records)", 60, 1),
    ]
    assert found.objects_per_task_hour == 1
    # The moto server's CPU, from /proc/<pid>/stat, during each row.
    assert all(row.server_cpu_seconds is not None for row in found.rows)
    assert sum(row.server_cpu_seconds for row in found.rows) > 0


def test_bad_concurrency_is_refused_with_the_reason(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--concurrency", "1,x"])
    assert "not a comma-separated list of integers" in capsys.readouterr().err


# -- one real run ----------------------------------------------------------------------


@pytest.mark.integration
def test_a_tiny_real_run_writes_results(tmp_path: Path) -> None:
    """The whole path (uvicorn, taskset, wrk, the steal gate, report) for the HTTP
    ceiling and the framework ceiling, in 3 alternated rounds of 1 s at c=1, at most 5 s
    spent waiting for quiet cores and measuring again."""
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{tool} is missing: `apt-get install wrk util-linux`")
            pytest.skip(f"{tool} is not installed")
    output = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            *("--only", "bare", "falcon", "--seconds", "1", "--warmup", "0"),
            *("--concurrency", "1", "--steal-budget", "5", "--output", str(output)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| bare | predict single | - | 1 |" in done.stdout
    assert "| falcon | predict single | - | 1 |" in done.stdout
    document = json.loads(output.read_text())
    assert [row["contender"] for row in document["measurements"]] == ["bare", "falcon"]
    for row in document["measurements"]:
        assert row["requests_per_second"] > 0
        assert row["non_2xx"] == 0 and row["socket_errors"] == 0
        assert document["rss_bytes"][row["contender"]] > 0
        assert row["server_cpu_seconds"] > 0 and row["load_cpu_share"] > 0
        assert 0 <= row["steal_share"] <= 1
    # the single-image row on both, in 3 alternated rounds: 6 runs
    assert document["steal"]["runs"] == 6 and document["steal"]["budget_seconds"] == 5
    assert all(len(row["runs"]) == 3 for row in document["measurements"])


def test_capture_off_and_on_alternate_in_pairs_at_every_level(monkeypatch, tmp_path):
    """Each row is prepared on both services, then every level runs as alternated pairs of
    runs (off, on, off, on), the other service quiet before each, of the level's seconds
    split between the pairs; a level's runs become one measurement that keeps them. The
    results keep the off rows before the on rows, and each service's memory is read after
    its first row, as its last row ends and once it is quiet."""
    from bench import run

    events: list[str] = []
    seconds_asked: set[int] = set()

    class FakeServer:
        def __init__(self, name: str, pid: int) -> None:
            self.name, self.pid, self.ready_seconds = name, pid, 0.5

    def start_service(processes, workload, workdir, store, core):
        capture = "off" if store is None else "on"
        pid = 100 if store is None else 200
        return run.UnderTest(FakeServer(f"service-capture-{capture}", pid), capture, "t")

    def prepare_row(server, contender, row, body, capture, workload, options, workdir):
        events.append(f"prepare {row} {capture}")
        return run.PreparedRow(server, contender, row, capture, 1, "u", Path("s"))

    def measure_level(prepared, connections, seconds, options):
        events.append(f"{prepared.row} {prepared.capture} c={connections}")
        seconds_asked.add(seconds)
        measured = _measurement("service", prepared.row, prepared.capture, 100.0 + len(events))
        return dataclasses.replace(measured, concurrency=connections)

    class FakeProcesses:
        def stop(self, server):
            events.append(f"stop {server.pid}")
            return 0

    monkeypatch.setattr(run, "start_service", start_service)
    monkeypatch.setattr(run, "prepare_row", prepare_row)
    monkeypatch.setattr(run, "measure_level", measure_level)
    monkeypatch.setattr(run, "wait_quiet", lambda pid: events.append(f"quiet {pid}"))
    monkeypatch.setattr(run, "rss_bytes", lambda pid: pid * 1000 + len(events))
    body = bodies.Body("predict", "/predict", b"{}", {}, 1)
    monkeypatch.setattr(Workload, "service_bodies", lambda self: {"a": body, "b": body})
    workload = Workload(Path("m.onnx"), "0" * 64, "m", "x", "y", np.zeros((1, 1, 28, 28)), [0])
    results = Results(Options(seconds=5, rounds=2, concurrency=(1, 16)), {})
    run.bench_servers(FakeProcesses(), workload, results, tmp_path, [], [None, object()])
    pair = ["quiet 200", "{} off c={}", "quiet 100", "{} on c={}"]
    expected = []
    for row in ("a", "b"):
        expected += ["quiet 200", f"prepare {row} off", "quiet 100", f"prepare {row} on"]
        for c in (1, 16):
            expected += [e.format(row, c) if "{}" in e else e for e in pair * 2]
    assert events[: len(expected)] == expected
    assert events[len(expected) :] == ["quiet 100", "stop 100", "quiet 200", "stop 200"]
    assert seconds_asked == {3}  # 5 s split into 2 pairs: whole seconds, rounded up
    assert [(m.row, m.capture, m.concurrency) for m in results.measurements] == [
        ("a", "off", 1),
        ("a", "off", 16),
        ("b", "off", 1),
        ("b", "off", 16),
        ("a", "on", 1),
        ("a", "on", 16),
        ("b", "on", 1),
        ("b", "on", 16),
    ]
    for m in results.measurements:
        assert len(m.runs) == 2 and {r.capture for r in m.runs} == {m.capture}
        assert m.result.requests == sum(r.result.requests for r in m.runs)
    assert set(results.rss_bytes) == {
        f"service-capture-{c}{when}"
        for c in ("off", "on")
        for when in ("", " after the first row", " as the last row ends")
    }
    assert results.ready_seconds == {"service-capture-off": 0.5, "service-capture-on": 0.5}


def test_one_service_runs_each_level_once_for_its_whole_seconds(monkeypatch, tmp_path):
    """With only capture off there is nothing to pair: one run of `seconds` a level."""
    from bench import run

    asked: list[tuple[int, int]] = []

    class FakeServer:
        name, pid, ready_seconds = "service-capture-off", 100, 0.5

    monkeypatch.setattr(run, "start_service", lambda *a: run.UnderTest(FakeServer(), "off", "t"))
    monkeypatch.setattr(
        run,
        "prepare_row",
        lambda server, contender, row, body, capture, *rest: run.PreparedRow(
            server, contender, row, capture, 1, "u", Path("s")
        ),
    )

    def measure_level(prepared, connections, seconds, options):
        asked.append((connections, seconds))
        return dataclasses.replace(
            _measurement("service", "a", "off", 100.0), concurrency=connections
        )

    monkeypatch.setattr(run, "measure_level", measure_level)
    monkeypatch.setattr(run, "wait_quiet", lambda pid: None)
    monkeypatch.setattr(run, "rss_bytes", lambda pid: 1)
    body = bodies.Body("predict", "/predict", b"{}", {}, 1)
    monkeypatch.setattr(Workload, "service_bodies", lambda self: {"a": body})
    workload = Workload(Path("m.onnx"), "0" * 64, "m", "x", "y", np.zeros((1, 1, 28, 28)), [0])
    results = Results(Options(seconds=5, rounds=3, concurrency=(1, 16)), {})

    class FakeProcesses:
        def stop(self, server):
            return 0

    run.bench_servers(FakeProcesses(), workload, results, tmp_path, [], [None])
    assert asked == [(1, 5), (16, 5)]
    assert all(m.runs == () for m in results.measurements)


def test_every_contender_answers_the_single_image_row_in_the_same_rounds(monkeypatch, tmp_path):
    """The reference apps and the service run the single-image row in one set of
    alternated rounds, raw onnxruntime's time read before each round once every server has
    gone quiet (each reading kept by the steal gate); the service's other rows run on the
    service alone. Each server is
    sent the body it expects: bare and falcon their fixed one, the service its token."""
    from bench import run

    events: list[str] = []
    sent: dict[str, dict[str, str]] = {}

    class FakeServer:
        def __init__(self, name: str, pid: int) -> None:
            self.name, self.pid, self.ready_seconds = name, pid, 0.5

    pids = {"bare": 1, "falcon": 2, "fastapi": 3}

    def start_reference(processes, workload, options, name):
        app = run.REFERENCE_APPS[name]
        return run.UnderTest(FakeServer(name, pids[name]), None, None, name, app.model)

    def start_service(processes, workload, workdir, store, core):
        return run.UnderTest(FakeServer("service-capture-off", 100), "off", "token-0123456789")

    def prepare_row(server, contender, row, body, capture, workload, options, workdir):
        sent[f"{contender} {row}"] = body.headers
        return run.PreparedRow(server, contender, row, capture, 1, "u", Path("s"))

    quieted: set[int] = set()  # servers waited on since the last run
    quiet_at_readings: list[list[int]] = []

    def measure_level(prepared, connections, seconds, options):
        events.append(f"{prepared.contender} {prepared.row} c={connections}")
        quieted.clear()
        measured = _measurement(prepared.contender, prepared.row, prepared.capture, 100.0)
        return dataclasses.replace(measured, concurrency=connections)

    class Timer:
        def __init__(self, model_path, images, core) -> None:
            self.readings = iter([40e-6, 41e-6, 42e-6, 43e-6])

        def median_seconds(self, seconds: float) -> float:
            events.append("onnxruntime")
            quiet_at_readings.append(sorted(quieted))
            return next(self.readings)

    class Gate:
        def measure(self, measure, settle):
            events.append("gate")
            return measure(), 0.0

    class FakeProcesses:
        def stop(self, server):
            return 0

    monkeypatch.setattr(run, "start_reference", start_reference)
    monkeypatch.setattr(run, "start_service", start_service)
    monkeypatch.setattr(run, "prepare_row", prepare_row)
    monkeypatch.setattr(run, "measure_level", measure_level)
    monkeypatch.setattr(run.compute, "SingleImage", Timer)
    monkeypatch.setattr(
        run, "gated_level", lambda p, c, s, o, gate, before: measure_level(p, c, s, o)
    )
    monkeypatch.setattr(run, "wait_quiet", quieted.add)
    monkeypatch.setattr(run, "rss_bytes", lambda pid: pid)
    body = bodies.Body("predict", "/predict", b"{}", {"Content-Type": "application/json"}, 1)
    monkeypatch.setattr(
        Workload, "service_bodies", lambda self: {"predict single": body, "other": body}
    )
    workload = Workload(Path("m.onnx"), "0" * 64, "m", "x", "y", np.zeros((1, 1, 28, 28)), [0])
    results = Results(Options(seconds=4, rounds=2, concurrency=(1, 16)), {})
    results.compute = object()  # measured: the rounds read onnxruntime's time too
    results.steal = Gate()
    run.bench_servers(
        FakeProcesses(), workload, results, tmp_path, ["bare", "falcon", "fastapi"], [None]
    )
    a_round = ["gate", "onnxruntime"] + [
        f"{name} predict single c={{}}" for name in ("bare", "falcon", "fastapi", "service")
    ]
    expected = [e.format(c) for c in (1, 16) for e in a_round * 2]
    expected += ["service other c=1", "service other c=16"]
    assert events == expected
    assert results.single_image_seconds == {1: [40e-6, 41e-6], 16: [42e-6, 43e-6]}
    # each reading once every server of the row had gone quiet (the last run's capture stored)
    assert quiet_at_readings == [[1, 2, 3, 100]] * 4
    assert "Authorization" not in sent["fastapi predict single"]
    assert sent["service predict single"]["Authorization"] == "Bearer token-0123456789"
    assert sent["bare predict single"] == bodies.fixed("/predict", body).headers
    assert [(m.contender, m.row, m.concurrency) for m in results.measurements] == [
        (name, row, c)
        for name, rows in (
            ("bare", ["predict single"]),
            ("falcon", ["predict single"]),
            ("fastapi", ["predict single"]),
            ("service", ["predict single", "other"]),
        )
        for row in rows
        for c in (1, 16)
    ]
    assert set(results.ready_seconds) == {"fastapi", "service-capture-off"}


def test_the_throughput_ratios_are_the_median_of_the_rounds() -> None:
    """A machine that runs everything twice as slow in the second round, onnxruntime
    included, leaves each round's service / ideal at 0.8 and service / FastAPI at 8; so
    does the median. The level's pooled rates over one onnxruntime reading taken in the
    slow state, minutes away from them, would say 1.07: the target met by a slow reading."""
    results = Results(Options(), {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"})
    results.single_image_seconds = {16: [50e-6, 100e-6, 50e-6]}

    def level(contender: str, capture: str | None, rates: list[float]) -> Measurement:
        runs = [_measurement(contender, "predict single", capture, rate) for rate in rates]
        return combined(runs)

    results.measurements = [
        level("bare", None, [20_000, 10_000, 20_000]),
        level("falcon", None, [15_000, 7_500, 15_000]),
        level("fastapi", None, [1_000, 500, 1_000]),
        level("service", "off", [8_000, 4_000, 8_000]),
    ]
    found = report.ratios(results)
    assert found["service_over_ideal"] == pytest.approx(0.8)
    assert found["service_over_fastapi"] == pytest.approx(8.0)
    assert found["ideal_predict_rps"] == pytest.approx(10_000)  # the median round's
    falcon_ideal = 1 / (1 / 15_000 + 50e-6)
    assert found["falcon_ideal_over_ideal"] == pytest.approx(falcon_ideal / 10_000)
    pooled = results.rps("service", "predict single", "off", 16) / (
        1 / (1 / results.rps("bare", "predict single", None, 16) + 100e-6)
    )
    assert pooled == pytest.approx(1.07, abs=0.01)
    assert "read before each round of the single-image row at c=16: 50.0 / 100.0 / 50.0 us" in (
        report.summary(results)
    )


def _runs(row: str, capture: str, c: int, rates: list[float], p99s_ms: list[float]) -> Measurement:
    """A level measured as alternated runs of one second each."""
    runs = [_row(row, capture, c, rate, p99) for rate, p99 in zip(rates, p99s_ms, strict=True)]
    return combined(runs)


def test_one_disturbed_pair_of_runs_does_not_decide_the_capture_verdict() -> None:
    """A stall of the machine during one capture-on run halves that run; the median of
    the pairs' ratios still reads capture's own cost (0.96), where the level's pooled
    rate would read 0.81, and likewise for p99."""
    results = Results(Options(concurrency=(16,)), {})
    off = _runs("predict single", "off", 16, [1000, 1000, 1000], [2.0, 2.0, 2.0])
    on = _runs("predict single", "on", 16, [960, 500, 960], [2.1, 9.0, 2.2])
    results.measurements = [off, on]
    assert on.result.requests_per_second / off.result.requests_per_second == pytest.approx(
        2420 / 3000
    )
    throughput, tails = report.capture_cost(results)
    assert throughput == pytest.approx(0.96)
    assert tails == {16: pytest.approx(1.1)}
    assert report.ratios(results)["capture_on_over_off: predict single"] == pytest.approx(0.96)


def test_the_machines_own_moves_are_the_widest_capture_off_level() -> None:
    """The fastest over the slowest capture-off run of one single-image level, the widest
    such level named; batch rows, capture-on runs and levels run once do not count."""
    machine = {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"}
    results = Results(Options(concurrency=(1, 16)), machine)
    assert report.run_spread(results) is None
    results.measurements = [
        _runs("predict single", "off", 1, [1000, 1100, 1050], [1.0] * 3),
        _runs("v2 json single", "off", 16, [900, 1200, 1000], [1.0] * 3),
        _runs("v2 json single", "on", 16, [100, 1200, 1000], [1.0] * 3),
        _runs("v2 binary 256", "off", 16, [10, 100, 50], [1.0] * 3),
        _row("v2 binary single", "off", 1, 500, 1.0),
    ]
    spread = report.run_spread(results)
    assert spread == (pytest.approx(1200 / 900), "v2 json single", 16)
    assert "differed by up to 1.33x (v2 json single at c=16); a capture ratio" in (
        report.summary(results)
    )
    # Without capture-on runs there is no capture ratio to weigh against the moves.
    results.measurements = [m for m in results.measurements if m.capture == "off"]
    summary = report.summary(results)
    assert "differed by up to 1.33x (v2 json single at c=16)" in summary
    assert "capture ratio" not in summary


def test_pairs_follow_the_order_the_runs_ran_in() -> None:
    """Each on run is compared with the off run beside it: a machine that slows from
    pair to pair moves both sides of every ratio alike."""
    off = _runs("predict single", "off", 1, [3000, 2000, 1000], [1.0, 1.5, 3.0])
    on = _runs("predict single", "on", 1, [2940, 1960, 980], [1.1, 1.65, 3.3])
    assert report.paired_ratio(on, off, report.RUN_RATES[""]) == pytest.approx(0.98)
    assert report.paired_ratio(on, off, lambda m: m.result.p99_us) == pytest.approx(1.1)
    assert report.paired_ratio(on, None, report.RUN_RATES[""]) is None


def test_runs_combine_into_the_levels_figures() -> None:
    """Counts and seconds add (the rate is over all runs), percentiles are the median
    run's, the maximum the largest, the mean weighted by requests; CPU adds."""
    first = wrk.WrkResult(100, 1_000_000, 10, 1, 0, 0, 0, 2, 1000, 1500, 2000, 3000, 1100)
    second = wrk.WrkResult(300, 1_000_000, 30, 0, 1, 0, 0, 0, 900, 1400, 5000, 9000, 1300)
    third = wrk.WrkResult(200, 1_000_000, 20, 0, 0, 0, 1, 0, 800, 1300, 1000, 2500, 1200)
    both = wrk.combined([first, second, third])
    assert (both.requests, both.duration_us, both.bytes) == (600, 3_000_000, 60)
    assert both.requests_per_second == pytest.approx(200)
    assert (both.socket_errors, both.non_2xx) == (3, 2)
    assert (both.p50_us, both.p90_us, both.p99_us, both.max_us) == (900, 1400, 2000, 9000)
    assert both.mean_us == pytest.approx((100 * 1100 + 300 * 1300 + 200 * 1200) / 600)
    assert wrk.combined([first]) is first
    runs = [
        dataclasses.replace(_measurement("service", "a", "on", 100, cpu=0.5), result=r)
        for r in (first, second, third)
    ]
    level = combined(runs)
    assert level.server_cpu_seconds == pytest.approx(1.5)
    assert level.runs == tuple(runs) and level.as_dict()["runs"][1]["requests_per_second"] == 300
    assert level.capture_hold_seconds is None and level.capture_hold_share is None
    held = combined([dataclasses.replace(run, capture_hold_seconds=0.01) for run in runs])
    assert held.capture_hold_seconds == pytest.approx(0.03)
    assert held.capture_hold_share == pytest.approx(0.01)  # 0.03 s of the runs' 3 s
    assert held.as_dict()["capture_hold_share"] == pytest.approx(0.01)


def test_a_capture_on_run_reads_how_long_capture_held_the_event_loop(
    workload: Workload, tmp_path: Path
) -> None:
    """The capture-on service, as the bench runs it, loaded by wrk for 2 s: the run's
    capture hold is the growth of the service's prediction_capture_encode_seconds sum, more
    than nothing and less than the run; the capture-off service has none, and the table
    shows the share in its last column."""
    from bench import run

    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("wrk or taskset is missing: `apt-get install wrk util-linux`")
        pytest.skip("wrk or taskset is not installed")
    options = Options(seconds=2, warmup_seconds=0, concurrency=(4,))
    body = workload.service_bodies()["predict single"]
    with Processes(tmp_path) as processes:
        store = start_store(processes, core=1)
        measured = {}
        for capture, service_store in (("off", None), ("on", store)):
            service = run.start_service(processes, workload, tmp_path, service_store, core=0)
            signed = dataclasses.replace(
                body, headers={**body.headers, **run.bearer_header(service.token)}
            )
            prepared = run.prepare_row(
                service.server,
                "service",
                "predict single",
                signed,
                capture,
                workload,
                options,
                tmp_path,
            )
            measured[capture] = run.measure_level(prepared, 4, options.seconds, options)
    on, off = measured["on"], measured["off"]
    assert off.capture_hold_seconds is None
    assert on.result.requests > 0 and on.result.non_2xx == 0
    assert 0 < on.capture_hold_seconds < on.result.duration_us / 1e6
    results = Results(options, {})
    results.measurements = [off, on]
    rows = report.table(results).splitlines()
    assert rows[2].endswith("| - |")
    assert rows[3].endswith(f"| {on.capture_hold_share:.1%} |")


@pytest.mark.parametrize(
    ("flag", "value", "least"), [("--seconds", "0", 1), ("--rounds", "0", 1), ("--warmup", "-1", 0)]
)
def test_a_count_below_its_least_is_refused_by_name(
    flag: str, value: str, least: int, capsys: pytest.CaptureFixture
) -> None:
    from bench.__main__ import main

    assert main([flag, value]) == 2
    assert capsys.readouterr().err == f"error: {flag} is {value}; it must be at least {least}\n"


def test_a_model_that_cannot_be_fetched_is_one_line_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Offline without FIXTURES_DIR the bench stops before any server, with the download's
    failure and the fix on one line and exit status 2, not a traceback."""
    import bench.__main__ as entry

    monkeypatch.delenv("FIXTURES_DIR", raising=False)
    monkeypatch.setenv("MODEL_URL", "http://127.0.0.1:9/mnist-8.onnx")
    monkeypatch.setenv("MODEL_SHA256", "0" * 64)
    monkeypatch.setattr(entry, "run", lambda options, workdir: load_workload(1, tmp_path))
    assert entry.main(["--only", "compute"]) == 2
    line = capsys.readouterr().err
    assert line.startswith("error: http://127.0.0.1:9/mnist-8.onnx: download failed: ")
    assert line.endswith("set FIXTURES_DIR to a directory holding mnist-8.onnx)\n")
    assert line.count("\n") == 1


def test_memory_is_read_once_the_server_has_gone_quiet():
    """`wait_quiet` returns only after the process stopped using CPU: a process that works
    for 0.6 s of CPU and then sleeps has done all its work when it returns."""
    from bench.processes import cpu_seconds, wait_quiet

    busy_then_idle = "import time\nwhile time.process_time() < 0.6:\n    pass\ntime.sleep(60)\n"
    process = subprocess.Popen([sys.executable, "-c", busy_then_idle])
    try:
        wait_quiet(process.pid)
        assert cpu_seconds(process.pid) >= 0.55  # /proc counts whole clock ticks
    finally:
        process.kill()
        process.wait(timeout=10)


def test_the_servers_modules_are_compiled_before_they_start(tmp_path, monkeypatch):
    """A module the bench's servers import has its bytecode written, whatever
    PYTHONDONTWRITEBYTECODE says, as an image build's pip install writes it: the
    environment's packages and the repository's own."""
    from bench import processes

    site, repo = tmp_path / "site", tmp_path / "repo"
    for package in (site / "pkg", repo / "service", repo / "pipeline", repo / "bench"):
        package.mkdir(parents=True)
        (package / "mod.py").write_text("VALUE = 1\n")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setattr(processes, "REPO", repo)
    monkeypatch.setattr(
        processes.sysconfig, "get_paths", lambda: {"purelib": str(site), "platlib": str(site)}
    )
    directories = processes.compile_bytecode()
    assert directories == [site, repo / "service", repo / "pipeline", repo / "bench"]
    for package in (site / "pkg", repo / "service", repo / "pipeline", repo / "bench"):
        assert list((package / "__pycache__").glob("mod.*.pyc")), package
