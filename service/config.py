"""Service settings: read once from the environment into one frozen object.

Tests build their own `Settings(...)` instead of patching the environment.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.artifacts import default_cache_dir
from service.auth import TokenError, check_token, parse_tokens
from service.shutdown import MIN_STOP_TIMEOUT_SECONDS, StopBudget, stop_budget

# An environment name: `local`, or a Terraform root's (terraform/envs/<name>, whose
# variables.tf validates the same rule); it becomes an S3 prefix of the capture.
APP_ENV_PATTERN = re.compile(r"^[a-z][a-z0-9]{1,15}$")

DEFAULT_APP_ENV = "local"
DEFAULT_PREDICTION_LOG_URL = "predictions"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_INTRA_OP_THREADS = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_WORKERS = 1
DEFAULT_BATCH_MAX_SIZE = 64
DEFAULT_BATCH_MAX_DELAY_MS = 0.0
# Where the model runs (service.inference): on the event loop or in a worker thread.
OFFLOAD_POLICIES = ("auto", "always", "never")
DEFAULT_INFERENCE_OFFLOAD = "auto"
# Longer than an Application Load Balancer's default 60 s idle timeout, so the load
# balancer, never the service, closes an idle connection (ELB, "Application Load Balancer
# idle timeout"). The service module of terraform/ sets it from the load balancer's own.
DEFAULT_KEEP_ALIVE_TIMEOUT_SECONDS = 65
# ECS's default `stopTimeout`; the task definition sets both to the same value.
DEFAULT_STOP_TIMEOUT_SECONDS = 30
# How long a prediction route reads one request body for (service.http.BodyReader): 4 MiB
# (MAX_BODY_BYTES' default) within it needs 1.1 Mbit/s from the client.
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
# Below it a body is cut off by its network's round trips, and the reader's sweep (half
# the timeout, at most a second) would run ever more often.
MIN_BODY_TIMEOUT_SECONDS = 1.0
CAPTURE_OFF_URLS = ("", "off", "none")
SPOOL_SUBDIRECTORY = "prediction-spool"
# A model name or version is one segment of /v2/models/{name}/versions/{version}. Only
# RFC 3986's unreserved characters (section 2.3) reach the route unchanged from every
# client: '/' splits the segment, '%' '?' '#' and spaces are escaped or cut by some
# clients and not others, and '.' and '..' are dot-segments that clients remove
# (RFC 3986 section 5.2.4).
PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._~-]+$")
DOT_SEGMENTS = (".", "..")
# Longer waits hold every request back by that much: one second is already far beyond
# what batching gains for a model that answers in microseconds to milliseconds.
MAX_BATCH_MAX_DELAY_MS = 1000.0
MAX_PORT = 65535
# onnxruntime starts every intra-op thread with the session: beyond the cores a task has
# (16 vCPUs at most on Fargate) they only contend, and 100,000 of them never finish starting.
MAX_INTRA_OP_THREADS = 64


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it and the fix."""


