"""Reading captured predictions back: `logs` and `report`, from local parts and from S3."""

from __future__ import annotations

import gzip
import io
import json
import math
import re
from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.predictions import chart, statistics
from pipeline.predictions import store as parts
from service.capture.records import PartNamer, Pending, encode_parts
from service.capture.sinks import open_sink
from service.model import ModelInfo

INFO = ModelInfo("mnist-8", "1", "cd" * 32)
NOON = datetime(2025, 3, 1, 12, 30, tzinfo=UTC).timestamp()


def write_parts(url: str, env: str = "dev") -> None:
    """Three requests over two hours: classes 1, 2 (a batch of two: 2 and 3) and 4."""
    sink = open_sink(url)

    def scores(*classes: int) -> np.ndarray:
        values = np.zeros((len(classes), 10), dtype=np.float32)
        values[np.arange(len(classes)), list(classes)] = 1.0
        return values

    entries = [
        Pending(NOON, "/predict", "a", INFO, scores(1), None, 0.001),
        Pending(NOON + 60, "/v2/infer", "b", INFO, scores(2, 3), None, 0.003),
        Pending(NOON + 3600, "/predict", "c", INFO, scores(4), None, 0.002),
    ]
    for part in encode_parts(entries, env, PartNamer()):
        sink.put(part.key, part.body)


