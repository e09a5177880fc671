"""Freed heap memory given back to the system (service.memory)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from pipeline import REPO

# A heap of 80 MB in 2 kB blocks, one block in 64 kept: every page between two kept blocks is
# free, but glibc's free() gives back only the top of the heap, so the process stays large.
FRAGMENTED_HEAP = textwrap.dedent(
    """
    import json
    from pathlib import Path

    from service.memory import release_free_memory

    def resident_mb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    blocks = [bytearray(2048) for _ in range(40_000)]
    kept = blocks[::64]
    del blocks
    before = resident_mb()
    released = release_free_memory()
    print(json.dumps({"before": before, "after": resident_mb(), "released": released}))
    """
)


def test_the_free_pages_between_live_blocks_go_back_to_the_system():
    done = subprocess.run(
        [sys.executable, "-c", FRAGMENTED_HEAP],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    figures = json.loads(done.stdout)
    assert figures["released"] is True
    assert figures["before"] - figures["after"] > 40, figures
