"""The capture's part format: the one owner of its key layout, names and encoding.

The service's recorder and sink write parts in it, the pipeline's reader and
compactor read and merge them, the Glue table's partition projection is
derived from it and the benchmark counts records with it:

    <root>/<env>/YYYY/MM/DD/HH/<name>.jsonl.gz           a part (UTC hour of its records)
    <root>/<env>/YYYY/MM/DD/HH/compacted-<g>-<d>-<i>.jsonl.gz  an hour's merged records
    <root>/<env>/YYYY/MM/DD/HH/_compacted-<g>.json       the manifest that commits them

A part and a merged object are both gzip JSON Lines, one record per line (see
`service.capture.records` for the fields), so one reader and one Athena table
read both. The manifest's name starts with `_`: Athena treats objects whose names
start with an underscore or a dot as hidden and skips them when it reads a table's
location (Athena User Guide, "Considerations and limitations for SQL queries in
Amazon Athena").
"""

from __future__ import annotations

import gzip
import re
import time
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import orjson
from isal import isal_zlib

SUFFIX = ".jsonl.gz"
CONTENT_TYPE = "application/gzip"
# Parts are compressed with ISA-L (python-isal), whose gzip is standard RFC 1952 that any
# reader (zlib, gzip(1), DuckDB, Athena) inflates. Its level 1 took 0.84 us of CPU per
# single-image record against zlib level 1's 2.74, and wrote 88 against 96 bytes a record
# (measured on 10,000 records of /predict compressed in slices of 8 rows); capture
# runs on the service's own core, so its microseconds per record are the service's.
GZIP_LEVEL = 1
# ISA-L's level 1 gathers a deflate block's tokens (4 bytes each) in a buffer that zlib's
# memLevel sizes, and writes the whole block out (its Huffman codes built, its tokens
# coded) in the call that fills the buffer: that call is the longest a slice's compression
# takes. python-isal maps memLevel 2 and 3 to ISA-L's "small" buffer (64 KiB of tokens),
# 4 to 6 to "medium" (128 KiB) and its default 8 to "large" (256 KiB): with the small one
# a block every 4 to 5 slices of 64 single-image records, against every 17 to 18. On 4,096
# /predict records in slices of 64 (`taskset -c 0`, a warm loop), small against large: the
# longest slice's compression 81 against 137 us, a part's close 21 against 68 us, 36.0
# against 34.0 us a slice on average, 87.5 against 87.4 bytes a record, and 132 against
# 324 KiB of ISA-L's level buffer an open part.
GZIP_MEM_LEVEL = 3
# The UTC hour directory below an environment: strftime's form (the writer's) ...
HOUR_STRFTIME = "%Y/%m/%d/%H"
# ... and its translation to Java's DateTimeFormatter, which Athena's partition projection
# of type `date` uses ("Supported types for partition projection", Athena user guide).
_JAVA_FIELDS = {"%Y": "yyyy", "%m": "MM", "%d": "dd", "%H": "HH"}
_FIELD_DIGITS = {"%Y": 4, "%m": 2, "%d": 2, "%H": 2}
COMPACTED_PREFIX = "compacted-"
MANIFEST_PREFIX = "_compacted-"
MANIFEST_SUFFIX = ".json"
# Bytes handed to the inflater at a time: bounds the copy of what follows a member's end
# (see `decompress`).
_CHUNK = 1 << 16


def hour_prefix(env: str, timestamp: float) -> str:
    """`dev` + a POSIX time -> `dev/YYYY/MM/DD/HH` (its UTC hour)."""
    return f"{env}/{time.strftime(HOUR_STRFTIME, time.gmtime(timestamp))}"


def hour_key(env: str, hour: datetime) -> str:
    """`dev` + an hour -> `dev/YYYY/MM/DD/HH`."""
    return f"{env}/{hour.astimezone(UTC).strftime(HOUR_STRFTIME)}"


def projection_format() -> str:
    """The hour layout as a Java date pattern: `yyyy/MM/dd/HH` (the Glue table's
    `projection.hour.format`)."""
    pattern = HOUR_STRFTIME
    for field, java in _JAVA_FIELDS.items():
        pattern = pattern.replace(field, java)
    return pattern


def _hour_pattern() -> str:
    pattern = re.escape(HOUR_STRFTIME)
    for field, digits in _FIELD_DIGITS.items():
        pattern = pattern.replace(re.escape(field), rf"(\d{{{digits}}})")
    return pattern


_HOUR_OF_KEY = re.compile(rf"(?:^|/)({_hour_pattern()})/([^/]+)$")


def split_key(key: str) -> tuple[datetime, str] | None:
    """`.../YYYY/MM/DD/HH/<name>` -> (that UTC hour, name); None for any other key."""
    match = _HOUR_OF_KEY.search(key)
    if not match:
        return None
    hour = datetime.strptime(match.group(1), HOUR_STRFTIME).replace(tzinfo=UTC)
    return hour, match.group(match.lastindex or 0)