def test_logs_prints_one_record_per_line_newest_first(tmp_path, capsys):
    write_parts(str(tmp_path))
    assert main(["logs", "dev", "--url", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["c", "b-1", "b-0", "a"]
    assert json.loads(lines[-1])["prediction"] == 1


def test_an_environments_commands_read_its_capture_url_without_url(tmp_path, capsys, monkeypatch):
    # `nox -s logs -- prod` reads prod's capture (its capture_url output, here given as
    # PROD_CAPTURE_URL), not the ./predictions of `nox -s serve`.
    write_parts(str(tmp_path), env="prod")
    monkeypatch.delenv(parts.URL_ENV, raising=False)
    monkeypatch.setenv("PROD_CAPTURE_URL", str(tmp_path))
    assert main(["logs", "prod"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main(["report", "prod", "--no-baseline", "--chart", str(tmp_path / "c.png")]) == 0
    assert "predictions in prod: 4 records" in capsys.readouterr().out


def test_an_environment_whose_capture_url_is_unknown_names_url_as_a_fix(capsys, monkeypatch):
    def no_state(environment):
        raise RuntimeError("TF_STATE_BUCKET is not set")

    monkeypatch.setattr("pipeline.environment.terraform_outputs", no_state)
    monkeypatch.delenv(parts.URL_ENV, raising=False)
    monkeypatch.delenv("PROD_CAPTURE_URL", raising=False)
    assert main(["logs", "prod", "--since", "1h"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "capture_url" in error and "or pass --url" in error


def test_logs_since_and_limit(tmp_path):
    write_parts(str(tmp_path))
    store = parts.open_store(f"file://{tmp_path}")
    out = io.StringIO()
    since = parts.parse_since("2025-03-01T12:31")
    assert parts.logs(store, "dev", since=since, out=out) == 3
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["c", "b-1", "b-0"]
    assert parts.logs(store, "dev", limit=1, out=io.StringIO()) == 1
    assert parts.logs(store, "prod", out=io.StringIO()) == 0


@pytest.mark.parametrize("days_back", [2, 399, 400, 401, 800])
def test_since_far_back_still_reads_the_newest_hours(tmp_path, days_back):
    """However far back `--since` reaches (capture is kept 400 days in prod), the hours
    from it to now are all read, the newest included."""
    now = datetime.fromtimestamp(NOON + 7200, UTC)
    old = NOON - (days_back - 1) * 86400
    sink = open_sink(str(tmp_path))
    scores = np.eye(10, dtype=np.float32)[[3]]
    entries = [
        Pending(old, "/predict", "old", INFO, scores, None, 0.001),
        Pending(NOON, "/predict", "new", INFO, scores, None, 0.001),
    ]
    for part in encode_parts(entries, "dev", PartNamer()):
        sink.put(part.key, part.body)
    store = parts.open_store(f"file://{tmp_path}")
    since = now - timedelta(days=days_back)
    hours = parts.list_hours(store, "dev", since=since, now=now)
    assert [hour.hour for hour in hours] == [
        datetime.fromtimestamp(t, UTC).replace(minute=0, second=0, microsecond=0)
        for t in (NOON, old)
    ]


def test_since_accepts_durations_and_dates_and_names_bad_input():
    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert parts.parse_since("2h", now) == datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert parts.parse_since("30m", now) == datetime(2025, 3, 1, 11, 30, tzinfo=UTC)
    assert parts.parse_since("2025-02-01", now) == datetime(2025, 2, 1, tzinfo=UTC)
    with pytest.raises(parts.PredictionLogError, match="--since 'yesterday'"):
        parts.parse_since("yesterday", now)


@pytest.mark.parametrize(
    "text",
    [
        "1000000d",
        "99999999999d",
        "10000000000000000000000m",
        "0001-01-01T00:00+05:00",
        "9999-12-31T23:59-05:00",
    ],
)
def test_since_outside_what_a_datetime_holds_is_named_not_a_traceback(text, capsys):
    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    with pytest.raises(parts.PredictionLogError, match=re.escape(f"--since {text!r} is outside")):
        parts.parse_since(text, now)
    assert main(["logs", "local", "--url", ".", "--since", text]) == 2
    assert capsys.readouterr().err.startswith(f"error: --since {text!r} is outside")


def test_a_missing_directory_or_bad_url_is_a_clear_error(tmp_path, capsys):
    assert main(["logs", "dev", "--url", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["logs", "dev", "--url", "ftp://host/x"]) == 2
    assert "s3://bucket/prefix" in capsys.readouterr().err
    assert main(["report", "dev", "--url", str(tmp_path), "--no-baseline"]) == 2
    assert "nothing to report: no predictions for dev" in capsys.readouterr().err


def test_an_empty_or_file_url_and_empty_times_are_refused_not_taken_as_defaults(tmp_path, capsys):
    """An empty --url is not the current directory, a file is not a missing directory,
    and an empty --hour or --since is not "every hour": each is one line, exit 2."""
    part = tmp_path / "before.jsonl"
    part.write_text("{}\n")
    for argv, message in [
        (["logs", "dev", "--url", ""], "an empty URL names no store of parts: pass --url"),
        (["logs", "dev", "--url", str(part)], f"{part} is a file, not a directory of parts"),
        (["compact", "dev", "--url", str(tmp_path), "--hour", ""], "--hour '' is not a UTC hour"),
        (["compact", "dev", "--url", str(tmp_path), "--since", ""], "--since '' is neither"),
        (["logs", "dev", "--url", str(tmp_path), "--since", ""], "--since '' is neither"),
        (["logs", "dev", "--url", "s3://bad bucket/x"], "'bad bucket' is not an S3 bucket name"),
        (["compact", "dev", "--url", "s3://Bad_/x"], "'Bad_' is not an S3 bucket name"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_a_corrupt_part_is_named(tmp_path):
    (tmp_path / "dev/2025/03/01/12").mkdir(parents=True)
    (tmp_path / "dev/2025/03/01/12/x.jsonl.gz").write_bytes(b"not gzip")
    store = parts.open_store(str(tmp_path))
    with pytest.raises(parts.PredictionLogError, match=r"x\.jsonl\.gz is not a gzip JSON"):
        list(parts.read_records(store, "dev"))


def test_report_counts_classes_hours_latency_and_compares_with_the_labels(tmp_path):
    write_parts(str(tmp_path))
    store = parts.open_store(str(tmp_path))
    labels = np.repeat(np.arange(10), 100)
    summary = statistics.summarise(parts.read_records(store, "dev"), "dev", labels)
    assert summary.total == 4
    assert summary.per_class == {1: 1, 2: 1, 3: 1, 4: 1}
    assert summary.per_hour == {"2025-03-01 12:00": 3, "2025-03-01 13:00": 1}
    assert summary.latency_ms["max"] == 3.0  # once per request, not per row
    assert summary.latency_ms["p50"] == 2.0
    assert summary.tvd == pytest.approx(0.6)  # 4 classes at 25% against 10 at 10%
    assert not summary.drifted  # 4 records: too few for any verdict
    assert summary.degrees_of_freedom == 9
    assert summary.p_value == pytest.approx(0.7399, abs=1e-4)
    assert summary.mean_top_score == 1.0  # one-hot scores are probabilities already
    table = statistics.format_table(summary)
    assert "no verdict: 4 records, under the 1000" in table and "DRIFT" not in table
    assert "2025-03-01 13:00" in table
    png = chart.plot(summary, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_record_without_a_class_is_its_own_bin_and_leaves_no_probability(tmp_path):
    """A V2 answer whose scores held a NaN is captured with `"prediction": null` (and an
    infinity written null among its scores): both engines count it as the class `none`,
    which the test set never holds (so it weighs as drift), and take the mean top-class
    probability over the records whose scores are all numbers; the table and the chart
    name it."""
    from pipeline.predictions import engine

    write_parts(str(tmp_path))
    broken = np.zeros((2, 10), dtype=np.float32)
    broken[0, 3], broken[1] = np.nan, np.eye(10, dtype=np.float32)[6]
    broken[1, 0] = np.inf  # a class (0), but its scores give no probability
    sink = open_sink(str(tmp_path))
    entry = Pending(NOON + 120, "/v2/infer", "nan", INFO, broken, None, 0.004)
    for part in encode_parts([entry], "dev", PartNamer()):
        sink.put(part.key, part.body)
    store = parts.open_store(str(tmp_path))
    labels = np.repeat(np.arange(10), 100)
    by_python = statistics.summarise(parts.read_records(store, "dev"), "dev", labels)
    by_engine = statistics.summary(engine.aggregate_store(store, "dev"), "dev", labels)
    for summary in (by_python, by_engine):
        assert summary.total == 6
        assert summary.per_class == {None: 1, 0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
        assert summary.mean_top_score == 1.0  # the four one-hot records only
        assert summary.chi_square == math.inf  # a bin the test set never holds
        shares = np.array([1 / 6] * 5 + [0] * 5 + [1 / 6])  # classes 0-9, then none
        expected = np.array([0.1] * 10 + [0.0])
        assert summary.tvd == pytest.approx(0.5 * np.abs(shares - expected).sum())
    table = statistics.format_table(by_engine)
    assert " none         1    16.7%      0.0%   +16.7%" in table
    assert chart.plot(by_engine, tmp_path / "chart.png").stat().st_size > 1000


class StopAfterCommit(Exception):
    pass


def stop_after_commit(step: str) -> None:
    if step == "committed":
        raise StopAfterCommit


def test_report_figures_equal_a_direct_computation_over_the_requests_written(tmp_path):
    """The DuckDB engine against numpy over the requests themselves: batches, an hour only
    in a merged object, an hour in parts and in a merged object at once (a compaction
    stopped before deleting its parts), a class never predicted in one hour, and a
    `--since` exactly at a record's time."""
    from pipeline.predictions import compact, engine

    rng = np.random.default_rng(2)
    hours = [datetime(2025, 3, 1, 10 + h, tzinfo=UTC) for h in range(3)]
    requests = []
    for n in range(600):
        rows = int(rng.choice([1, 1, 4, 16]))
        classes = rng.integers(0, 10, rows)
        classes = np.where(classes == 7, 8, classes) if n % 3 == 2 else classes
        scores = np.eye(10, dtype=np.float32)[classes]
        moment = hours[n % 3].timestamp() + rng.uniform(0, 3599)
        requests.append(
            Pending(moment, "/v2/infer", f"r{n}", INFO, scores, None, rng.gamma(2, 0.002))
        )
    sink, namer = open_sink(str(tmp_path)), PartNamer()
    requests.sort(key=lambda request: request.answered_at)
    for start in range(0, len(requests), 7):
        for part in encode_parts(requests[start : start + 7], "dev", namer):
            sink.put(part.key, part.body)
    store = parts.open_store(str(tmp_path))
    compact.compact(store, "dev", hour=hours[0], now=hours[0] + timedelta(days=1))
    with pytest.raises(StopAfterCommit):
        compact.compact(
            store,
            "dev",
            hour=hours[1],
            now=hours[0] + timedelta(days=1),
            checkpoint=stop_after_commit,
        )
    labels = np.repeat(np.arange(10), 100)
    since_ms = sorted(int(r.answered_at * 1000) for r in requests)[300]
    for since in (None, datetime.fromtimestamp(since_ms / 1000, UTC)):
        kept = [r for r in requests if since is None or int(r.answered_at * 1000) >= since_ms]
        summary = statistics.summary(engine.aggregate_store(store, "dev", since), "dev", labels)
        classes = np.concatenate([r.scores.argmax(axis=1) for r in kept])
        latencies = [round(r.latency_seconds * 1e6) / 1000 for r in kept]  # once a request
        shares = np.bincount(classes, minlength=10) / len(classes)
        assert summary.total == len(classes)
        assert summary.tvd == pytest.approx(0.5 * np.abs(shares - 0.1).sum())
        floored = np.maximum(shares, 1e-4)
        assert summary.psi == pytest.approx(((floored - 0.1) * np.log(floored / 0.1)).sum())
        assert list(summary.latency_ms.values()) == pytest.approx(
            [*np.percentile(latencies, [50, 90, 99]), max(latencies)]
        )
        last = next(entry for entry in summary.hours if entry.hour == "2025-03-01 12:00")
        hour = [r.scores.argmax(axis=1) for r in kept if r.answered_at >= hours[2].timestamp()]
        counts = np.bincount(np.concatenate(hour), minlength=10)
        assert counts[7] == 0
        hour_shares = np.maximum(counts / counts.sum(), 1e-4)
        assert last.records == sum(len(classes) for classes in hour)
        assert last.psi == pytest.approx(((hour_shares - 0.1) * np.log(hour_shares / 0.1)).sum())


def test_matching_distributions_show_no_drift():
    records = [{"prediction": c, "time": "2025-03-01T12:00:00.000Z"} for c in range(10)] * 150
    summary = statistics.summarise(records, "dev", np.repeat(np.arange(10), 3))
    assert summary.tvd == 0 and summary.psi == 0 and summary.p_value == pytest.approx(1.0)
    assert summary.enough and not summary.drifted
    assert "no drift" in statistics.drift_verdict(summary)


def synthetic(hour: int, classes: np.ndarray, confidence: float, pixels: np.ndarray) -> list[dict]:
    """Records of one hour: predicted `classes`, probability `confidence` on the class,
    each record's inputs of mean value `pixels[n]`."""
    rows = []
    for n, label in enumerate(classes):
        scores = np.full(10, (1 - confidence) / 9)
        scores[label] = confidence
        rows.append(
            {
                "id": f"{hour}-{n}",
                "time": f"2025-03-01T{hour:02d}:{n % 60:02d}:00.000Z",
                "prediction": int(label),
                "scores": scores.tolist(),
                "inputs": [float(pixels[n])] * 4,
            }
        )
    return rows


def test_drift_figures_on_shifted_and_unshifted_captures():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, 10_000)
    test_means = rng.normal(33.0, 8.0, 10_000)
    steady = synthetic(10, rng.choice(labels, 2000), 0.95, rng.normal(33.0, 8.0, 2000))
    # An hour where half the traffic became class 1, confidence fell and inputs darkened;
    # and an hour too small for a verdict.
    half_ones = np.where(rng.random(2000) < 0.5, 1, rng.choice(labels, 2000))
    shifted = synthetic(11, half_ones, 0.6, rng.normal(12.0, 8.0, 2000))
    few = synthetic(12, np.array([3] * 20), 0.95, rng.normal(33.0, 8.0, 20))
    calm = statistics.summarise(steady, "dev", labels, lambda: test_means)
    assert calm.tvd < 0.05 and calm.psi < 0.01 and not calm.drifted
    assert calm.mean_top_score == pytest.approx(0.95)
    assert calm.input_psi < statistics.PSI_MODERATE
    moved = statistics.summarise(steady + shifted + few, "dev", labels, lambda: test_means)
    by_hour = {entry.hour[-5:-3]: entry for entry in moved.hours}
    assert by_hour["10"].tvd < 0.05 and by_hour["10"].psi < 0.01
    assert by_hour["11"].tvd > 0.4 and by_hour["11"].psi > statistics.PSI_SIGNIFICANT
    assert by_hour["11"].mean_top_score == pytest.approx(0.6)
    assert by_hour["11"].mean_input == pytest.approx(12, abs=0.5)
    assert not by_hour["12"].enough and by_hour["12"].tvd > 0.8  # large, yet no verdict
    assert moved.drifted and moved.input_psi > statistics.PSI_SIGNIFICANT
    table = statistics.format_table(moved)
    assert "DRIFT" in table and "under 1000 records: no verdict" in table
    # The input PSI is judged by the same bands as the classes'.
    assert "DRIFT: the inputs moved away from the test set's" in table
    assert "the inputs match the test set's" in statistics.format_table(calm)
    assert "no verdict (20 records with inputs" in statistics.format_table(
        statistics.summarise(few, "dev", labels, lambda: test_means)
    )


def test_each_hour_gets_its_own_verdict_by_the_overall_rule():
    # A calm day in which one hour moved (half its predictions became 1s: TVD 0.45) and one
    # hour tilted (class 7 fell to 2 %, class 0 rose to 18 %: TVD 0.08, PSI 0.18).
    labels = np.repeat(np.arange(10), 100)
    even = np.tile(np.arange(10), 100)
    moved = np.concatenate([np.ones(500, int), np.tile(np.arange(10), 50)])
    tilted = np.repeat(np.arange(10), [180, 100, 100, 100, 100, 100, 100, 20, 100, 100])
    records = [r for hour in range(18) for r in synthetic(hour, even, 0.9, np.zeros(1000))]
    records += synthetic(18, moved, 0.9, np.zeros(1000)) + synthetic(
        19, tilted, 0.9, np.zeros(1000)
    )
    summary = statistics.summarise(records, "dev", labels)
    assert summary.tvd < statistics.TVD_THRESHOLD and not summary.drifted
    by_hour = {entry.hour[11:13]: entry for entry in summary.hours}
    assert by_hour["18"].tvd == pytest.approx(0.45)
    assert by_hour["19"].tvd == pytest.approx(0.08) and by_hour["19"].psi == pytest.approx(
        0.08 * np.log(5) + 0.08 * np.log(1.8)
    )
    rows = {
        line[11:13]: line
        for line in statistics.format_table(summary).splitlines()
        if line.startswith("2025-03-01 ")
    }
    assert rows["17"].endswith("no drift") and rows["18"].endswith("DRIFT")
    assert rows["19"].endswith("moderate shift (PSI above 0.1)")


def test_top_class_probability_of_logits_and_of_probabilities():
    logits = np.array([[0.0, 0.0], [10.0, 0.0]])
    assert statistics.top_probabilities(logits) == pytest.approx([0.5, 1 / (1 + np.exp(-10))])
    assert statistics.top_probabilities(np.array([[0.2, 0.8]])) == pytest.approx([0.8])


def test_chi_square_p_values_match_known_values():
    assert statistics.chi_square_p_value(16.919, 9) == pytest.approx(0.05, abs=1e-4)
    assert statistics.chi_square_p_value(3.841, 1) == pytest.approx(0.05, abs=1e-4)
    assert statistics.chi_square_p_value(2.0, 9) == pytest.approx(0.99147, abs=1e-4)


def test_report_command_prints_a_table_and_writes_the_chart(tmp_path, capsys, monkeypatch):
    write_parts(str(tmp_path / "captures"))
    monkeypatch.chdir(tmp_path)
    assert main(["report", "dev", "--url", str(tmp_path / "captures")]) == 0
    out = capsys.readouterr().out
    assert "predictions in dev: 4 records" in out and "total variation distance" in out
    assert (tmp_path / "reports/predictions-dev.png").stat().st_size > 1000


@pytest.mark.integration
def test_parts_on_s3_are_gzip_json_lines_that_logs_reads_back(aws, capsys):
    boto3.client("s3").create_bucket(Bucket="captures")
    write_parts("s3://captures/predictions")
    write_parts("s3://captures/predictions", env="prod")
    s3 = boto3.client("s3")
    listing = s3.list_objects_v2(Bucket="captures", Prefix="predictions/dev/")["Contents"]
    assert [item["Key"][:31] for item in listing] == [
        "predictions/dev/2025/03/01/12/2",
        "predictions/dev/2025/03/01/13/2",
    ]
    body = s3.get_object(Bucket="captures", Key=listing[0]["Key"])["Body"].read()
    assert [json.loads(line)["id"] for line in gzip.decompress(body).splitlines()] == [
        "a",
        "b-0",
        "b-1",
    ]
    assert main(["logs", "dev", "--url", "s3://captures/predictions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["c", "b-1", "b-0", "a"]
    assert main(["logs", "dev", "--url", "s3://missing-bucket/x"]) == 2
    assert "bucket 'missing-bucket' does not exist" in capsys.readouterr().err


_SCORE = st.one_of(
    st.floats(-20, 20, width=32),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0]),
)


@st.composite
def captured_requests(draw) -> list[Pending]:
    """1 to 30 requests of 1 to 3 rows over about three hours, scores of four classes with
    NaN and the infinities among them, in answer order."""
    entries = []
    start = draw(st.floats(1_740_000_000, 1_760_000_000))
    for index in range(draw(st.integers(1, 30))):
        rows = draw(st.integers(1, 3))
        scores = np.array(
            [draw(st.lists(_SCORE, min_size=4, max_size=4)) for _ in range(rows)], np.float32
        )
        moment, latency = start + draw(st.floats(0, 10_000)), draw(st.floats(0, 1))
        entries.append(Pending(moment, "/v2/infer", f"r{index}", INFO, scores, None, latency))
    return sorted(entries, key=lambda entry: entry.answered_at)


@settings(max_examples=40, deadline=None)
@given(entries=captured_requests())
def test_the_local_engine_aggregates_generated_records_as_the_python_reference(
    tmp_path_factory, entries
):
    """DuckDB (`engine.aggregate_store`) against the Python reference
    (`statistics.aggregate`) on the same parts: classes per hour (a row holding a NaN as
    None), models, first and last time, latency percentiles, and the top-class
    probability's sum and count over the records whose scores are all numbers."""
    from pipeline.predictions import engine

    directory = tmp_path_factory.mktemp("capture")
    sink = open_sink(str(directory))
    for part in encode_parts(entries, "dev", PartNamer()):
        sink.put(part.key, part.body)
    store = parts.open_store(str(directory))
    reference = statistics.aggregate(parts.read_records(store, "dev"))
    computed = engine.aggregate_store(store, "dev", None)
    assert computed.classes == reference.classes
    assert (computed.models, computed.first, computed.last) == (
        reference.models,
        reference.first,
        reference.last,
    )
    assert computed.latency_ms == pytest.approx(reference.latency_ms)
    assert computed.top.keys() == reference.top.keys()
    for hour, (total, count) in reference.top.items():
        assert computed.top[hour][1] == count
        assert computed.top[hour][0] == pytest.approx(total, rel=1e-6, abs=1e-9)
