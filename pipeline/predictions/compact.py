"""Compaction: an hour's parts merged into a few large objects, exactly once.

Capture writes about one part per second per task (3,600 objects a task-hour);
reading them back costs one GET each. `compact` merges a finished hour's parts
into at most `MAX_OBJECTS` gzip JSON Lines objects in the same hour directory,
so one reader and one Athena table read both forms. The steps, for one hour, on
a listing of the hour taken when its turn comes:

1. finish an earlier run: delete the parts a manifest already covers, and the
   merged objects no manifest commits once they are `ORPHAN_AGE` old (a run that
   stopped before its commit: a run commits within `COMMIT_WITHIN` of its first
   write, so an uncommitted object that old belongs to no run still going);
2. read the parts no manifest covers, count their records and stream them into
   the merged objects (`compacted-<generation>-<digest>-<i>.jsonl.gz`: the parts'
   gzip members side by side, `partformat.merge`), each a conditional write; a part
   is held in memory only between its read and its upload, so memory is a few parts
   and one upload part (`service.store.STREAM_PART_BYTES`) whatever the hour's size;
3. read the merged objects back and check that each is the bytes written (SHA-256), so
   each holds exactly its parts' records (counted in step 2);
4. commit: write the manifest `_compacted-<generation>.json` (the parts it
   covers, the objects that now hold their records) with a conditional write
   (S3 `If-None-Match: *`), so two runs cannot both commit a generation;
5. delete the covered parts.

A conditional write that finds its key taken is ours when the object there is the
bytes we wrote (botocore retries a PUT whose answer was lost, and the retry finds the
first attempt's object; two runs over the same parts write the same bytes), and
another run's otherwise.

Readers (`store.data_keys`) read committed merged objects plus the parts no
manifest covers, so a crash between any two steps loses and duplicates nothing,
and running `compact` again finishes the job; two runs at once (the schedule and a
`nox -s compact`) lose nothing either. Parts that arrive after a compaction (a spool
draining late) are merged by the next run as a new generation. A reader lists an hour,
then reads what it listed, so step 5 can delete a part a reader is about to read: the
report's readers then list the hour again and read its merged objects
(`store.hour_results`), and an Athena query that fails for it is run again
(`athena.OBJECT_GONE`). Athena reads every data object of an hour, so its queries keep
one copy of each record, the merged one (`athena.deduplicated`).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pipeline.predictions.store import (
    READ_WORKERS,
    Hour,
    PartStore,
    PredictionLogError,
    group_hours,
    list_hours,
    part_entries,
    part_keys,
    read_manifest,
    read_part,
)
from service.capture import partformat
from service.store import Entry, StoreError

# One task-hour at ~100 records/s is ~37 MB of parts (gzip): one object. Ten busy tasks'
# hour stays at four objects of ~100 MB (a gzip object is read whole by one Athena
# reader, so a few objects per hour keep the scan parallel).
MAX_OBJECTS = 4
TARGET_OBJECT_BYTES = 128 * 1024 * 1024  # gzip bytes per merged object
# An hour is finished once its last second is this long past: the recorder uploads a
# part within seconds; later arrivals (a spool draining) become the next generation.
SETTLE = timedelta(minutes=10)
# A run commits within COMMIT_WITHIN of its first write (else it leaves its objects
# uncommitted), and a merged object no manifest commits is removed once ORPHAN_AGE old:
# the two hours between them cover another run's listing taken before the commit and
# the task's clock against S3's LastModified.
COMMIT_WITHIN = timedelta(hours=1)
ORPHAN_AGE = timedelta(hours=3)
# Parts read ahead of the one being uploaded, per worker: memory holds about this many
# parts per worker, however many the hour has.
READ_AHEAD = 2

Checkpoint = Callable[[str], None]


@dataclass(frozen=True)
class HourCompaction:
    """What `compact_hour` did: `records` from `parts` into `objects`, generation
    `generation` (0: nothing to merge); `cleaned` keys left by an earlier run removed."""

    hour: datetime
    generation: int
    parts: int
    records: int
    objects: int
    cleaned: int
    seconds: float


class CompactionError(PredictionLogError):
    """A merged object does not hold the parts' records; nothing was committed."""


