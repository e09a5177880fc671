"""`report --engine athena`: the report's queries, sent to the environment's workgroup."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest

from pipeline.cli import main
from pipeline.predictions import athena

pytestmark = pytest.mark.integration

WORKGROUP, DATABASE = "onnx-ship-dev", "onnx_ship_dev_capture"


def answer(endpoint: str, *results: list[list[str]]) -> None:
    """Queue moto's answers to the next queries, in the order they start."""
    body = {
        "results": [
            {"rows": [{"Data": [{"VarCharValue": value} for value in row]} for row in rows]}
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
    classes = [["label", "prediction", "_col2", "_col3"]] + [
        ["2025-03-01 12:00", str(c), "150", str(150 * 0.9)] for c in range(10)
    ]
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
    assert "predictions in dev: 1500 records from 2025-03-01T12:30:00.000Z" in out
    assert "p99 5.50" in out and "mean top-class probability: 0.900" in out
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


def test_the_hour_bound_is_the_part_formats_directory():
    from datetime import UTC, datetime

    sql = athena.queries('"d"."t"', datetime(2025, 3, 1, 7, 5, tzinfo=UTC))["classes"]
    assert "hour >= '2025/03/01/07'" in sql
