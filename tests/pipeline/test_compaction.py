"""Compaction: an hour's parts merged exactly once, whatever step a run stops at."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.predictions import compact as compaction
from pipeline.predictions import store as parts
from service.capture import partformat
from service.capture.records import PartNamer, Pending, encode_parts
from service.capture.sinks import open_sink
from service.model import ModelInfo
from service.store import LocalStore, S3Store

INFO = ModelInfo("mnist-8", "1", "cd" * 32)
NOON = datetime(2025, 3, 1, 12, tzinfo=UTC)
LATER = NOON + timedelta(days=1)


def capture(url: str, hour: datetime, requests: int, first: int = 0, per_part: int = 4) -> None:
    """`requests` single-row requests in `hour`, `per_part` to a part (as one task writes)."""
    sink = open_sink(url)
    namer = PartNamer()
    scores = np.eye(10, dtype=np.float32)
    entries = [
        Pending(
            hour.timestamp() + 1 + n,
            "/predict",
            f"r{first + n}",
            INFO,
            scores[[n % 10]],
            None,
            0.002,
        )
        for n in range(requests)
    ]
    for start in range(0, requests, per_part):
        for part in encode_parts(entries[start : start + per_part], "dev", namer):
            assert sink.put(part.key, part.body)


def ids(store: parts.PartStore) -> Counter:
    return Counter(record["id"] for record in parts.read_records(store, "dev"))


def names(store: LocalStore, hour: datetime) -> list[str]:
    return sorted(p.name for p in (store.root / partformat.hour_key("dev", hour)).iterdir())


def test_an_hour_becomes_one_object_and_a_manifest_and_reads_the_same(tmp_path):
    capture(str(tmp_path), NOON, 40)
    capture(str(tmp_path), NOON + timedelta(hours=1), 8, first=100)
    store = parts.open_store(str(tmp_path))
    before = ids(store)
    assert len(names(store, NOON)) == 10
    done = compaction.compact(store, "dev", now=LATER)
    assert [(d.parts, d.records, d.objects, d.generation) for d in done] == [
        (2, 8, 1, 1),
        (10, 40, 1, 1),
    ]
    assert [n[:15] for n in names(store, NOON)] == ["_compacted-0001", "compacted-0001-"]
    assert ids(store) == before and sum(before.values()) == 48
    # Nothing left to do: a second run changes nothing.
    assert [d.generation for d in compaction.compact(store, "dev", now=LATER)] == [0, 0]
    assert ids(store) == before


def test_an_unfinished_hour_is_left_alone_unless_named(tmp_path):
    capture(str(tmp_path), NOON, 8)
    store = parts.open_store(str(tmp_path))
    assert compaction.compact(store, "dev", now=NOON + timedelta(minutes=65)) == []
    done = compaction.compact(store, "dev", hour=NOON, now=NOON + timedelta(minutes=65))
    assert [d.records for d in done] == [8]


class Stop(Exception):
    pass


def stop_at(wanted: str):
    def checkpoint(step: str) -> None:
        if step == wanted:
            raise Stop(step)

    return checkpoint


@pytest.mark.parametrize("step", ["cleaned", "written", "verified", "committed"])
def test_a_run_stopped_after_any_step_loses_and_duplicates_nothing(tmp_path, step):
    capture(str(tmp_path), NOON, 40)
    store = parts.open_store(str(tmp_path))
    before = ids(store)
    with pytest.raises(Stop):
        compaction.compact(store, "dev", now=LATER, checkpoint=stop_at(step))
    assert ids(store) == before  # readers see each record once in the meantime
    compaction.compact(store, "dev", now=LATER)
    assert ids(store) == before
    assert [n[:15] for n in names(store, NOON)] == ["_compacted-0001", "compacted-0001-"]


class DeletesHalfThenFails(LocalStore):
    def delete(self, keys: list[str]) -> None:
        super().delete(keys[: len(keys) // 2])
        raise OSError("the task stopped while deleting")


def test_a_run_stopped_while_deleting_the_parts_is_finished_by_the_next(tmp_path):
    capture(str(tmp_path), NOON, 40)
    before = ids(parts.open_store(str(tmp_path)))
    with pytest.raises(OSError):
        compaction.compact(DeletesHalfThenFails(tmp_path), "dev", now=LATER)
    store = parts.open_store(str(tmp_path))
    assert len(names(store, NOON)) == 2 + 5  # manifest, merged object, half the parts
    assert ids(store) == before
    (done,) = compaction.compact(store, "dev", now=LATER)
    assert (done.generation, done.cleaned) == (0, 5)
    assert ids(store) == before and len(names(store, NOON)) == 2


def test_parts_arriving_after_a_compaction_are_read_and_merged_next_time(tmp_path):
    capture(str(tmp_path), NOON, 20)
    capture(str(tmp_path), NOON + timedelta(hours=1), 4, first=200)
    store = parts.open_store(str(tmp_path))
    compaction.compact(store, "dev", hour=NOON, now=LATER)
    capture(str(tmp_path), NOON, 6, first=100)  # a spool draining late into a merged hour
    expected = Counter({f"r{n}": 1 for n in [*range(20), *range(100, 106), *range(200, 204)]})
    assert ids(store) == expected  # merged + late parts + an uncompacted hour
    done = compaction.compact(store, "dev", hour=NOON, now=LATER)
    assert [(d.generation, d.records) for d in done] == [(2, 6)]
    assert ids(store) == expected
    assert len([n for n in names(store, NOON) if partformat.is_manifest(n)]) == 2


def test_memory_holds_a_few_parts_not_the_hour(tmp_path):
    """An hour is streamed part by part into its merged object: a busy hour's parts (about
    0.9 GB a task-hour at the scaling target) never sit in memory together."""
    import tracemalloc

    rng = np.random.default_rng(7)
    sink, namer = open_sink(str(tmp_path)), PartNamer()
    for part in range(24):
        entries = [
            Pending(
                NOON.timestamp() + 1 + part,
                "/predict",
                f"r{part}-{n}",
                INFO,
                np.eye(10, dtype=np.float32)[[n % 10]],
                rng.random((1, 784), dtype=np.float32),  # inputs: barely compressible
                0.002,
            )
            for n in range(40)
        ]
        for encoded in encode_parts(entries, "dev", namer):
            assert sink.put(encoded.key, encoded.body)
    store = parts.open_store(str(tmp_path))
    hour_bytes = sum(p.stat().st_size for p in (tmp_path / "dev").rglob("*.gz"))
    largest = max(p.stat().st_size for p in (tmp_path / "dev").rglob("*.gz"))
    assert hour_bytes > 3_000_000
    tracemalloc.start()
    try:
        (done,) = compaction.compact(store, "dev", now=LATER, workers=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (done.parts, done.records, done.objects) == (24, 960, 1)
    # workers * READ_AHEAD parts read ahead, one being written, inflate's pieces.
    assert peak < (2 * compaction.READ_AHEAD + 3) * largest + 2_000_000 < hour_bytes


def test_a_run_on_a_listing_taken_before_another_runs_commit_loses_nothing(tmp_path):
    """The listing `compact` takes of every hour may be minutes old when an hour's turn
    comes: each hour is listed again then, or another run's committed objects would look
    like a stopped run's and be deleted."""
    capture(str(tmp_path), NOON, 40)
    store = parts.open_store(str(tmp_path))
    before = ids(store)
    stale = {}

    def snapshot(step: str) -> None:
        if step == "written":
            stale["hour"] = parts.group_hours(parts.part_keys(store, "dev"))[NOON]

    compaction.compact(store, "dev", now=LATER, checkpoint=snapshot)
    assert stale["hour"].compacted and not stale["hour"].manifests
    done = compaction.compact_hour(store, stale["hour"])
    assert (done.generation, done.cleaned) == (0, 0)
    assert ids(store) == before


