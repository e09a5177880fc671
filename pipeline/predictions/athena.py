"""The report through Athena: the same aggregates, computed where the capture lives.

`report <env> --engine athena` runs three queries on the environment's workgroup over
its Glue table (`terraform/modules/capture_catalog`): class counts and top-class
probabilities per hour, records per model, and time range and latency percentiles.
The `hour` partition limits each scan to the hours asked for (partition projection);
the workgroup cancels a query past its byte limit, which reaches here as the query's
failure reason. Athena (Trino) has no exact percentile: `approx_percentile` is within
about 1% of rank (Athena user guide, "Functions in Amazon Athena", Trino docs,
"approx_percentile"). Captured inputs are not read: the input statistic is local only.

Between a compaction's commit and the deletion of the parts it covers (seconds), an
hour holds each of those records twice: in its part and in a merged object, and Athena
reads every data object of the hour (the manifest, whose name starts with `_`, says
which copy counts, but Athena skips it). So every query reads `deduplicated(...)`: one
copy of each record, the merged object's when there is one (Athena's `"$path"`
pseudo-column names the object a row comes from: Athena user guide, "Getting the file
locations for source data in Amazon S3"). A part and the merged object hold the same
bytes for a record, so they agree on `id`, `request_id`, `time` and `row`.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from pipeline.predictions.statistics import Aggregates, class_key
from pipeline.predictions.store import PredictionLogError, _iso
from service.capture import partformat

# A report's queries scan at most the workgroup's byte limit; this bounds the wait.
QUERY_TIMEOUT_SECONDS = 600
POLL_SECONDS = 1.0
_FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")
# Why a query fails when an object it listed is deleted before it reads it, as compaction
# deletes the parts it merged; Athena's remedy is to run the query again (Athena User
# Guide, "Troubleshoot issues in Athena": HIVE_CURSOR_ERROR ... AmazonS3Exception: The
# specified key does not exist).
OBJECT_GONE = "The specified key does not exist"

# The same rule as statistics.top_probabilities and engine.TOP_PROBABILITY.
# NULL for a record whose scores hold a null (a NaN or an infinity): no probability, as
# the other engines count it (statistics._add_top).
TOP_PROBABILITY = """CASE
    WHEN cardinality(filter(scores, x -> x IS NULL)) > 0 THEN NULL
    WHEN array_min(scores) >= 0
         AND abs(reduce(scores, 0e0, (s, x) -> s + x, s -> s) - 1) <= 1e-3
    THEN array_max(scores)
    ELSE 1 / reduce(scores, 0e0, (s, x) -> s + exp(x - array_max(scores)), s -> s)
