"""The model gate: run the model on the whole test set and decide whether it may ship.

Four checks, each failing with a plain reason:

1. signature: the model fits the service: one file (no external data); one
   input, of a float type, whose item shape holds one test image (784 values
   for MNIST); a float output of scores shaped [batch, classes] with a class for
   every label (wherever the graph lists it: the service puts it first).
2. accuracy: top-1 accuracy on the whole test set >= `[gate] min_accuracy`.
3. latency: p99 of `[gate] latency_runs` single-image runs <= `max_p99_latency_ms`.
4. champion: accuracy no more than `max_regression` below the model deployed in
   the target environment (its `latest.json` deployment record), when there is one.

The model runs through `service.model.OnnxModel`, exactly as the service runs
it (one intra-op thread, rows looped for batch-fixed-at-1 models). Pixels are
multiplied by `[model] input_scale` first.

`pipeline.gating.gate_model` runs this gate as a step (download, gate, report)
for `python -m pipeline gate` and the deploys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets import Dataset, load_dataset, scaled_inputs
from pipeline.download import Downloaded
from pipeline.reference import GateThresholds, Reference
from service.classification import row_classes
from service.errors import ModelLoadError
from service.model import ModelInfo, OnnxModel

# Latency runs stop early past this many seconds, so a very slow model cannot stall CI.
LATENCY_TIME_LIMIT_SECONDS = 30.0
NO_CLASS = -1  # Evaluation.predicted for an image whose scores held a NaN
_CHUNK = 1000

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # passed | failed | skipped
    detail: str


@dataclass(frozen=True)
class Evaluation:
    """What the model did on the test set."""

    images: int
    accuracy: float
    confusion: np.ndarray  # [true class, predicted class] counts
    latency_ms: dict[str, float]  # p50, p90, p99, max
    latency_runs: int
    inference_seconds: float
    # The class predicted for each test image, [N] int64 (the smoke test's expectations):
    # NO_CLASS where the model's scores held a NaN (service.classification.row_classes).
    predicted: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)
    # Test images whose scores held a NaN: wrong in `accuracy`, in no column of `confusion`.
    without_class: int = 0

    @property
    def per_class(self) -> list[dict[str, float | int]]:
        """Precision and recall of each class (0 when the class is never predicted/present)."""
        rows = []
        for k in range(self.confusion.shape[0]):
            predicted = int(self.confusion[:, k].sum())
            support = int(self.confusion[k, :].sum())
            hits = int(self.confusion[k, k])
            rows.append(
                {
                    "class": k,
                    "precision": hits / predicted if predicted else 0.0,
                    "recall": hits / support if support else 0.0,
                    "support": support,
                }
            )
        return rows


@dataclass(frozen=True)
class Champion:
    """The model deployed in the target environment, from its `latest.json` record."""

    environment: str
    release_id: str
    model_sha256: str
    accuracy: float
    outcome: str

    @classmethod
    def from_record(cls, environment: str, record: dict[str, Any]) -> Champion:
        """From a deployment record that `pipeline.records.validate` accepted."""
        return cls(
            environment=environment,
            release_id=record["release_id"],
            model_sha256=record["model_sha256"],
            accuracy=float(record["gate"]["accuracy"]),
            outcome=record["outcome"],
        )


@dataclass(frozen=True)
class GateResult:
    model_name: str
    reference_source: str
    sha256s: dict[str, str]
    thresholds: GateThresholds
    input_scale: float
    checks: tuple[Check, ...]
    evaluation: Evaluation | None
    champion: Champion | None
    environment: str | None
    duration_seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    # What the later steps of a deploy take from the gate (not part of the report): the
    # model as the gate ran it, the test set, and its images as the model takes them
    # ([N, *item_shape], scaled by `input_scale`); None where the gate did not get there.
    model: OnnxModel | None = field(default=None, repr=False, compare=False)
    dataset: Dataset | None = field(default=None, repr=False, compare=False)
    inputs: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return all(check.status == PASSED for check in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if c.status == FAILED]

    def record(self) -> dict[str, Any]:
        """The `gate` object of a deployment record (see pipeline.records)."""
        evaluation = self.evaluation
        return {
            "passed": self.passed,
            "accuracy": evaluation.accuracy if evaluation else None,
            "p99_latency_ms": evaluation.latency_ms["p99"] if evaluation else None,
            "images": evaluation.images if evaluation else None,
            "test_images_sha256": self.sha256s["test_images"],
            "test_labels_sha256": self.sha256s["test_labels"],
        }


# -- the gate ----------------------------------------------------------------


def run_gate(
    reference: Reference,
    downloaded: Downloaded,
    *,
    champion: Champion | None = None,
    environment: str | None = None,
) -> GateResult:
    """Gate the downloaded model on the downloaded test set: every check, in order.

    The test set is decoded once, here; the result carries it, the model and the
    scaled inputs for the steps after the gate. A model that does not load or does
    not fit the service fails `signature` and skips the other checks. Raises
    DatasetError when a test-data file is malformed; a failed check is a result
    whose `passed` is False, not an exception.
    """
    started = time.perf_counter()
    dataset = load_dataset(downloaded.images_path, downloaded.labels_path, reference.test_format)
    info = ModelInfo(reference.name, downloaded.sha256s["model"][:12], downloaded.sha256s["model"])
    evaluation = inputs = None
    model, signature = load_and_check(downloaded.model_path, info, dataset, reference.labels)
    if signature.status == PASSED:
        try:
            inputs = model_inputs(model, dataset, reference.input_scale)
            evaluation = evaluate(model, dataset, inputs, reference.gate.latency_runs)
        except Exception as exc:  # onnxruntime raises several private types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            signature = Check(
                "signature", FAILED, f"the model failed on the test images: {first_line}"
            )
    if evaluation is not None:
        checks = (signature, *judge(evaluation, reference.gate, champion, downloaded, environment))
    else:
        skipped = "not run: the model does not fit the service"
        checks = (
            signature,
            *(Check(name, SKIPPED, skipped) for name in ("accuracy", "latency", "champion")),
        )
    return GateResult(
        model_name=reference.name,
        reference_source=reference.source,
        sha256s=dict(downloaded.sha256s),
        thresholds=reference.gate,
        input_scale=reference.input_scale,
        checks=checks,
        evaluation=evaluation,
        champion=champion,
        environment=environment,
        duration_seconds=time.perf_counter() - started,
        notes=tuple(_unpinned_notes(reference)),
        model=model,
        dataset=dataset,
        inputs=inputs,
    )


def load_and_check(
    path: Path, info: ModelInfo, dataset: Dataset, labels: tuple[str, ...] = ()
) -> tuple[OnnxModel | None, Check]:
    """Open the model at `path` as the service does and check its signature: the model
    (None when it does not load) and the signature Check. A model that keeps its weights
    in external data files fails: its sha256 covers the graph only, and a deploy ships
    (and the service fetches) the one file MODEL_URL names."""
    try:
        model = OnnxModel(path, info)
    except ModelLoadError as exc:
        return None, Check("signature", FAILED, str(exc))
    beside = external_data_files(path)
    if beside:
        return model, _misfit(
            f"{path.name} keeps its weights in {', '.join(beside)} beside it (ONNX external "
            "data), which its sha256 does not cover and a deploy does not ship: save the "
            "model as one file (torch.onnx.export(..., external_data=False), or "
            "onnx.save(onnx.load(path), new_path))"
        )
    return model, check_signature(model, dataset, labels=labels)


def external_data_files(path: Path) -> list[str]:
    """The files, beside the model at `path`, that hold tensors of its graph (ONNX
    external data: an initializer whose `data_location` is EXTERNAL), sorted; [] for a
    model kept in one file. The model must be valid ONNX (the service opened it)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    graph = onnx.load(str(path), load_external_data=False).graph
    return sorted(
        {
            entry.value
            for tensor in graph.initializer
            if uses_external_data(tensor)
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )


def check_signature(model: OnnxModel, dataset: Dataset, labels: tuple[str, ...] = ()) -> Check:
    """Does the model take one test image and answer a score per class?

    Passes when the model has one floating-point input whose item holds as many values
    as one test image (`dataset.images` is [N, H, W]), and a floating-point output
    (`service.model.scores_first` lists it first) shaped [batch, classes] with at
    least as many classes as the labels name (a dynamic
    class dimension passes), and `labels` (model.toml's, the service's MODEL_LABELS), if
    any, name one label per class, as the service asks before it starts. The failed
    Check's detail names the misfit.
    """
    image_size = int(np.prod(dataset.images.shape[1:]))
    image_shape = "x".join(map(str, dataset.images.shape[1:]))
    if len(model.inputs) != 1:
        names = ", ".join(spec.name for spec in model.inputs)
        return _misfit(
            f"the service feeds one input; the model has {len(model.inputs)} ({names})",
        )
    spec = model.input
    if spec.dtype.kind != "f":
        return _misfit(
            f"input {spec.name!r} is {spec.datatype}; the service "
            "feeds pixels as floating point (FP32)",
        )
    if spec.item_size != image_size:
        return _misfit(
            f"input {spec.name!r} takes items shaped "
            f"{list(spec.item_shape)} ({spec.item_size} values), but a test image is "
            f"{image_shape} ({image_size} values)",
        )
    output = model.outputs[0]  # the scores output, when there is one (scores_first)
    if output.dtype.kind != "f" or len(output.shape) != 2:
        found = ", ".join(f"{o.name!r} {o.datatype} {list(o.shape)}" for o in model.outputs)
        return _misfit(
            f"the service needs float scores shaped [batch, classes] (logits or "
            f"probabilities), and no output is shaped so: the model answers {found}; "
            "export the classifier's scores as such an output",
        )
    if 0 < output.shape[1] < dataset.classes:
        return _misfit(
            f"output {output.name!r} scores {output.shape[1]} "
            f"classes, but the test labels go up to {dataset.classes - 1}",
        )
    if labels and output.shape[1] > 0 and len(labels) != output.shape[1]:
        return _misfit(
            f"model.toml's labels name {len(labels)} classes, but output {output.name!r} "
            f"scores {output.shape[1]}: give one label per class, in class order (the "
            "service refuses to start otherwise)",
        )
    classes = output.shape[1] if output.shape[1] > 0 else "a dynamic number of"
    return Check(
        "signature",
        PASSED,
        f"input {spec.name!r} {spec.datatype} "
        f"{list(spec.shape)} takes a {image_shape} image; output {output.name!r} "
        f"scores {classes} classes",
    )


def _misfit(detail: str) -> Check:
    return Check("signature", FAILED, detail)


def evaluate(
    model: OnnxModel, dataset: Dataset, batch: np.ndarray, latency_runs: int
) -> Evaluation:
    """Top-1 predictions on every image of `batch` (the test set as the model takes it,
    [N, *item_shape]), then `latency_runs` timed single-image runs (milliseconds).

    Raises ModelLoadError when the scores are not shaped [N, classes].
    """
    model.warm_up()
    started = time.perf_counter()
    scores = np.concatenate(
        [model.scores(batch[i : i + _CHUNK]) for i in range(0, len(batch), _CHUNK)]
    )
    inference_seconds = time.perf_counter() - started
    if scores.ndim != 2 or scores.shape[0] != len(dataset) or scores.shape[1] < dataset.classes:
        raise ModelLoadError(
            f"the model answered scores shaped {list(scores.shape)} for {len(dataset)} images "
            f"of {dataset.classes} classes; expected [{len(dataset)}, {dataset.classes}]"
        )
    predicted = np.array(
        [NO_CLASS if label is None else label for label in row_classes(scores)], dtype=np.int64
    )
    classes = scores.shape[1]
    confusion = np.zeros((classes, classes), dtype=np.int64)
    answered = predicted != NO_CLASS
    np.add.at(confusion, (dataset.labels[answered], predicted[answered]), 1)
    latencies = time_single_images(model, batch, latency_runs)
    percentiles = np.percentile(latencies, [50, 90, 99])
    return Evaluation(
        images=len(dataset),
        accuracy=float((predicted == dataset.labels).mean()),
        confusion=confusion,
        latency_ms={
            "p50": float(percentiles[0]),
            "p90": float(percentiles[1]),
            "p99": float(percentiles[2]),
            "max": float(latencies.max()),
        },
        latency_runs=len(latencies),
        inference_seconds=inference_seconds,
        predicted=predicted,
        without_class=int((~answered).sum()),
    )


def model_inputs(model: OnnxModel, dataset: Dataset, input_scale: float) -> np.ndarray:
    """The test images as `model` takes them: see `pipeline.datasets.scaled_inputs`."""
    return scaled_inputs(dataset.images, model.input.dtype, model.input.item_shape, input_scale)


def time_single_images(model: OnnxModel, batch: np.ndarray, runs: int) -> np.ndarray:
    """Milliseconds of `runs` single-image calls, cycling through `batch` ([N, *item]);
    stops early past LATENCY_TIME_LIMIT_SECONDS, so a slow model cannot stall CI."""
    latencies = []
    deadline = time.perf_counter() + LATENCY_TIME_LIMIT_SECONDS
    for i in range(runs):
        row = batch[i % len(batch)][np.newaxis]
        start = time.perf_counter_ns()
        model.scores(row)
        latencies.append((time.perf_counter_ns() - start) / 1e6)
        if time.perf_counter() > deadline:
            break
    return np.asarray(latencies)


def judge(
    evaluation: Evaluation,
    thresholds: GateThresholds,
    champion: Champion | None,
    downloaded: Downloaded,
    environment: str | None = None,
) -> tuple[Check, Check, Check]:
    """The accuracy, latency and champion checks of an evaluation, in that order.

    accuracy: top-1 accuracy (0..1) at least `thresholds.min_accuracy`; latency: the p99
    of the single-image runs, in milliseconds, at most `thresholds.max_p99_latency_ms`;
    champion: see `compare_with_champion`. Thresholds come from model.toml's `[gate]`.
    """
    accuracy = evaluation.accuracy
    accuracy_check = Check(
        "accuracy",
        PASSED if accuracy >= thresholds.min_accuracy else FAILED,
        f"top-1 accuracy {accuracy:.2%} on {evaluation.images} images "
        f"({'at or above' if accuracy >= thresholds.min_accuracy else 'below'} the minimum "
        f"{thresholds.min_accuracy:.2%})",
    )
    p99 = evaluation.latency_ms["p99"]
    latency_check = Check(
        "latency",
        PASSED if p99 <= thresholds.max_p99_latency_ms else FAILED,
        f"p99 single-image latency {p99:.3f} ms over {evaluation.latency_runs} runs "
        f"({'within' if p99 <= thresholds.max_p99_latency_ms else 'over'} the budget of "
        f"{thresholds.max_p99_latency_ms} ms)",
    )
    return (
        accuracy_check,
        latency_check,
        compare_with_champion(
            accuracy, thresholds.max_regression, champion, downloaded.sha256s["model"], environment
        ),
    )


def compare_with_champion(
    accuracy: float,
    max_regression: float,
    champion: Champion | None,
    model_sha256: str,
    environment: str | None,
) -> Check:
    """The champion check: `accuracy` may fall at most `max_regression` (both 0..1) below
    the champion's; the champion's own model (same sha256) and no champion both pass."""
    if champion is None:
        where = f"nothing is deployed in {environment}" if environment else "no environment given"
        return Check("champion", PASSED, f"no champion to compare with ({where})")
    if champion.model_sha256 == model_sha256:
        return Check(
            "champion",
            PASSED,
            f"this is the model deployed in {champion.environment} "
            f"(release {champion.release_id}, same sha256): nothing to compare",
        )
    drop = champion.accuracy - accuracy
    # Round away float noise so a drop of exactly the margin passes.
    passed = round(drop, 9) <= max_regression
    if abs(drop) < 1e-9:
        direction = "equal to"
    else:
        direction = f"{drop:.2%} below" if drop > 0 else f"{-drop:.2%} above"
    return Check(
        "champion",
        PASSED if passed else FAILED,
        f"accuracy {accuracy:.2%} is {direction} the champion's {champion.accuracy:.2%} "
        f"({champion.environment} release {champion.release_id}); the allowed drop is "
        f"{max_regression:.2%}",
    )


def _unpinned_notes(reference: Reference) -> list[str]:
    return [
        f"{role} {artifact.url} is not pinned by a sha256 (an override without one); "
        "its sha256 above is what was fetched."
        for role, artifact in (
            ("model", reference.model),
            ("test images", reference.test_images),
            ("test labels", reference.test_labels),
        )
        if artifact.sha256 is None
    ]