def compact(
    store: PartStore,
    env: str,
    *,
    since: datetime | None = None,
    hour: datetime | None = None,
    now: datetime | None = None,
    workers: int = READ_WORKERS,
    checkpoint: Checkpoint | None = None,
) -> list[HourCompaction]:
    """Compact `hour`, or every finished hour since `since` (all hours when None)."""
    now = now or datetime.now(UTC)
    if hour is not None:
        keys = part_keys(store, partformat.hour_key(env, hour) + "/")
        hours = [h for h in group_hours(keys).values() if h.hour == hour]
    else:
        hours = [
            h
            for h in list_hours(store, env, since, now)
            if h.hour + timedelta(hours=1) + SETTLE <= now
        ]
    return [compact_hour(store, entry, workers=workers, checkpoint=checkpoint) for entry in hours]


def compact_hour(
    store: PartStore,
    hour: Hour,
    *,
    workers: int = READ_WORKERS,
    checkpoint: Checkpoint | None = None,
) -> HourCompaction:
    """Merge one hour's uncovered parts (steps 1 to 5 of the module's docstring), on a
    listing of `hour` taken now (`hour` names it; what it holds may be minutes old).

    `checkpoint(step)` is called after each step ("cleaned", "written", "verified",
    "committed"): the tests stop a run there. Raises CompactionError when a merged object
    read back is not the bytes written, when another run holds a key this one writes, or
    when the run took longer than COMMIT_WITHIN (nothing is committed then), and
    PredictionLogError/StoreError when the store fails.
    """
    started = time.perf_counter()
    step = checkpoint or (lambda _: None)
    hour, listed = _listed(store, hour)
    covered, leftovers = _finish_earlier_runs(store, hour, listed)
    step("cleaned")
    sources = sorted(name for name in hour.parts if name not in covered)
    generation = 1 + max(
        (partformat.manifest_generation(name) for name in hour.manifests), default=0
    )
    if not sources:
        return HourCompaction(hour.hour, 0, 0, 0, 0, leftovers, time.perf_counter() - started)
    writing = _Writing(store, hour, listed)
    records, objects = _write_merged(writing, sources, generation, workers, step)
    manifest = orjson.dumps(
        {
            "generation": generation,
            "hour": hour.hour.isoformat(),
            "records": records,
            "sources": sources,
            "objects": [{"name": name, "records": n} for name, n in objects],
        },
        option=orjson.OPT_INDENT_2,
    )
    writing.check_deadline()
    if not writing.put(partformat.manifest_name(generation), manifest, "application/json"):
        raise CompactionError(
            f"{store.url}/{hour.prefix}: another compaction committed generation {generation} "
            "first; run compact again"
        )
    step("committed")
    _delete(store, [hour.key(name) for name in sources])
    elapsed = time.perf_counter() - started
    return HourCompaction(
        hour.hour, generation, len(sources), records, len(objects), leftovers, elapsed
    )


def _listed(store: PartStore, hour: Hour) -> tuple[Hour, dict[str, Entry]]:
    """The hour as the store holds it now, and each of its objects' listing entry by name."""
    prefix = hour.prefix + "/"
    entries = [
        entry for entry in part_entries(store, prefix) if "/" not in entry.key[len(prefix) :]
    ]
    now = group_hours([entry.key for entry in entries]).get(hour.hour, Hour(hour.hour, hour.prefix))
    return now, {entry.key[len(prefix) :]: entry for entry in entries}


def _finish_earlier_runs(
    store: PartStore, hour: Hour, listed: dict[str, Entry]
) -> tuple[set[str], int]:
    """Step 1: delete the parts the hour's manifests cover and the merged objects none
    commits that are ORPHAN_AGE old. The covered parts' names, and how many objects were
    deleted."""
    manifests = [read_manifest(store, hour, name) for name in sorted(hour.manifests)]
    covered = {name for manifest in manifests for name in manifest["sources"]}
    committed = {entry["name"] for manifest in manifests for entry in manifest["objects"]}
    old = datetime.now(UTC) - ORPHAN_AGE
    leftovers = [name for name in hour.parts if name in covered]
    leftovers += [
        name for name in hour.compacted if name not in committed and listed[name].modified < old
    ]
    _delete(store, [hour.key(name) for name in leftovers])
    return covered, len(leftovers)