def is_data(name: str) -> bool:
    """A part or a merged object (records), by its name."""
    return name.endswith(SUFFIX) and not name.startswith((".", "_"))


def is_compacted(name: str) -> bool:
    return is_data(name) and name.startswith(COMPACTED_PREFIX)


def is_manifest(name: str) -> bool:
    return name.startswith(MANIFEST_PREFIX) and name.endswith(MANIFEST_SUFFIX)


def compacted_name(generation: int, digest: str, index: int) -> str:
    return f"{COMPACTED_PREFIX}{generation:04d}-{digest}-{index:02d}{SUFFIX}"


def manifest_name(generation: int) -> str:
    return f"{MANIFEST_PREFIX}{generation:04d}{MANIFEST_SUFFIX}"


def manifest_generation(name: str) -> int:
    return int(name[len(MANIFEST_PREFIX) : -len(MANIFEST_SUFFIX)])


def encode(lines: Iterable[bytes], level: int = GZIP_LEVEL) -> bytes:
    """JSON lines (each ending in a newline) -> one gzip member, deterministic (mtime 0)."""
    member = GzipMember(level)
    member.add(b"".join(lines))
    return member.finish()


class GzipMember:
    """One gzip member (RFC 1952, mtime 0) written a piece at a time: it inflates to the
    pieces joined. ISA-L's output depends on how the data is cut (zlib's does not), so the
    same pieces give the same bytes, not any cut of them.

    The recorder compresses a part in pieces between requests, so no single call holds
    the service's core for the whole part, and ISA-L's blocks are kept small
    (GZIP_MEM_LEVEL), so the call that writes one out is short too.
    """

    def __init__(self, level: int = GZIP_LEVEL) -> None:
        self._compressor = isal_zlib.compressobj(
            level, isal_zlib.DEFLATED, 16 + zlib.MAX_WBITS, GZIP_MEM_LEVEL
        )
        self._out: list[bytes] = []

    def add(self, data: bytes) -> int:
        """Compress `data` into the member; the compressed bytes this call wrote out (0 while
        ISA-L still gathers the block it goes in)."""
        written = self._compressor.compress(data)
        self._out.append(written)
        return len(written)

    def finish(self) -> bytes:
        """The whole member; the object is spent after this."""
        self._out.append(self._compressor.flush())
        return b"".join(self._out)


def merge(bodies: Iterable[bytes]) -> bytes:
    """Objects -> one object holding all their records: the members side by side.

    "A gzip file consists of a series of members" (RFC 1952, 2.2): readers of gzip
    (zlib, DuckDB, Athena's Hadoop codec) read every member, so merging needs no
    recompression. Measured on a task-hour of 3,600 parts: 0.02 s, where decompressing
    and compressing again at level 6 takes 3 s (and saves 11% of the bytes).
    """
    return b"".join(bodies)


def decompress(body: bytes) -> bytes:
    """The bytes of every gzip member of `body`, in time linear in its size.

    (`gzip.decompress` copies the rest of the object after each member: 30 s for a
    merged task-hour of 3,600 members against 0.5 s here.) Raises gzip.BadGzipFile (an
    OSError) when `body` is not gzip and EOFError when it is cut short.
    """
    return b"".join(_inflate(body))


def _inflate(body: bytes) -> Iterator[bytes]:
    """`decompress`, a piece at a time (each at most a few hundred kB).

    ISA-L inflates as zlib does (RFC 1952, the CRC-32 and length of every member checked)
    in about 0.55 of zlib's time: 12.3 against 22.3 ms a part of 10,000 records. Counting
    records is most of a compaction's CPU.
    """
    view = memoryview(body)
    offset = 0
    member = isal_zlib.decompressobj(wbits=31)
    started = False
    try:
        while offset < len(body):
            chunk = view[offset : offset + _CHUNK]
            yield member.decompress(chunk)
            started = True
            if member.eof:
                offset += len(chunk) - len(member.unused_data)
                member = isal_zlib.decompressobj(wbits=31)
                started = False
            else:
                offset += len(chunk)
    except isal_zlib.error as exc:
        raise gzip.BadGzipFile(f"not gzip: {exc}") from None
    if started:
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")


def lines(body: bytes) -> list[bytes]:
    """The non-empty JSON lines of an object, newline kept. Raises OSError/EOFError when
    it is not gzip."""
    return [line + b"\n" for line in decompress(body).split(b"\n") if line.strip()]


def count(body: bytes) -> int:
    """The number of records in an object: its lines, every record ending in a newline
    (`encode`), counted without holding the decompressed object in memory. Raises
    OSError/EOFError when it is not gzip."""
    return sum(piece.count(b"\n") for piece in _inflate(body))


def decode(body: bytes) -> list[dict]:
    """The records of an object. Raises OSError/EOFError (not gzip) or
    orjson.JSONDecodeError (a line that is not JSON)."""
    return [orjson.loads(line) for line in decompress(body).splitlines() if line.strip()]