def test_two_runs_at_once_both_finish_and_lose_nothing(tmp_path):
    """The schedule's run and a `nox -s compact` at once: the second finds the first's
    merged objects uncommitted but young, writes the same bytes (taken as its own),
    commits; the first's commit finds the same manifest there."""
    import threading

    capture(str(tmp_path), NOON, 40)
    store = parts.open_store(str(tmp_path))
    before = ids(store)
    paused, go, outcome = threading.Event(), threading.Event(), {}

    def pause(step: str) -> None:
        if step == "verified":
            paused.set()
            go.wait(30)

    def first() -> None:
        try:
            outcome["first"] = compaction.compact(store, "dev", now=LATER, checkpoint=pause)
        except Exception as exc:  # reported below
            outcome["first"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    assert paused.wait(30)
    second = compaction.compact(store, "dev", now=LATER)
    go.set()
    thread.join(30)
    assert [d.generation for d in second] == [1]
    assert not isinstance(outcome["first"], Exception), outcome["first"]
    assert [d.generation for d in outcome["first"]] == [1]
    assert ids(store) == before
    assert [n[:15] for n in names(store, NOON)] == ["_compacted-0001", "compacted-0001-"]


def _age(store: LocalStore, hour: datetime, age: timedelta) -> None:
    """Make the hour's uncommitted merged objects `age` old."""
    import os

    moment = (datetime.now(UTC) - age).timestamp()
    for path in (store.root / partformat.hour_key("dev", hour)).iterdir():
        if partformat.is_compacted(path.name):
            os.utime(path, (moment, moment))


@pytest.mark.parametrize("age", [timedelta(minutes=30), timedelta(hours=4)])
def test_a_stopped_runs_objects_are_removed_only_once_orphan_age_old(tmp_path, age):
    capture(str(tmp_path), NOON, 40)
    store = parts.open_store(str(tmp_path))
    with pytest.raises(Stop):
        compaction.compact(store, "dev", now=LATER, checkpoint=stop_at("written"))
    capture(str(tmp_path), NOON, 4, first=100)  # other parts: another digest, other names
    expected = ids(store)
    _age(store, NOON, age)
    (done,) = compaction.compact(store, "dev", now=LATER)
    old = age > compaction.ORPHAN_AGE
    assert (done.generation, done.parts, done.cleaned) == (1, 11, 1 if old else 0)
    merged = [n for n in names(store, NOON) if partformat.is_compacted(n)]
    assert len(merged) == (1 if old else 2)  # a young one stays, read by no reader
    assert ids(store) == expected


def test_a_run_slower_than_commit_within_leaves_its_objects_uncommitted(tmp_path, monkeypatch):
    capture(str(tmp_path), NOON, 8)
    store = parts.open_store(str(tmp_path))
    before = ids(store)
    monkeypatch.setattr(compaction, "COMMIT_WITHIN", timedelta(0))
    with pytest.raises(compaction.CompactionError, match="more than 0:00:00; not committed"):
        compaction.compact(store, "dev", now=LATER)
    assert not [n for n in names(store, NOON) if partformat.is_manifest(n)]
    assert ids(store) == before
    monkeypatch.undo()
    (done,) = compaction.compact(store, "dev", now=LATER)  # takes the same bytes as its own
    assert (done.generation, done.records, done.cleaned) == (1, 8, 0)
    assert ids(store) == before


def test_another_runs_different_object_under_our_name_is_not_taken(tmp_path):
    capture(str(tmp_path), NOON, 8)
    store = parts.open_store(str(tmp_path))
    with pytest.raises(Stop):
        compaction.compact(store, "dev", now=LATER, checkpoint=stop_at("written"))
    (merged,) = [n for n in names(store, NOON) if partformat.is_compacted(n)]
    path = store.root / partformat.hour_key("dev", NOON) / merged
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(compaction.CompactionError, match="exists: another compaction"):
        compaction.compact(store, "dev", now=LATER)


class ChangesMergedObjects(LocalStore):
    """A store whose writes of merged objects store `change(the bytes sent)`."""

    def put_new_stream(self, key, chunks, content_type=""):
        body = type(self).change(b"".join(chunks()))
        return super().put_new_stream(key, lambda: [body], content_type)


class LosesTheLastPart(ChangesMergedObjects):
    """Merged objects come out short (the last part missing)."""

    @staticmethod
    def change(body: bytes) -> bytes:
        return body[: body.rindex(b"\x1f\x8b\x08")]  # the last gzip member's start


class ChangesARecord(ChangesMergedObjects):
    """Merged objects have one record changed: the same number of records, valid gzip,
    one id different."""

    @staticmethod
    def change(body: bytes) -> bytes:
        lines = partformat.lines(body)
        lines[0] = lines[0].replace(b'"r0"', b'"r9"', 1)
        return partformat.encode(lines)


READ_BACK_CHANGED = r"compacted-0001-\w+-00\.jsonl\.gz read back is not what was written; nothing"


@pytest.mark.parametrize("store_class", [LosesTheLastPart, ChangesARecord])
def test_a_merged_object_not_read_back_as_written_is_never_committed(tmp_path, store_class):
    """Checked byte for byte, not by counting its records: a changed record keeps the
    count and would otherwise replace the parts that hold the right one."""
    capture(str(tmp_path), NOON, 8)
    with pytest.raises(compaction.CompactionError, match=READ_BACK_CHANGED):
        compaction.compact(store_class(tmp_path), "dev", now=LATER)
    store = parts.open_store(str(tmp_path))
    assert len(names(store, NOON)) == 2  # the parts only: the changed object was removed
    assert ids(store) == Counter({f"r{n}": 1 for n in range(8)})


def test_compact_command_names_what_it_did(tmp_path, capsys):
    capture(str(tmp_path), NOON, 8)
    assert main(["compact", "dev", "--url", str(tmp_path), "--hour", "2025-03-01T12"]) == 0
    assert "2 parts, 8 records -> 1 objects (generation 1)" in capsys.readouterr().out
    # Again: the hour has nothing to do, counted in the total without a line of its own.
    assert main(["compact", "dev", "--url", str(tmp_path), "--hour", "2025-03-01T12"]) == 0
    assert capsys.readouterr().out == (
        f"compacted 0 hours of dev under {tmp_path}: 0 records (1 hours had nothing to compact)\n"
    )


def test_part_keys_and_the_athena_projection_share_one_hour_layout(tmp_path):
    key = PartNamer()("dev", NOON.timestamp() + 59 * 60)
    hour, name = partformat.split_key(key)
    assert hour == NOON and key == f"{partformat.hour_key('dev', NOON)}/{name}"
    assert partformat.projection_format() == "yyyy/MM/dd/HH"
    assert datetime.strptime("2025/03/01/12", partformat.HOUR_STRFTIME).hour == 12


@pytest.mark.integration
def test_compaction_on_s3_deletes_the_parts_it_merged(aws):
    boto3.client("s3").create_bucket(Bucket="captures")
    url = "s3://captures/predictions"
    capture(url, NOON, 12, per_part=1)
    store = parts.open_store(url)
    before = ids(store)
    (done,) = compaction.compact(store, "dev", now=LATER)
    assert (done.parts, done.records, done.objects) == (12, 12, 1)
    keys = [
        item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket="captures")["Contents"]
    ]
    assert [key.rsplit("/", 1)[1][:15] for key in keys] == ["_compacted-0001", "compacted-0001-"]
    assert ids(store) == before