class _Writing:
    """One run's conditional writes to an hour, and the clock its commit is held to."""

    def __init__(self, store: PartStore, hour: Hour, listed: dict[str, Entry]) -> None:
        self.store, self.hour, self.listed = store, hour, listed
        # The oldest object this run's commit may name: its own writes, or an object
        # already there that it takes as its own (the same bytes), from when it was written.
        self.oldest = datetime.now(UTC)

    def put(self, name: str, body: bytes, content_type: str) -> bool:
        """Write `body` under `name` unless another run's object is there; True when the
        object there is now `body`."""
        if self.store.put_new(self.hour.key(name), body, content_type):
            return True
        return self._same(name, hashlib.sha256(body).digest())

    def put_stream(
        self, name: str, chunks: Callable[[], Iterable[bytes]], digest: Callable[[], bytes]
    ) -> bool:
        """`put` of a stream; `digest()` is the SHA-256 of the bytes `chunks()` gave."""
        if self.store.put_new_stream(self.hour.key(name), chunks, partformat.CONTENT_TYPE):
            return True
        return self._same(name, digest())

    def _same(self, name: str, digest: bytes) -> bool:
        if self.store.sha256(self.hour.key(name)) != digest:
            return False
        if name in self.listed:  # there before this run: the deadline runs from its write
            self.oldest = min(self.oldest, self.listed[name].modified)
        return True

    def check_deadline(self) -> None:
        """Refuse to commit once COMMIT_WITHIN has passed since the oldest object the
        manifest would name was written: a run's step 1 may remove it after ORPHAN_AGE."""
        took = datetime.now(UTC) - self.oldest
        if took > COMMIT_WITHIN:
            raise CompactionError(
                f"{self.store.url}/{self.hour.prefix}: its merged objects were written "
                f"{took.total_seconds():.0f} s ago, more than {COMMIT_WITHIN}; not committed "
                f"(a later run removes them after {ORPHAN_AGE}), run compact again"
            )


def _write_merged(
    writing: _Writing,
    sources: list[str],
    generation: int,
    workers: int,
    step: Checkpoint,
) -> tuple[int, list[tuple[str, int]]]:
    """Steps 2 and 3: the parts' record count, and each merged object's name and count.

    A merged object is its parts' gzip members side by side, so one read back byte for
    byte as written holds exactly their records: comparing SHA-256 digests checks that
    without inflating it again (inflating is most of a compaction's CPU: a peak-size hour's
    objects took as long to count as its parts).
    """
    store, hour = writing.store, writing.hour
    groups = _groups([writing.listed[name].size for name in sources])
    digest = hashlib.sha256("\n".join(sources).encode()).hexdigest()[:12]
    names = [partformat.compacted_name(generation, digest, i) for i in range(len(groups))]
    counts: list[int] = []
    written: list[bytes] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for name, group in zip(names, groups, strict=True):
            merged = _Merged(store, hour, [sources[i] for i in group], pool, workers * READ_AHEAD)
            if not writing.put_stream(name, merged.chunks, lambda m=merged: m.digest):
                raise CompactionError(
                    f"{store.url}/{hour.key(name)} exists: another compaction of this hour is "
                    "running; run compact again once it is done"
                )
            counts.append(merged.records)
            written.append(merged.digest)
        step("written")
        read_back = list(pool.map(lambda name: store.sha256(hour.key(name)), names))
    changed = [
        name for name, ours, theirs in zip(names, written, read_back, strict=True) if ours != theirs
    ]
    if changed:
        _delete(store, [hour.key(name) for name in names])
        raise CompactionError(
            f"{store.url}/{hour.key(changed[0])} read back is not what was written; nothing "
            "was committed, run compact again"
        )
    step("verified")
    return sum(counts), list(zip(names, counts, strict=True))


class _Merged:
    """One merged object's bytes, as a stream of its parts read on `pool` a few ahead;
    after a pass, its SHA-256 and record count."""

    def __init__(
        self, store: PartStore, hour: Hour, parts: list[str], pool: ThreadPoolExecutor, ahead: int
    ) -> None:
        self.store, self.hour, self.parts, self.pool, self.ahead = store, hour, parts, pool, ahead
        self.digest = b""
        self.records = 0

    def chunks(self) -> Iterator[bytes]:
        digest, records = hashlib.sha256(), 0
        for body, count in _ahead(self.pool, self._read, self.parts, self.ahead):
            digest.update(body)
            records += count
            yield body
        self.digest, self.records = digest.digest(), records

    def _read(self, name: str) -> tuple[bytes, int]:
        body = read_part(self.store, self.hour.key(name))
        return body, _count(self.store, self.hour, name, body)


