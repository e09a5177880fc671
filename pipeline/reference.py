"""The model reference (`model.toml`) and fetching what it names.

The reference pins the model and the test data by URL and sha256, says how
pixels are scaled before they reach the model, and holds the gate's
thresholds. Every field is checked on load: a missing or malformed one stops
with an `InvalidReference` naming it.

For one run, environment variables override it:
`MODEL_URL` (+ `MODEL_SHA256`), `TEST_DATA_URL` + `TEST_LABELS_URL`
(+ `TEST_DATA_SHA256`, `TEST_LABELS_SHA256`). An overriding URL without its
sha256 is fetched unpinned; its sha256 is computed and reported instead.

`FIXTURES_DIR`, when set, is a local mirror looked up by file name before the
network (remote URLs only); whatever the source, every pinned file is checked
against its sha256.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, replace
from dataclasses import fields as fields_of
from pathlib import Path
from typing import Any, NoReturn

from pipeline import REPO
from service.artifacts import ArtifactError, ChecksumMismatch, fetch, local_path

DEFAULT_REFERENCE = REPO / "model.toml"

TEST_FORMATS = ("idx", "csv")
URL_SCHEMES = ("", "file", "s3", "http", "https")

DEFAULT_INPUT_SCALE = 1.0

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class InvalidReference(ValueError):
    """The model reference (or an override) has a missing or malformed field."""


@dataclass(frozen=True)
class Artifact:
    url: str
    sha256: str | None

    @property
    def filename(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name


def threshold(default: float, *, low: float, high: float | None = None, **options: Any) -> Any:
    """A `[gate]` key of model.toml: its default and bounds; `shown` formats it for the
    gate report's thresholds line ("" leaves it out); `whole=True` wants an integer,
    `inclusive=True` accepts `low` itself."""
    return field(default=default, metadata={"low": low, "high": high, **options})


@dataclass(frozen=True)
class GateThresholds:
    """What a model must achieve on the test set to be shipped: model.toml's `[gate]`.

    Each field is one key, parsed and checked from its metadata, so a new gate check
    is its field here and its check in `pipeline.gate`."""

    min_accuracy: float = threshold(0.985, low=0.0, high=1.0, shown="accuracy >= {:.2%}")
    max_p99_latency_ms: float = threshold(5.0, low=0.0, shown="p99 <= {} ms")
    max_regression: float = threshold(
        0.005, low=0.0, high=1.0, inclusive=True, shown="drop vs champion <= {:.2%}"
    )
    latency_runs: int = threshold(1000, low=1, whole=True, shown="")

    def describe(self) -> str:
        """The thresholds as the gate report states them."""
        return ", ".join(
            f.metadata["shown"].format(getattr(self, f.name))
            for f in fields_of(self)
            if f.metadata["shown"]
        )


@dataclass(frozen=True)
class Reference:
    name: str
    model: Artifact
    test_images: Artifact
    test_labels: Artifact
    test_format: str = "idx"
    input_scale: float = DEFAULT_INPUT_SCALE
    gate: GateThresholds = field(default_factory=GateThresholds)
    source: str = "model.toml"
    # The class labels of the model's first output, by index (the service's MODEL_LABELS).
    labels: tuple[str, ...] = ()


def fixtures_dir() -> Path | None:
    """The FIXTURES_DIR mirror, resolved; None when it is not set.

    Raises InvalidReference when it is set to something that is not a directory: a mirror
    that is not there would otherwise send every lookup to the network without a word.
    """
    raw = os.environ.get("FIXTURES_DIR")
    if not raw:
        return None
    mirror = Path(raw).resolve()
    if not mirror.is_dir():
        raise InvalidReference(
            f"FIXTURES_DIR={raw} ({mirror}) is not a directory: point it at the directory "
            "holding the model and MNIST files (absolute, or relative to where the command "
            "runs), or unset it to download them from the URLs model.toml pins"
        )
    return mirror


def load_reference(
    path: Path = DEFAULT_REFERENCE, *, environ: Mapping[str, str] | None = None
) -> Reference:
    """Read and check `path`; pass `environ=os.environ` to honour the one-run overrides."""
    try:
        with path.open("rb") as handle:
            doc = tomllib.load(handle)
    except FileNotFoundError:
        raise InvalidReference(f"{path}: no such file; the model reference is model.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidReference(f"{path}: not valid TOML: {exc}") from None
    reference = parse_reference(doc, source=path.name)
    return apply_overrides(reference, environ) if environ is not None else reference


def parse_reference(doc: Mapping[str, Any], source: str = "model.toml") -> Reference:
    """Build a Reference from a parsed TOML document, checking every field."""
    fields = _Fields(doc, source)
    fields.only_tables("model", "test_data", "gate")
    fields.only_keys("model", "name", "url", "sha256", "input_scale", "labels")
    fields.only_keys(
        "test_data", "format", "images_url", "images_sha256", "labels_url", "labels_sha256"
    )
    fields.only_keys("gate", *(f.name for f in fields_of(GateThresholds)))

    model_url = fields.url("model", "url")
    images_url = fields.url("test_data", "images_url")
    labels_url = fields.url("test_data", "labels_url")
    test_format = fields.get("test_data", "format", infer_format(images_url))
    if test_format not in TEST_FORMATS:
        fields.fail("test_data", "format", f"must be one of {', '.join(TEST_FORMATS)}", test_format)
    return Reference(
        name=fields.text("model", "name", Path(urllib.parse.urlparse(model_url).path).stem),
        model=Artifact(model_url, fields.sha256("model", "sha256")),
        test_images=Artifact(images_url, fields.sha256("test_data", "images_sha256")),
        test_labels=Artifact(labels_url, fields.sha256("test_data", "labels_sha256")),
        test_format=test_format,
        input_scale=fields.number("model", "input_scale", DEFAULT_INPUT_SCALE, low=0.0),
        labels=fields.labels("model", "labels"),
        gate=GateThresholds(
            **{f.name: fields.threshold("gate", f) for f in fields_of(GateThresholds)}
        ),
        source=source,
    )


def apply_overrides(reference: Reference, environ: Mapping[str, str]) -> Reference:
    """The reference with MODEL_URL/MODEL_SHA256/TEST_DATA_URL/TEST_LABELS_URL applied."""
    env = {k: v.strip() for k, v in environ.items() if k in _OVERRIDES and v.strip()}
    if not env:
        return reference
    model = reference.model
    if "MODEL_URL" in env:
        model = Artifact(_check_url("MODEL_URL", env["MODEL_URL"]), None)
    if "MODEL_SHA256" in env:
        model = replace(model, sha256=_check_sha256("MODEL_SHA256", env["MODEL_SHA256"]))
    images, labels, test_format = (
        reference.test_images,
        reference.test_labels,
        reference.test_format,
    )
    if "TEST_DATA_URL" in env or "TEST_LABELS_URL" in env:
        for name in ("TEST_DATA_URL", "TEST_LABELS_URL"):
            if name not in env:
                raise InvalidReference(
                    f"{name} is not set: TEST_DATA_URL and TEST_LABELS_URL override the test "
                    "data together; set both"
                )
        images = Artifact(_check_url("TEST_DATA_URL", env["TEST_DATA_URL"]), None)
        labels = Artifact(_check_url("TEST_LABELS_URL", env["TEST_LABELS_URL"]), None)
        test_format = infer_format(images.url)
        if infer_format(labels.url) != test_format:
            raise InvalidReference(
                f"TEST_DATA_URL ({images.filename}) and TEST_LABELS_URL ({labels.filename}) are "
                "not the same format; use two .csv files or two IDX files"
            )
    elif "TEST_DATA_SHA256" in env or "TEST_LABELS_SHA256" in env:
        raise InvalidReference(
            "TEST_DATA_SHA256/TEST_LABELS_SHA256 are set without TEST_DATA_URL and "
            "TEST_LABELS_URL; they only pin overriding test data"
        )
    if "TEST_DATA_SHA256" in env:
        images = replace(images, sha256=_check_sha256("TEST_DATA_SHA256", env["TEST_DATA_SHA256"]))
    if "TEST_LABELS_SHA256" in env:
        labels = replace(
            labels, sha256=_check_sha256("TEST_LABELS_SHA256", env["TEST_LABELS_SHA256"])
        )
    overridden = ", ".join(sorted(env))
    return replace(
        reference,
        name=reference.name if model == reference.model else Path(model.filename).stem,
        model=model,
        test_images=images,
        test_labels=labels,
        test_format=test_format,
        source=f"{reference.source}, overridden from the environment by {overridden}",
    )


def infer_format(url: str) -> str:
    """`csv` for a .csv file name, else `idx` (gzip or plain)."""
    name = Path(urllib.parse.urlparse(url).path).name.lower()
    return "csv" if name.endswith((".csv", ".csv.gz")) else "idx"


def fetch_verified(artifact: Artifact, cache_dir: Path | None = None) -> tuple[Path, str]:
    """Local path of a verified copy of `artifact` and its sha256.

    FIXTURES_DIR stands in for the network: it serves remote URLs only, so a
    local path (a candidate model, say) is always read as named. A file the mirror lacks
    is downloaded; when a download fails, the ArtifactError also says how a local copy
    would serve: the mirror lacks the file, or no mirror is set.
    """
    mirror = fixtures_dir()
    source = artifact.url
    remote = local_path(artifact.url) is None
    if remote and mirror is not None and (mirror / artifact.filename).is_file():
        source = str(mirror / artifact.filename)
    try:
        return fetch(source, sha256=artifact.sha256, cache_dir=cache_dir)
    except ChecksumMismatch:
        raise
    except ArtifactError as exc:
        if not remote or source != artifact.url:
            raise
        if mirror is None:
            raise ArtifactError(
                f"{exc} (without the network, set FIXTURES_DIR to a directory holding "
                f"{artifact.filename})"
            ) from None
        raise ArtifactError(
            f"{exc} (FIXTURES_DIR={mirror} has no {artifact.filename}; put it there, or "
            "point FIXTURES_DIR at the directory that holds it)"
        ) from None


def fetch_artifact(artifact: Artifact, cache_dir: Path | None = None) -> Path:
    """Local path of a verified copy of `artifact`, from FIXTURES_DIR when it has one."""
    path, _ = fetch_verified(artifact, cache_dir)
    return path


# -- checking fields -----------------------------------------------------------

_OVERRIDES = (
    "MODEL_URL",
    "MODEL_SHA256",
    "TEST_DATA_URL",
    "TEST_LABELS_URL",
    "TEST_DATA_SHA256",
    "TEST_LABELS_SHA256",
)


def _check_url(name: str, url: str) -> str:
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in URL_SCHEMES or not Path(urllib.parse.urlparse(url).path).name:
        raise InvalidReference(
            f"{name}={url!r} is not a file reference; use a path, file://, s3:// or https:// "
            "URL ending in the file name"
        )
    return url


def _check_sha256(name: str, value: str) -> str:
    if not _SHA256.match(value.lower()):
        raise InvalidReference(f"{name}={value!r} is not a sha256 (64 hexadecimal characters)")
    return value.lower()


class _Fields:
    """Typed access to the reference's tables, failing with the field's full name."""

    def __init__(self, doc: Mapping[str, Any], source: str) -> None:
        self.doc = doc
        self.source = source

    def fail(self, table: str, key: str, problem: str, value: Any = None) -> NoReturn:
        shown = "" if value is None else f" (got {value!r})"
        raise InvalidReference(f"{self.source}: [{table}] {key} {problem}{shown}")

    def table(self, name: str) -> Mapping[str, Any]:
        value = self.doc.get(name, {})
        if not isinstance(value, Mapping):
            raise InvalidReference(f"{self.source}: [{name}] must be a table")
        return value

    def only_tables(self, *names: str) -> None:
        for name in self.doc:
            if name not in names:
                raise InvalidReference(
                    f"{self.source}: unknown table [{name}]; the tables are "
                    f"{', '.join(f'[{n}]' for n in names)}"
                )
        for name in names[:2]:
            if name not in self.doc:
                raise InvalidReference(f"{self.source}: the [{name}] table is missing")

    def only_keys(self, table: str, *keys: str) -> None:
        for key in self.table(table):
            if key not in keys:
                self.fail(table, key, f"is not a known field; the fields are {', '.join(keys)}")

    def get(self, table: str, key: str, default: Any) -> Any:
        return self.table(table).get(key, default)

    def required(self, table: str, key: str) -> Any:
        if key not in self.table(table):
            self.fail(table, key, "is missing")
        return self.table(table)[key]

    def text(self, table: str, key: str, default: str) -> str:
        value = self.get(table, key, default)
        if not isinstance(value, str) or not value.strip():
            self.fail(table, key, "must be a non-empty string", value)
        return value

    def url(self, table: str, key: str) -> str:
        value = self.required(table, key)
        if not isinstance(value, str):
            self.fail(table, key, "must be a string URL", value)
        try:
            return _check_url(key, value)
        except InvalidReference:
            self.fail(
                table,
                key,
                "must be a path, file://, s3:// or https:// URL ending in a file name",
                value,
            )

    def sha256(self, table: str, key: str) -> str:
        value = self.required(table, key)
        if not isinstance(value, str) or not _SHA256.match(value.lower()):
            self.fail(table, key, "must be a sha256 (64 hexadecimal characters)", value)
        return value.lower()

    def number(
        self,
        table: str,
        key: str,
        default: float,
        *,
        low: float,
        high: float | None = None,
        inclusive: bool = False,
    ) -> float:
        value = self.get(table, key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(table, key, "must be a number", value)
        above = value >= low if inclusive else value > low
        if not above or (high is not None and value > high):
            bound = f"at least {low}" if inclusive else f"greater than {low}"
            upper = f" and at most {high}" if high is not None else ""
            self.fail(table, key, f"must be {bound}{upper}", value)
        return float(value)

    def labels(self, table: str, key: str) -> tuple[str, ...]:
        value = self.get(table, key, [])
        if not isinstance(value, list) or not all(
            isinstance(label, str) and label.strip() for label in value
        ):
            self.fail(table, key, "must be a list of non-empty strings, one per class", value)
        return tuple(value)

    def threshold(self, table: str, declared: Field) -> float | int:
        """A key declared by `threshold(...)`, checked against its bounds."""
        bounds = declared.metadata
        if bounds.get("whole"):
            return self.integer(table, declared.name, declared.default, low=int(bounds["low"]))
        return self.number(
            table,
            declared.name,
            declared.default,
            low=bounds["low"],
            high=bounds["high"],
            inclusive=bounds.get("inclusive", False),
        )

    def integer(self, table: str, key: str, default: int, *, low: int) -> int:
        value = self.get(table, key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.fail(table, key, f"must be a whole number of at least {low}", value)
        return value
