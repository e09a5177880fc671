"""The local spool: parts the sink could not take yet, kept on disk under their key.

`<spool_dir>/<env>/YYYY/MM/DD/HH/<part>.jsonl.gz`, written whole (temporary
file, fsync, link), so a crash never leaves half a part. Parts left by a
previous process are found again at start-up.
"""

from __future__ import annotations

from pathlib import Path

from service.capture.partformat import SUFFIX as PART_SUFFIX
from service.capture.records import Part
from service.capture.sinks import write_new_file


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, part: Part) -> Path:
        path = self.directory / part.key
        write_new_file(path, part.body)
        return path

    def scan(self) -> list[Path]:
        """Every spooled part, oldest first (part names start with their UTC time)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.rglob(f"*{PART_SUFFIX}"), key=lambda path: path.name)

    def key(self, path: Path) -> str:
        return path.relative_to(self.directory).as_posix()

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        # Tidy empty hour directories; another process may be filling them, so ignore failures.
        for parent in path.parents:
            if parent == self.directory:
                break
            try:
                parent.rmdir()
            except OSError:
                break