@pytest.mark.integration
def test_a_commit_whose_answer_was_lost_is_retried_and_its_412_read_as_ours(aws):
    """botocore retries a PUT whose answer did not arrive (a read timeout, a 5xx) though S3
    stored it; the retry's If-None-Match then gets 412 for the run's own manifest."""
    client = boto3.client("s3")
    client.create_bucket(Bucket="captures")
    capture("s3://captures/predictions", NOON, 12, per_part=1)
    lost = []

    def lose_the_manifests_answer(attempts, request_dict, response=None, **_):
        answered = response is not None and response[0].status_code == 200
        if attempts == 1 and answered and "/_compacted-" in request_dict["url"]:
            lost.append(request_dict["url"])
            return 0  # retry now, as after a lost answer
        return None

    client.meta.events.register_first("needs-retry.s3.PutObject", lose_the_manifests_answer)
    store = S3Store("captures", "predictions", client=client)
    before = ids(store)
    (done,) = compaction.compact(store, "dev", now=LATER)
    assert len(lost) == 1
    assert (done.generation, done.parts, done.records) == (1, 12, 12)
    assert ids(store) == before


def python_and_engine(store: parts.PartStore, since: datetime | None = None):
    from pipeline.predictions import engine, statistics

    labels = np.repeat(np.arange(10), 10)
    by_python = statistics.summarise(parts.read_records(store, "dev", since), "dev", labels)
    by_engine = statistics.summary(engine.aggregate_store(store, "dev", since), "dev", labels)
    return by_python, by_engine