def _ahead(
    pool: ThreadPoolExecutor, work: Callable[[str], Any], items: list[str], ahead: int
) -> Iterator[Any]:
    """`work(item)` for each item, in order, at most `ahead` started before their turn
    (`pool.map` starts them all and keeps every answer until it is taken)."""
    pending: deque[Future[Any]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _count(store: PartStore, hour: Hour, name: str, body: bytes) -> int:
    try:
        return partformat.count(body)
    except (OSError, EOFError) as exc:
        raise PredictionLogError(
            f"{store.url}/{hour.key(name)} is not a gzip JSON Lines part ({exc}); move it "
            "out of the capture prefix and run compact again"
        ) from None


def _groups(sizes: list[int]) -> list[list[int]]:
    """Indexes of the parts (in order) for each merged object: at most MAX_OBJECTS groups
    of about TARGET_OBJECT_BYTES (gzip bytes) each."""
    total = sum(sizes)
    count = max(1, min(MAX_OBJECTS, -(-total // TARGET_OBJECT_BYTES)))
    groups: list[list[int]] = [[] for _ in range(count)]
    filled = 0
    for index, size in enumerate(sizes):
        groups[min(count - 1, int(filled * count // max(total, 1)))].append(index)
        filled += size
    return [group for group in groups if group]


def _delete(store: PartStore, keys: list[str]) -> None:
    if not keys:
        return
    try:
        store.delete(keys)
    except StoreError as exc:
        raise PredictionLogError(
            f"deleting under {store.url}: {exc}; the task role needs s3:DeleteObject on the "
            "capture prefix (run compact again: it finishes the job)"
        ) from None


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.predictions.compact <env> --url s3://bucket/capture`: what the
    scheduled task runs (the service image has the runtime dependencies only)."""
    import argparse
    import sys

    from pipeline.predictions.store import open_store, parse_since

    parser = argparse.ArgumentParser(prog="python -m pipeline.predictions.compact")
    parser.add_argument("environment")
    parser.add_argument("--url", required=True, help="s3://bucket/prefix or a directory")
    parser.add_argument("--since", help="only hours since then: 2d, 6h or an ISO date/time")
    parser.add_argument("--hour", help="this UTC hour only, e.g. 2025-03-01T12")
    args = parser.parse_args(argv)
    try:
        store = open_store(args.url)
        done = compact(
            store,
            args.environment,
            since=parse_since(args.since) if args.since is not None else None,
            hour=parse_hour(args.hour) if args.hour is not None else None,
        )
    except (PredictionLogError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report(done, args.environment, store.url)))
    return 0


def parse_hour(text: str) -> datetime:
    """`2025-03-01T12` (or any ISO date/time in that hour) -> the UTC hour."""
    from pipeline.predictions.store import parse_since

    try:
        moment = parse_since(text if len(text) > 13 else f"{text}:00")
    except PredictionLogError:
        raise PredictionLogError(
            f"--hour {text!r} is not a UTC hour: write it as 2025-03-01T12"
        ) from None
    return moment.replace(minute=0, second=0, microsecond=0)


def report(done: list[HourCompaction], env: str, url: str) -> list[str]:
    """What a run prints: a line for each hour it changed, and a total that counts the
    hours with nothing to do (compacted already) without a line each (the schedule's
    `--since 2d` looks at 48 hours an hour)."""
    changed = [entry for entry in done if entry.generation or entry.cleaned]
    idle = len(done) - len(changed)
    merged = sum(entry.records for entry in changed)
    total = f"compacted {len(changed)} hours of {env} under {url}: {merged} records"
    return [describe(entry) for entry in changed] + [
        total + (f" ({idle} hours had nothing to compact)" if idle else "")
    ]


def describe(entry: HourCompaction) -> str:
    return (
        f"{entry.hour:%Y-%m-%d %H}:00  {entry.parts} parts, {entry.records} records -> "
        f"{entry.objects} objects (generation {entry.generation}), {entry.cleaned} "
        f"left-overs removed, {entry.seconds:.1f} s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
