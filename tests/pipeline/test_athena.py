"""`report --engine athena`: the report's queries, sent to the environment's workgroup."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from pipeline.cli import main
from pipeline.predictions import athena
from pipeline.predictions.store import PredictionLogError
from tests.pipeline.inprocess import Clock

pytestmark = pytest.mark.integration

WORKGROUP, DATABASE = "onnx-ship-dev", "onnx_ship_dev_capture"


def answer(endpoint: str, *results: list[list[str | None]]) -> None:
    """Queue moto's answers to the next queries, in the order they start (None: a NULL,
    which GetQueryResults answers as a cell without `VarCharValue`)."""
    body = {
        "results": [
            {"rows": [{"Data": [_cell(value) for value in row]} for row in rows]}
            for rows in results
        ]
    }
    request = urllib.request.Request(
        f"{endpoint}/moto-api/static/athena/query-results",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()


def _cell(value: str | None) -> dict:
    return {} if value is None else {"VarCharValue": value}


def test_report_through_athena_reads_the_three_queries(aws, monkeypatch, capsys, tmp_path):
    client = boto3.client("athena")
    client.create_work_group(
        Name=WORKGROUP,
        Configuration={
            "ResultConfiguration": {"OutputLocation": "s3://bucket/athena-results/dev/"},
            "BytesScannedCutoffPerQuery": 10 * 1024**3,
        },
    )
    monkeypatch.setenv("DEV_ATHENA_WORKGROUP", WORKGROUP)
    monkeypatch.setenv("DEV_GLUE_DATABASE", DATABASE)
    # The workgroup is in the environment's region; the shell's default is another.
    monkeypatch.setenv("DEV_AWS_REGION", client.meta.region_name)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    classes = [["label", "prediction", "_col2", "_col3", "_col4"]] + [
        ["2025-03-01 12:00", str(c), "150", str(150 * 0.9), "150"] for c in range(10)
    ]
    # Records whose scores held a NaN: no class (NULL) and no top-class probability.
    classes.append(["2025-03-01 12:00", None, "3", None, "0"])
    models = [["_col0", "_col1"], ["mnist-8 1", "1500"]]
    requests = [
        ["_col0"] * 6,
        ["2025-03-01T12:30:00.000Z", "2025-03-01T12:59:59.000Z", "2.0", "3.0", "5.5", "9.0"],
    ]
    answer(aws.endpoint, classes, models, requests)
    chart = tmp_path / "chart.png"
    command = ["report", "dev", "--engine", "athena", "--since", "2025-03-01T12:30"]
    assert main([*command, "--no-baseline", "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "predictions in dev: 1503 records from 2025-03-01T12:30:00.000Z" in out
    assert "p99 5.50" in out and "mean top-class probability: 0.900" in out
    assert " none         3     0.2%" in out
    assert chart.stat().st_size > 1000
    executions = client.list_query_executions(WorkGroup=WORKGROUP)["QueryExecutionIds"]
    sent = [client.get_query_execution(QueryExecutionId=e)["QueryExecution"] for e in executions]
    assert len(sent) == 3
    for query in sent:
        assert f'"{DATABASE}"."predictions"' in query["Query"]
        # The partition bounds the scan; the time bounds the records.
        assert "hour >= '2025/03/01/12'" in query["Query"]
        assert "time >= '2025-03-01T12:30:00.000Z'" in query["Query"]
        assert query["QueryExecutionContext"]["Database"] == DATABASE


def test_athena_without_the_environment_names_the_outputs(aws, monkeypatch, capsys):
    monkeypatch.setenv("TERRAFORM_DIR", "/nonexistent")
    assert main(["report", "prod", "--engine", "athena", "--no-baseline"]) == 2
    assert "athena_workgroup is unknown" in capsys.readouterr().err


def test_a_record_whose_scores_hold_a_null_gives_no_top_class_probability():
    """The classes query counts the probabilities it sums (`count` of the expression, which
    is NULL for scores holding a null: a NaN or an infinity), as the local engine does;
    Athena's SQL is not run here, so the clause itself is what is checked."""
    sql = athena.queries('"db"."predictions"', None)["classes"]
    assert "WHEN cardinality(filter(scores, x -> x IS NULL)) > 0 THEN NULL" in sql
    assert f"sum({athena.TOP_PROBABILITY}), count({athena.TOP_PROBABILITY})" in sql