def assert_same(by_python, by_engine) -> None:
    assert by_engine.total == by_python.total
    assert by_engine.per_class == by_python.per_class
    assert by_engine.per_hour == by_python.per_hour
    assert by_engine.per_model == by_python.per_model
    assert (by_engine.first, by_engine.last) == (by_python.first, by_python.last)
    assert by_engine.latency_ms == pytest.approx(by_python.latency_ms)
    assert by_engine.tvd == pytest.approx(by_python.tvd)
    assert by_engine.psi == pytest.approx(by_python.psi)
    assert by_engine.mean_top_score == pytest.approx(by_python.mean_top_score)
    assert [h.mean_top_score for h in by_engine.hours] == pytest.approx(
        [h.mean_top_score for h in by_python.hours]
    )


def test_the_engine_reads_mixed_compacted_and_uncompacted_hours_like_the_records(tmp_path):
    capture(str(tmp_path), NOON, 30)
    capture(str(tmp_path), NOON + timedelta(hours=1), 9, first=100)
    store = parts.open_store(str(tmp_path))
    compaction.compact(store, "dev", hour=NOON, now=LATER)
    capture(str(tmp_path), NOON, 5, first=200)  # late parts beside the merged object
    # A merged object no manifest commits (a run stopped before its commit) counts nowhere.
    stray = f"{partformat.hour_key('dev', NOON)}/{partformat.compacted_name(9, 'x', 0)}"
    (tmp_path / stray).write_bytes(
        (tmp_path / next(iter(store.list("dev/2025/03/01/12")))).read_bytes()
    )
    by_python, by_engine = python_and_engine(store)
    assert by_python.total == 44
    assert_same(by_python, by_engine)
    later = datetime(2025, 3, 1, 13, 0, 5, tzinfo=UTC)
    assert python_and_engine(store, later)[1].total == 5  # records at or after 13:00:05