END"""
HOUR_LABEL = "concat(replace(substr(time, 1, 13), 'T', ' '), ':00')"


# One copy of each record: the one in a merged object when a part still holds it too.
# terraform/modules/capture_catalog's saved queries use the same clause (a test compares).
RECORD_KEY = 'hour, id, request_id, time, "row"'
MERGED_FIRST = f"strpos(\"$path\", '/{partformat.COMPACTED_PREFIX}') DESC"


def deduplicated(table: str, condition: str) -> str:
    """A subquery of `table`'s rows matching `condition` (which bounds the `hour`
    partition, so the scan stays within it), each record once (see the module's doc)."""
    return f"""(SELECT * FROM (SELECT *, row_number() OVER (
            PARTITION BY {RECORD_KEY} ORDER BY {MERGED_FIRST}) AS copy
        FROM {table} WHERE {condition}) AS copies WHERE copy = 1) AS records"""


def queries(table: str, since: datetime | None) -> dict[str, str]:
    """The report's SQL over `table` ("database"."table"), records at or after `since`."""
    condition = "TRUE"
    if since is not None:
        since = since.astimezone(UTC)
        hour = since.strftime(partformat.HOUR_STRFTIME)
        condition = f"hour >= '{hour}' AND time >= '{_iso(since)}'"
    records = deduplicated(table, condition)
    return {
        "classes": f"""SELECT {HOUR_LABEL} AS label, prediction, count(*),
            sum({TOP_PROBABILITY}), count({TOP_PROBABILITY}) FROM {records} GROUP BY 1, 2""",
        "models": f"""SELECT concat(model.name, ' ', model.version), count(*)
            FROM {records} GROUP BY 1""",
        "requests": f"""SELECT min(time), max(time),
            approx_percentile(latency_ms, 0.5), approx_percentile(latency_ms, 0.9),
            approx_percentile(latency_ms, 0.99), max(latency_ms)
            FROM {records} WHERE "row" = 0""",
    }


def start(client: Any, sql: str, workgroup: str, database: str) -> str:
    """StartQueryExecution: the query's execution id."""
    try:
        return client.start_query_execution(
            QueryString=sql, WorkGroup=workgroup, QueryExecutionContext={"Database": database}
        )["QueryExecutionId"]
    except Exception as exc:  # botocore's ClientError/BotoCoreError: name them, say what to do
        raise _failure(workgroup, database, exc) from None


def rows(client: Any, execution: str, workgroup: str, database: str) -> list[list[str | None]]:
    """A started query's rows (header dropped), values as Athena returns them: strings or
    None. Raises PredictionLogError with Athena's reason when the query fails, is
    cancelled (the workgroup's byte limit) or runs past QUERY_TIMEOUT_SECONDS; a query
    past that bound is stopped first (`stop`)."""
    try:
        deadline = time.monotonic() + QUERY_TIMEOUT_SECONDS
        while True:
            status = client.get_query_execution(QueryExecutionId=execution)["QueryExecution"][
                "Status"
            ]
            if status["State"] in _FINISHED:
                break
            if time.monotonic() > deadline:
                raise PredictionLogError(_stopped_waiting(client, execution, workgroup, status))
            time.sleep(POLL_SECONDS)
        if status["State"] != "SUCCEEDED":
            reason = status.get("StateChangeReason") or f"still {status['State']}"
            failed = ObjectGoneError if OBJECT_GONE in reason else PredictionLogError
            raise failed(f"Athena query {execution} in workgroup {workgroup}: {reason}")
        found: list[list[str | None]] = []
        pages = client.get_paginator("get_query_results").paginate(QueryExecutionId=execution)
        for page in pages:
            found += [
                [cell.get("VarCharValue") for cell in row["Data"]]
                for row in page["ResultSet"]["Rows"]
            ]
    except PredictionLogError:
        raise
    except Exception as exc:
        raise _failure(workgroup, database, exc) from None
    return found[1:]  # the first row of a SELECT's results is its column names


class ObjectGoneError(PredictionLogError):
    """A query failed because an object it listed was gone when it came to read it."""


def stop(client: Any, execution: str) -> str:
    """Stop a query nothing waits for any more: "" once stopped, else why not.

    Athena runs a query until it finishes or the workgroup's byte limit cancels it,
    whether or not anyone still waits for it, and bills the bytes it scans;
    StopQueryExecution ends it (Athena API reference, StopQueryExecution), which takes
    athena:StopQueryExecution on the workgroup.
    """
    try:
        client.stop_query_execution(QueryExecutionId=execution)
    except Exception as exc:  # botocore's ClientError/BotoCoreError
        return str(exc)
    return ""


def _stopped_waiting(client: Any, execution: str, workgroup: str, status: dict[str, Any]) -> str:
    """The message of a query past QUERY_TIMEOUT_SECONDS, which it stops first."""
    waited = (
        f"Athena query {execution} in workgroup {workgroup}: still {status['State']} after "
        f"{QUERY_TIMEOUT_SECONDS} s"
    )
    refused = stop(client, execution)
    if not refused:
        return f"{waited}; stopped it"
    return (
        f"{waited}, and stopping it failed ({refused}): it runs until it finishes or the "
        "workgroup's byte limit cancels it, unless you stop it: aws athena "
        f"stop-query-execution --query-execution-id {execution}"
    )


def _failure(workgroup: str, database: str, exc: Exception) -> PredictionLogError:
    return PredictionLogError(
        f"Athena (workgroup {workgroup}, database {database}): {exc}; are AWS credentials "
        "and region set, and was the environment applied (nox -s apply -- <env>)?"
    )


def aggregate(
    client: Any, workgroup: str, database: str, since: datetime | None = None
) -> Aggregates:
    """The report's aggregates from Athena (the three queries started at once). A query
    that failed because an object it listed was deleted meanwhile (ObjectGoneError) runs
    once more. Raises PredictionLogError when a query fails, after stopping those not
    read yet."""
    sql = queries(f'"{database}"."predictions"', since)
    started = {name: start(client, text, workgroup, database) for name, text in sql.items()}
    answers: dict[str, list[list[str | None]]] = {}
    try:
        for name, execution in started.items():
            try:
                answers[name] = rows(client, execution, workgroup, database)
            except ObjectGoneError:
                again = start(client, sql[name], workgroup, database)
                try:
                    answers[name] = rows(client, again, workgroup, database)
                except ObjectGoneError as exc:
                    raise ObjectGoneError(
                        f"{exc} (its second run: a compaction deleted objects it had listed "
                        "both times; run the report again)"
                    ) from None
    except PredictionLogError:
        # The report gives up: the queries it has not read yet would run on, scanning.
        for execution in list(started.values())[len(answers) + 1 :]:
            stop(client, execution)
        raise
    result = Aggregates()
    top: dict[str, list[float]] = {}
    for label, prediction, count, total, scored in answers["classes"]:
        result.classes.setdefault(str(label), Counter())[class_key(prediction)] = int(count)
        entry = top.setdefault(str(label), [0.0, 0])
        entry[0] += float(total or 0.0)
        entry[1] += int(scored)
    result.top = {label: (total, int(count)) for label, (total, count) in top.items() if count}
    for model, count in answers["models"]:
        result.models[str(model)] = int(count)
    if answers["requests"] and answers["requests"][0][0] is not None:
        first, last, p50, p90, p99, slowest = answers["requests"][0]
        result.first, result.last = first, last
        if p50 is not None:
            result.latency_ms = {
                "p50": float(p50),
                "p90": float(p90),
                "p99": float(p99),
                "max": float(slowest),
            }
    return result
