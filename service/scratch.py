"""The directories the service writes, checked before anything is fetched or served.

With a read-only root filesystem (ECS `readonlyRootFilesystem`) only volumes are
writable, and a Fargate bind-mount volume is created owned by root, mode 0755, unless
the image declares a `VOLUME` at exactly its `containerPath` (ECS developer guide,
"Bind mounts"). A service running as a non-root user that cannot write its model cache
or its capture spool must say so at start, naming the setting to fix, instead of dying
in the middle of a download or dropping records when the sink first fails.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from service.config import ConfigError, Settings

FIX = (
    "point it at a directory this user can write; with a read-only root filesystem "
    "that is a volume the image declares (the image's MODEL_CACHE_DIR and TMPDIR are)"
)


def check_writable(settings: Settings) -> None:
    """Create and write-test each directory the settings name; ConfigError on the first
    that fails, naming its variable, the path, the OS error and the fix."""
    directories = [("MODEL_CACHE_DIR", settings.cache_dir)]
    if settings.capture_enabled:
        spool_variable = (
            "PREDICTION_LOG_SPOOL_DIR" if settings.prediction_log_spool_dir else "MODEL_CACHE_DIR"
        )
        directories.append((spool_variable, settings.spool_dir))
    if settings.tmp_dir is not None:
        directories.append(("TMPDIR", settings.tmp_dir))
    for variable, directory in directories:
        _check(variable, directory)
    try:
        tempfile.gettempdir()
    except FileNotFoundError as exc:  # no candidate (TMPDIR, /tmp, /var/tmp, cwd) is writable
        raise ConfigError(f"TMPDIR: {exc}; {FIX}") from None


def _check(variable: str, directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{variable}: cannot write {directory} ({exc.strerror or exc}); {FIX}"
        ) from None