def compacts_at_first_read(store: parts.PartStore, compacted: parts.PartStore) -> list[int]:
    """Make `store`'s first read of an object first compact its hour through `compacted`
    (another handle on the same store): the part the reader listed is gone when it comes
    to read it, as when the scheduled compaction commits between a report's listing and
    its reads. The number of compactions run."""
    import threading

    read, runs, first = store.read, [], threading.Lock()

    def racing(key: str) -> bytes | None:
        with first:  # the reader's threads: the first read compacts, the others wait
            if not runs:
                runs.append(len(compaction.compact(compacted, "dev", hour=NOON, now=LATER)))
        return read(key)

    store.read = racing
    return runs


def test_records_read_while_a_compaction_merges_their_hour_are_each_read_once(tmp_path):
    capture(str(tmp_path), NOON, 40)
    expected = ids(parts.open_store(str(tmp_path)))
    store = parts.open_store(str(tmp_path))
    runs = compacts_at_first_read(store, parts.open_store(str(tmp_path)))
    assert ids(store) == expected and sum(expected.values()) == 40
    assert runs == [1]


def duckdb_reads_after(monkeypatch, before_read) -> list[list]:
    """Run `before_read(files)` each time the engine hands an hour's files to DuckDB, just
    before DuckDB opens them (as a compaction committing then would). The files of each
    read, in order."""
    from pipeline.predictions import engine

    add, reads = engine._add, []

    def racing(connection, result, files, since):
        reads.append(list(files))
        before_read(files)
        return add(connection, result, files, since)

    monkeypatch.setattr(engine, "_add", racing)
    return reads