def test_the_hour_bound_is_the_part_formats_directory():
    from datetime import UTC, datetime

    sql = athena.queries('"d"."t"', datetime(2025, 3, 1, 7, 5, tzinfo=UTC))["classes"]
    assert "hour >= '2025/03/01/07'" in sql


def test_each_record_counts_once_while_parts_and_their_merged_object_coexist():
    """The window between a compaction's commit and the parts' deletion: the hour holds
    records a, b and c in parts and in the merged object, and a late part holds d. The
    queries' record source keeps one copy of each, the merged one, and keeps distinct
    records that share a client-given request id. Run on DuckDB, which reads the same
    SQL for this clause (`"$path"` is Athena's pseudo-column, here a column)."""
    import duckdb

    hour = "2025/03/01/12"
    base = f"s3://b/capture/dev/{hour}/"
    merged = f"{base}compacted-1-abc-0.jsonl.gz"
    rows = [
        # id, request_id, time, row, object
        ("a", "a", "2025-03-01T12:00:01.000Z", 0, f"{base}20250301T120001Z-h-1-x-1.jsonl.gz"),
        ("b", "b", "2025-03-01T12:00:02.000Z", 0, f"{base}20250301T120001Z-h-1-x-1.jsonl.gz"),
        ("c", "c", "2025-03-01T12:00:03.000Z", 0, f"{base}20250301T120003Z-h-1-x-2.jsonl.gz"),
        ("a", "a", "2025-03-01T12:00:01.000Z", 0, merged),
        ("b", "b", "2025-03-01T12:00:02.000Z", 0, merged),
        ("c", "c", "2025-03-01T12:00:03.000Z", 0, merged),
        ("d", "d", "2025-03-01T12:59:59.000Z", 0, f"{base}20250301T125959Z-h-1-x-9.jsonl.gz"),
        # the same client request id twice, a second apart: two records
        ("r", "r", "2025-03-01T12:10:00.000Z", 0, f"{base}20250301T121000Z-h-2-y-1.jsonl.gz"),
        ("r", "r", "2025-03-01T12:10:01.000Z", 0, f"{base}20250301T121001Z-h-2-y-2.jsonl.gz"),
    ]
    connection = duckdb.connect()
    connection.execute(
        'CREATE TABLE t (hour VARCHAR, id VARCHAR, request_id VARCHAR, time VARCHAR, "row" INT, '
        '"$path" VARCHAR)'
    )
    connection.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", [(hour, *row) for row in rows]
    )
    source = athena.deduplicated("t", f"hour >= '{hour}'")
    kept = connection.execute(f'SELECT id, time, "$path" FROM {source} ORDER BY time').fetchall()
    assert [(record_id, path == merged) for record_id, _, path in kept] == [
        ("a", True),
        ("b", True),
        ("c", True),
        ("r", False),
        ("r", False),
        ("d", False),
    ]
    # The report's three queries read every record through it.
    for sql in athena.queries('"d"."predictions"', None).values():
        assert athena.deduplicated('"d"."predictions"', "TRUE") in sql


# -- queries the report stops waiting for ----------------------------------------------