@dataclass(frozen=True)
class Settings:
    model_url: str
    model_sha256: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    # Class labels of the model's first output, by index (Triton's classification
    # extension answers "<score>:<index>:<label>" with them).
    model_labels: tuple[str, ...] | None = None
    # A batch-capable copy of a batch-1 model, proven equal on the test set by the gate.
    model_batched_url: str | None = None
    model_batched_sha256: str | None = None
    app_env: str = DEFAULT_APP_ENV
    prediction_log_url: str = DEFAULT_PREDICTION_LOG_URL
    prediction_log_inputs: bool = False
    prediction_log_sample: float = 100.0
    # None: <cache_dir>/prediction-spool. Parts wait here while the sink is down.
    prediction_log_spool_dir: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    intra_op_threads: int = DEFAULT_INTRA_OP_THREADS
    batch_max_size: int = DEFAULT_BATCH_MAX_SIZE
    batch_max_delay_ms: float = DEFAULT_BATCH_MAX_DELAY_MS
    inference_offload: str = DEFAULT_INFERENCE_OFFLOAD
    cache_dir: Path = field(default_factory=default_cache_dir)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = DEFAULT_WORKERS
    keep_alive_timeout_seconds: int = DEFAULT_KEEP_ALIVE_TIMEOUT_SECONDS
    stop_timeout_seconds: int = DEFAULT_STOP_TIMEOUT_SECONDS
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS
    # Bearer tokens the model routes accept (service.auth); empty: no authentication.
    # Kept out of repr so that no log line or traceback shows them.
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    # prometheus-client's multiprocess directory (PROMETHEUS_MULTIPROC_DIR): set, every
    # worker's metrics are summed in each scrape (see service.metrics).
    metrics_dir: Path | None = None
    # TMPDIR as given: Python's tempfile quietly falls back to /tmp when it cannot write
    # there, so start-up checks it by name (service.scratch).
    tmp_dir: Path | None = None

    def __post_init__(self) -> None:
        for position, token in enumerate(self.api_tokens, start=1):
            try:
                check_token(token, position)
            except TokenError as exc:
                raise ConfigError(f"API_TOKENS: {exc}") from None
        _check_path_segment(
            "MODEL_NAME",
            self.served_model_name,
            "" if self.model_name else " (from the model file's name; set MODEL_NAME)",
        )
        if self.model_version is not None:
            _check_path_segment("MODEL_VERSION", self.model_version, "")
        if self.model_labels is not None and (
            not self.model_labels
            or not all(isinstance(label, str) and label.strip() for label in self.model_labels)
        ):
            raise ConfigError(
                "MODEL_LABELS must be a JSON array of non-empty strings, one per class of the "
                'model\'s first output, e.g. ["0", "1", "2"]'
            )
        if self.model_batched_sha256 and not self.model_batched_url:
            raise ConfigError(
                "MODEL_BATCHED_SHA256 is set without MODEL_BATCHED_URL: set both, or neither"
            )
        if not 1 <= self.port <= MAX_PORT:
            raise ConfigError(f"PORT={self.port} is not a TCP port: use 1 to {MAX_PORT}")
        if self.intra_op_threads > MAX_INTRA_OP_THREADS:
            raise ConfigError(
                f"INTRA_OP_THREADS={self.intra_op_threads} is more threads than any task has "
                f"cores: use 1 to {MAX_INTRA_OP_THREADS} (one per core of a worker), or 0 for "
                "onnxruntime's own choice"
            )
        if self.workers < 1:
            raise ConfigError(
                f"WEB_CONCURRENCY={self.workers} serves nothing: use at least 1 (one per vCPU)"
            )
        if self.max_body_bytes < 1:
            raise ConfigError(
                "MAX_BODY_BYTES must be at least one example's size; the default is "
                f"{DEFAULT_MAX_BODY_BYTES}"
            )
        if self.body_timeout_seconds < MIN_BODY_TIMEOUT_SECONDS:
            raise ConfigError(
                f"BODY_TIMEOUT_SECONDS={self.body_timeout_seconds:g} leaves a request body "
                f"no time to arrive over a network: use at least {MIN_BODY_TIMEOUT_SECONDS:g}; "
                f"the default is {DEFAULT_BODY_TIMEOUT_SECONDS:g}"
            )
        if self.batch_max_delay_ms > MAX_BATCH_MAX_DELAY_MS:
            raise ConfigError(
                f"BATCH_MAX_DELAY_MS={self.batch_max_delay_ms:g} would hold every request back "
                f"that long: use 0 to {MAX_BATCH_MAX_DELAY_MS:g}"
            )
        if not APP_ENV_PATTERN.match(self.app_env):
            raise ConfigError(
                f"APP_ENV={self.app_env!r} is not an environment name: use local, or the "
                "name of a terraform/envs/ root (2-16 lowercase letters and digits)"
            )
        for name, digest in (
            ("MODEL_SHA256", self.model_sha256),
            ("MODEL_BATCHED_SHA256", self.model_batched_sha256),
        ):
            if digest is not None and (
                len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower())
            ):
                raise ConfigError(f"{name} must be 64 hexadecimal characters (a sha256 digest)")
        if self.inference_offload not in OFFLOAD_POLICIES:
            raise ConfigError(
                f"INFERENCE_OFFLOAD={self.inference_offload!r} is not auto, always or never"
            )
        if self.batch_max_size < 1:
            raise ConfigError("BATCH_MAX_SIZE must be at least 1 (1 turns batching off)")
        if not 0 <= self.prediction_log_sample <= 100:
            raise ConfigError("PREDICTION_LOG_SAMPLE must be a percentage from 0 to 100")
        if self.keep_alive_timeout_seconds < 1:
            raise ConfigError(
                "KEEP_ALIVE_TIMEOUT_SECONDS must be at least 1, and longer than the idle "
                "timeout of any load balancer in front of the service"
            )
        if self.stop_timeout_seconds < MIN_STOP_TIMEOUT_SECONDS:
            raise ConfigError(
                f"STOP_TIMEOUT_SECONDS={self.stop_timeout_seconds} leaves no time to drain "
                f"requests and flush captured predictions: set it to the container's "
                f"stopTimeout, at least {MIN_STOP_TIMEOUT_SECONDS}"
            )
        scheme = (
            self.prediction_log_url.split("://", 1)[0] if "://" in self.prediction_log_url else ""
        )
        if scheme not in ("", "file", "s3") or self.prediction_log_url.rstrip("/") == "s3:":
            raise ConfigError(
                f"PREDICTION_LOG_URL={self.prediction_log_url!r} is not a local directory, "
                "file:// URL or s3://bucket/prefix (or off, to capture nothing)"
            )

    @property
    def served_model_name(self) -> str:
        """The name under /v2/models/{name}: MODEL_NAME, else the model file's stem."""
        if self.model_name:
            return self.model_name
        name = Path(urllib.parse.urlparse(self.model_url).path.rstrip("/")).name
        return name.removesuffix(".onnx") or "model"

    @property
    def capture_enabled(self) -> bool:
        return self.prediction_log_url.strip().lower() not in CAPTURE_OFF_URLS

    @property
    def spool_dir(self) -> Path:
        """Where capture parts wait while the sink is down."""
        return self.prediction_log_spool_dir or self.cache_dir / SPOOL_SUBDIRECTORY

    @property
    def stop_budget(self) -> StopBudget:
        """Seconds of drain and of capture flush after SIGTERM (see service.shutdown)."""
        return stop_budget(self.stop_timeout_seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings from `environ` (default: the process environment), read once.

        Every variable is in the README's Configuration table; sizes are bytes, times
        seconds unless the name says `_MS`. Raises ConfigError naming the variable and
        the fix for a missing MODEL_URL or a value the service could not serve with.
        """
        env = os.environ if environ is None else environ
        model_url = env.get("MODEL_URL", "").strip()
        if not model_url:
            raise ConfigError(
                "MODEL_URL is not set: set it to the model's path, file://, s3:// or https:// URL "
                "(or run `nox -s serve`, which serves the reference model)"
            )
        return cls(
            model_url=model_url,
            model_sha256=env.get("MODEL_SHA256") or None,
            model_name=env.get("MODEL_NAME") or None,
            model_version=env.get("MODEL_VERSION") or None,
            model_labels=_labels(env, "MODEL_LABELS"),
            model_batched_url=env.get("MODEL_BATCHED_URL") or None,
            model_batched_sha256=env.get("MODEL_BATCHED_SHA256") or None,
            app_env=env.get("APP_ENV", DEFAULT_APP_ENV),
            prediction_log_url=env.get("PREDICTION_LOG_URL", DEFAULT_PREDICTION_LOG_URL),
            prediction_log_inputs=_flag(env, "PREDICTION_LOG_INPUTS", False),
            prediction_log_sample=_number(env, "PREDICTION_LOG_SAMPLE", 100.0, float),
            prediction_log_spool_dir=Path(env["PREDICTION_LOG_SPOOL_DIR"])
            if env.get("PREDICTION_LOG_SPOOL_DIR")
            else None,
            max_body_bytes=_number(env, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int),
            intra_op_threads=_number(env, "INTRA_OP_THREADS", DEFAULT_INTRA_OP_THREADS, int),
            batch_max_size=_number(env, "BATCH_MAX_SIZE", DEFAULT_BATCH_MAX_SIZE, int),
            batch_max_delay_ms=_number(
                env, "BATCH_MAX_DELAY_MS", DEFAULT_BATCH_MAX_DELAY_MS, float
            ),
            inference_offload=env.get("INFERENCE_OFFLOAD", DEFAULT_INFERENCE_OFFLOAD),
            cache_dir=Path(env["MODEL_CACHE_DIR"])
            if env.get("MODEL_CACHE_DIR")
            else default_cache_dir(),
            host=env.get("HOST", DEFAULT_HOST),
            port=_number(env, "PORT", DEFAULT_PORT, int),
            workers=_number(env, "WEB_CONCURRENCY", DEFAULT_WORKERS, int),
            keep_alive_timeout_seconds=_number(
                env, "KEEP_ALIVE_TIMEOUT_SECONDS", DEFAULT_KEEP_ALIVE_TIMEOUT_SECONDS, int
            ),
            stop_timeout_seconds=_number(
                env, "STOP_TIMEOUT_SECONDS", DEFAULT_STOP_TIMEOUT_SECONDS, int
            ),
            body_timeout_seconds=_number(
                env, "BODY_TIMEOUT_SECONDS", DEFAULT_BODY_TIMEOUT_SECONDS, float
            ),
            api_tokens=_tokens(env),
            metrics_dir=Path(env["PROMETHEUS_MULTIPROC_DIR"])
            if env.get("PROMETHEUS_MULTIPROC_DIR")
            else None,
            tmp_dir=Path(env["TMPDIR"]) if env.get("TMPDIR") else None,
        )


def _tokens(env: Mapping[str, str]) -> tuple[str, ...]:
    """API_TOKENS, as ECS injects it from a secret: set but empty is a mistake, not "off"."""
    raw = env.get("API_TOKENS")
    if raw is None:
        return ()
    try:
        tokens = parse_tokens(raw)
    except TokenError as exc:
        raise ConfigError(f"API_TOKENS: {exc}") from None
    if not tokens:
        raise ConfigError(
            "API_TOKENS is set but holds no token: put one or more tokens in it (comma "
            "separated), or unset it to serve without authentication"
        )
    return tokens


def _check_path_segment(variable: str, value: str, origin: str) -> None:
    if PATH_SEGMENT.match(value) and value not in DOT_SEGMENTS:
        return
    raise ConfigError(
        f"{variable}={value!r}{origin} is not a single URL path segment, so "
        "/v2/models/{name}/versions/{version} could not reach it: use letters, digits, "
        "'-', '_', '.' and '~' only, and not '.' or '..' (e.g. "
        f"{re.sub(r'[^A-Za-z0-9._~-]+', '-', value).strip('.-') or 'model'!r})"
    )


def _labels(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        labels = json.loads(raw)
    except ValueError:
        labels = None
    if not isinstance(labels, list):
        raise ConfigError(
            f'{name} must be a JSON array of strings, one per class, e.g. ["0", "1", "2"]'
        )
    return tuple(labels)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")


def _number(env: Mapping[str, str], name: str, default, kind):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {kind.__name__}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number")
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value