def test_the_engine_reads_an_hour_compacted_while_duckdb_opens_its_files(tmp_path, monkeypatch):
    """DuckDB reads a local store's files in place: the hour's parts deleted by a
    compaction as DuckDB opens them are found gone and the hour read from its merged
    object instead, each record once."""
    from pipeline.predictions import engine, statistics

    capture(str(tmp_path), NOON, 40)
    store = parts.open_store(str(tmp_path))
    before, _ = python_and_engine(store)

    def compact_once(files: list) -> None:
        if len(files) > 1:  # the parts, not yet the merged object
            compaction.compact(parts.open_store(str(tmp_path)), "dev", hour=NOON, now=LATER)

    reads = duckdb_reads_after(monkeypatch, compact_once)
    labels = np.repeat(np.arange(10), 10)
    after = statistics.summary(engine.aggregate_store(store, "dev"), "dev", labels)
    assert [len(files) for files in reads] == [10, 1]
    assert_same(before, after)


def test_an_hour_gone_again_after_its_second_listing_says_run_again(tmp_path, monkeypatch, capsys):
    capture(str(tmp_path), NOON, 8)
    reads = duckdb_reads_after(monkeypatch, lambda files: files[-1].unlink())
    assert main(["report", "dev", "--url", str(tmp_path), "--no-baseline"]) == 2
    error = capsys.readouterr().err
    assert "was listed but is gone (a compaction merged it meanwhile)" in error
    assert error.rstrip().endswith("run the command again")
    assert [len(files) for files in reads] == [2, 1]


@pytest.mark.integration
def test_the_engine_reads_an_s3_hour_a_compaction_merges_meanwhile(aws):
    boto3.client("s3").create_bucket(Bucket="captures")
    url = "s3://captures/predictions"
    capture(url, NOON, 12, per_part=1)
    capture(url, NOON + timedelta(hours=1), 4, first=100)
    before = python_and_engine(parts.open_store(url))
    store = parts.open_store(url)
    runs = compacts_at_first_read(store, parts.open_store(url))
    from pipeline.predictions import engine, statistics

    labels = np.repeat(np.arange(10), 10)
    after = statistics.summary(engine.aggregate_store(store, "dev"), "dev", labels)
    assert runs == [1] and after.total == 16
    assert_same(before[1], after)


@pytest.mark.integration
@pytest.mark.parametrize("lookahead", [1, 4])
def test_the_engine_reads_s3_like_the_records(aws, monkeypatch, lookahead):
    from pipeline.predictions import engine

    monkeypatch.setattr(engine, "LOOKAHEAD_HOURS", lookahead)
    boto3.client("s3").create_bucket(Bucket="captures")
    url = "s3://captures/predictions"
    capture(url, NOON, 12)
    capture(url, NOON + timedelta(hours=1), 12, first=100)
    capture(url, NOON + timedelta(hours=2), 12, first=200)
    store = parts.open_store(url)
    compaction.compact(store, "dev", hour=NOON, now=LATER)
    by_python, by_engine = python_and_engine(store)
    assert by_engine.total == 36 and len(by_engine.hours) == 3
    assert_same(by_python, by_engine)


def test_the_scheduled_command_runs_on_the_service_images_dependencies(tmp_path):
    """The compaction task runs the service image, which has the runtime dependencies
    only (pyproject's `dependencies`): the command imports none of the pipeline's."""
    import subprocess
    import sys

    capture(str(tmp_path), NOON, 8)
    code = (
        "import sys; from pipeline.predictions.compact import main; code = main(sys.argv[1:]); "
        "extra = {'duckdb', 'matplotlib', 'onnx', 'python_terraform'} & set(sys.modules); "
        "sys.exit(f'imported {extra}' if extra else code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "dev", "--url", str(tmp_path), "--hour", "2025-03-01T12"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "compacted 1 hours of dev" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-c", code, "dev", "--url", str(tmp_path), "--hour", "noon"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--hour 'noon' is not a UTC hour" in bad.stderr