@pytest.fixture
def scripted_athena() -> Iterator[tuple[Any, Stubber]]:
    """A real boto3 Athena client whose answers are scripted, in order (botocore's Stubber
    checks each request and answer against Athena's service model)."""
    client = boto3.client(
        "athena",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def state(stubber: Stubber, execution: str, current: str, reason: str = "") -> None:
    """GetQueryExecution of `execution` answers `current` (and the reason Athena gives)."""
    status = {"State": current, **({"StateChangeReason": reason} if reason else {})}
    stubber.add_response(
        "get_query_execution",
        {"QueryExecution": {"QueryExecutionId": execution, "Status": status}},
        {"QueryExecutionId": execution},
    )


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(athena, "time", clock.as_time_module())
    monkeypatch.setattr(athena, "QUERY_TIMEOUT_SECONDS", 2)
    return clock


def test_a_query_past_the_bound_is_stopped_before_the_report_gives_up(scripted_athena, clock):
    """Athena runs a query nobody waits for until it ends or the workgroup's byte limit
    cancels it, billing what it scans (Athena API reference, StopQueryExecution)."""
    client, stubber = scripted_athena
    for _ in range(4):  # at 0, 1, 2 and 3 s; past 2 s it stops waiting
        state(stubber, "q1", "RUNNING")
    stubber.add_response("stop_query_execution", {}, {"QueryExecutionId": "q1"})
    with pytest.raises(PredictionLogError) as raised:
        athena.rows(client, "q1", WORKGROUP, DATABASE)
    assert str(raised.value) == (
        f"Athena query q1 in workgroup {WORKGROUP}: still RUNNING after 2 s; stopped it"
    )
    assert clock.slept == [1.0, 1.0, 1.0]


def test_a_query_that_cannot_be_stopped_says_how_to_stop_it(scripted_athena, clock):
    client, stubber = scripted_athena
    for _ in range(4):
        state(stubber, "q1", "QUEUED")
    stubber.add_client_error("stop_query_execution", "AccessDeniedException", "no", 400)
    with pytest.raises(PredictionLogError) as raised:
        athena.rows(client, "q1", WORKGROUP, DATABASE)
    assert str(raised.value) == (
        f"Athena query q1 in workgroup {WORKGROUP}: still QUEUED after 2 s, and stopping it "
        "failed (An error occurred (AccessDeniedException) when calling the "
        "StopQueryExecution operation: no): it runs until it finishes or the workgroup's "
        "byte limit cancels it, unless you stop it: aws athena stop-query-execution "
        "--query-execution-id q1"
    )


def test_a_failed_query_stops_the_report_queries_not_read_yet(scripted_athena, clock):
    client, stubber = scripted_athena
    for execution in ("q1", "q2", "q3"):
        stubber.add_response("start_query_execution", {"QueryExecutionId": execution})
    state(stubber, "q1", "FAILED", "Query exhausted resources at this scale factor")
    for execution in ("q2", "q3"):
        stubber.add_response("stop_query_execution", {}, {"QueryExecutionId": execution})
    with pytest.raises(PredictionLogError, match="exhausted resources"):
        athena.aggregate(client, WORKGROUP, DATABASE)


def results(stubber: Stubber, execution: str, header: list[str]) -> None:
    """GetQueryResults of `execution`: its column names and no rows."""
    stubber.add_response(
        "get_query_results",
        {"ResultSet": {"Rows": [{"Data": [{"VarCharValue": name} for name in header]}]}},
        {"QueryExecutionId": execution},
    )


GONE = (
    "HIVE_CURSOR_ERROR: com.amazonaws.services.s3.model.AmazonS3Exception: The specified "
    "key does not exist (Service: Amazon S3; Status Code: 404; Error Code: NoSuchKey)"
)


def test_a_query_that_met_a_deleted_object_runs_once_more(scripted_athena, clock):
    """Compaction deletes the parts it merged; a query that listed one and came to read it
    after fails with HIVE_CURSOR_ERROR, and Athena's remedy is to run it again (Athena
    User Guide, "Troubleshoot issues in Athena")."""
    client, stubber = scripted_athena
    sql = athena.queries(f'"{DATABASE}"."predictions"', None)
    for execution, name in zip(("q1", "q2", "q3"), sql, strict=True):
        stubber.add_response(
            "start_query_execution",
            {"QueryExecutionId": execution},
            {
                "QueryString": sql[name],
                "WorkGroup": WORKGROUP,
                "QueryExecutionContext": {"Database": DATABASE},
            },
        )
    state(stubber, "q1", "FAILED", GONE)
    stubber.add_response(
        "start_query_execution",
        {"QueryExecutionId": "q4"},
        {
            "QueryString": sql["classes"],
            "WorkGroup": WORKGROUP,
            "QueryExecutionContext": {"Database": DATABASE},
        },
    )
    for execution, header in (("q4", ["label"]), ("q2", ["model"]), ("q3", ["first"])):
        state(stubber, execution, "SUCCEEDED")
        results(stubber, execution, header)
    assert athena.aggregate(client, WORKGROUP, DATABASE).models == {}


def test_a_query_that_meets_a_deleted_object_twice_fails_the_report(scripted_athena, clock):
    client, stubber = scripted_athena
    for execution in ("q1", "q2", "q3"):
        stubber.add_response("start_query_execution", {"QueryExecutionId": execution})
    state(stubber, "q1", "FAILED", GONE)
    stubber.add_response("start_query_execution", {"QueryExecutionId": "q4"})
    state(stubber, "q4", "FAILED", GONE)
    for execution in ("q2", "q3"):
        stubber.add_response("stop_query_execution", {}, {"QueryExecutionId": execution})
    twice = r"q4 in workgroup .*The specified key.*its second run: .*run the report again"
    with pytest.raises(PredictionLogError, match=twice):
        athena.aggregate(client, WORKGROUP, DATABASE)
