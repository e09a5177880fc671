"""Compaction: an hour's parts merged into a few large objects, exactly once.

Capture writes about one part per second per task (3,600 objects a task-hour);
reading them back costs one GET each. `compact` merges a finished hour's parts
into at most `MAX_OBJECTS` gzip JSON Lines objects in the same hour directory,
so one reader and one Athena table read both forms. The steps, for one hour:

1. finish an earlier run: delete the parts a manifest already covers, and the
   merged objects no manifest commits (a run that stopped before its commit);
2. read the parts no manifest covers, count their records, write the merged objects
   (`compacted-<generation>-<digest>-<i>.jsonl.gz`: the parts' gzip members side by
   side, `partformat.merge`) with a conditional write;
3. read the merged objects back and check that each is the bytes written (SHA-256), so
   each holds exactly its parts' records (counted in step 2);
4. commit: write the manifest `_compacted-<generation>.json` (the parts it
   covers, the objects that now hold their records) with a conditional write
   (S3 `If-None-Match: *`), so two runs cannot both commit a generation;
5. delete the covered parts.

Readers (`store.data_keys`) read committed merged objects plus the parts no
manifest covers, so a crash between any two steps loses and duplicates nothing,
and running `compact` again finishes the job. Parts that arrive after a
compaction (a spool draining late) are merged by the next run as a new
generation. Athena reads every data object of an hour: between steps 4 and 5
(seconds) it would count the hour's records twice, and merged objects of a run
that stopped before step 4 until the next run removes them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from pipeline.predictions.store import (
    READ_WORKERS,
    Hour,
    PartStore,
    PredictionLogError,
    group_hours,
    list_hours,
    part_keys,
    read_manifest,
    read_part,
)
from service.capture import partformat
from service.store import StoreError

# One task-hour at ~100 records/s is ~37 MB of parts (gzip): one object. Ten busy tasks'
# hour stays at four objects of ~100 MB (a gzip object is read whole by one Athena
# reader, so a few objects per hour keep the scan parallel).
MAX_OBJECTS = 4
TARGET_OBJECT_BYTES = 128 * 1024 * 1024  # gzip bytes per merged object
# An hour is finished once its last second is this long past: the recorder uploads a
# part within seconds; later arrivals (a spool draining) become the next generation.
SETTLE = timedelta(minutes=10)

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
    """Merge one hour's uncovered parts (steps 1 to 5 of the module's docstring).

    `checkpoint(step)` is called after each step ("cleaned", "written", "verified",
    "committed"): the tests stop a run there. Raises CompactionError when a merged object
    read back is not the bytes written (nothing is committed then) and
    PredictionLogError/StoreError when the store fails.
    """
    started = time.perf_counter()
    step = checkpoint or (lambda _: None)
    covered, leftovers = _finish_earlier_runs(store, hour)
    step("cleaned")
    sources = sorted(name for name in hour.parts if name not in covered)
    generation = 1 + max(
        (partformat.manifest_generation(name) for name in hour.manifests), default=0
    )
    if not sources:
        return HourCompaction(hour.hour, 0, 0, 0, 0, leftovers, time.perf_counter() - started)
    records, objects = _write_merged(store, hour, sources, generation, workers, step)
    manifest = {
        "generation": generation,
        "hour": hour.hour.isoformat(),
        "records": records,
        "sources": sources,
        "objects": [{"name": name, "records": n} for name, n in objects],
    }
    if not store.put_new(
        hour.key(partformat.manifest_name(generation)),
        orjson.dumps(manifest, option=orjson.OPT_INDENT_2),
        "application/json",
    ):
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


def _finish_earlier_runs(store: PartStore, hour: Hour) -> tuple[set[str], int]:
    """Step 1: delete the parts the hour's manifests cover and the merged objects none
    commits. The covered parts' names, and how many objects were deleted."""
    manifests = [read_manifest(store, hour, name) for name in sorted(hour.manifests)]
    covered = {name for manifest in manifests for name in manifest["sources"]}
    committed = {entry["name"] for manifest in manifests for entry in manifest["objects"]}
    leftovers = [name for name in hour.parts if name in covered]
    leftovers += [name for name in hour.compacted if name not in committed]
    _delete(store, [hour.key(name) for name in leftovers])
    return covered, len(leftovers)


def _write_merged(
    store: PartStore,
    hour: Hour,
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
    with ThreadPoolExecutor(max(1, workers)) as pool:
        bodies = list(pool.map(lambda name: read_part(store, hour.key(name)), sources))
        counts = list(
            pool.map(lambda pair: _count(store, hour, *pair), zip(sources, bodies, strict=True))
        )
        groups = _groups([len(body) for body in bodies])
        digest = hashlib.sha256("\n".join(sources).encode()).hexdigest()[:12]
        names = [partformat.compacted_name(generation, digest, i) for i in range(len(groups))]
        written = []
        for name, group in zip(names, groups, strict=True):
            merged = partformat.merge(bodies[i] for i in group)
            if not store.put_new(hour.key(name), merged, partformat.CONTENT_TYPE):
                raise CompactionError(
                    f"{store.url}/{hour.key(name)} exists: another compaction of this hour is "
                    "running; run compact again once it is done"
                )
            written.append(hashlib.sha256(merged).digest())
        step("written")
        read_back = list(
            pool.map(lambda name: hashlib.sha256(read_part(store, hour.key(name))).digest(), names)
        )
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
    objects = [
        (name, sum(counts[i] for i in group)) for name, group in zip(names, groups, strict=True)
    ]
    return sum(counts), objects


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
            since=parse_since(args.since) if args.since else None,
            hour=parse_hour(args.hour) if args.hour else None,
        )
    except (PredictionLogError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for entry in done:
        print(describe(entry))
    merged = sum(entry.records for entry in done)
    print(f"compacted {len(done)} hours of {args.environment} under {store.url}: {merged} records")
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


def describe(entry: HourCompaction) -> str:
    return (
        f"{entry.hour:%Y-%m-%d %H}:00  {entry.parts} parts, {entry.records} records -> "
        f"{entry.objects} objects (generation {entry.generation}), {entry.cleaned} "
        f"left-overs removed, {entry.seconds:.1f} s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
