"""The compute ceiling: raw onnxruntime in this process, no HTTP, on the server's core.

The session is configured as the service configures its own (one intra-op
thread, one inter-op thread, sequential, all graph optimisations). Batched
throughput needs a graph that takes batches: the Model Zoo's mnist-8 fixes its
batch dimension at 1 and flattens with a Reshape to `[1, 256]`, so batches run
through the pipeline's batch-capable copy (`pipeline.batchable`), the one a deploy
ships, made and proven equal to the original on the whole test set; where there
is none, the batch is looped.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.model import session_options


@dataclass(frozen=True)
class ComputeCeiling:
    """What onnxruntime alone does on one core with one intra-op thread."""

    single_seconds: float  # median time of one single-image run
    single_runs_per_second: float  # 1 / single_seconds
    single_runs_per_second_sustained: float  # runs / total time (includes other tenants' noise)
    batch_size: int
    batch_images_per_second: float  # batch_size / median batch time
    batch_images_per_second_sustained: float
    batch_method: str  # "batch-capable copy" or "loop over the original"
    copy_max_abs_diff: float | None  # copy vs original on the checked images (None: no copy)
    copy_note: str
    # The largest share of its time the server or load core lost to the hypervisor while
    # this was measured (bench.steal); None: not read.
    steal_share: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def session(path: Path | str, intra_op_threads: int = 1) -> ort.InferenceSession:
    """A session configured as the service configures its own (`service.model.session_options`)."""
    return ort.InferenceSession(
        str(path),
        sess_options=session_options(intra_op_threads),
        providers=["CPUExecutionProvider"],
    )


@contextlib.contextmanager
def pinned_to(core: int) -> Iterator[None]:
    """Run the calling thread on `core` only, then restore its affinity."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def one_at_a_time(sess: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: batch[i : i + 1]})[0] for i in range(len(batch))])


def _timed(function, *, min_seconds: float, max_runs: int) -> list[float]:
    """Per-call durations of `function`, for at least `min_seconds` (at most `max_runs` calls)."""
    durations: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(durations) < max_runs and (len(durations) < 5 or time.perf_counter() < deadline):
        started = time.perf_counter()
        function()
        durations.append(time.perf_counter() - started)
    return durations


class SingleImage:
    """raw onnxruntime's time for one image, in one session on `core`, read as often as
    asked: the ideal's t_inference, read just before each round of the single-image row
    (bench.run), so it and the HTTP runs it is combined with share the machine's state."""

    def __init__(self, model_path: Path, image: np.ndarray, core: int) -> None:
        self._session = session(model_path)
        self._feed = {self._session.get_inputs()[0].name: np.ascontiguousarray(image[:1])}
        self._core = core
        with pinned_to(core):
            for _ in range(50):  # warm: onnxruntime's first runs allocate
                self._session.run(None, self._feed)

    def durations(self, seconds: float, max_runs: int = 200_000) -> list[float]:
        """Seconds each run took, for at least `seconds` (at least 5 runs)."""
        with pinned_to(self._core):
            return _timed(
                lambda: self._session.run(None, self._feed),
                min_seconds=seconds,
                max_runs=max_runs,
            )

    def median_seconds(self, seconds: float) -> float:
        """The median single-image time over `seconds` of runs."""
        return statistics.median(self.durations(seconds))


def measure(
    model_path: Path,
    images: np.ndarray,
    *,
    batch_size: int,
    batched_path: Path | None,
    seconds: float,
    core: int = 0,
) -> ComputeCeiling:
    """Time single-image and batched inference of `images` (float32 [N,1,28,28]) on `core`."""
    original = session(model_path)
    batch = np.ascontiguousarray(images[:batch_size], dtype=np.float32)
    if len(batch) < batch_size:
        raise ValueError(f"the compute ceiling needs {batch_size} images, got {len(batch)}")
    reference = one_at_a_time(original, batch)

    copy = session(batched_path) if batched_path is not None else None
    copy_diff: float | None = None
    if copy is not None:
        batched = copy.run(None, {copy.get_inputs()[0].name: batch})[0]
        copy_diff = float(np.max(np.abs(batched - reference)))
        note = (
            "pipeline.batchable copy, proven equal on the whole test set; "
            f"largest difference here {copy_diff:.2g}"
        )
    else:
        note = "no batch-capable copy; looped over the original"

    single = SingleImage(model_path, batch, core).durations(seconds)
    with pinned_to(core):
        if copy is not None:
            copy_name = copy.get_inputs()[0].name
            copy.run(None, {copy_name: batch})
            batched_runs = _timed(
                lambda: copy.run(None, {copy_name: batch}), min_seconds=seconds, max_runs=10_000
            )
            method = "batch-capable copy"
        else:
            batched_runs = _timed(
                lambda: one_at_a_time(original, batch), min_seconds=seconds, max_runs=10_000
            )
            method = "loop over the original"
    return ComputeCeiling(
        single_seconds=statistics.median(single),
        single_runs_per_second=1 / statistics.median(single),
        single_runs_per_second_sustained=len(single) / sum(single),
        batch_size=batch_size,
        batch_images_per_second=batch_size / statistics.median(batched_runs),
        batch_images_per_second_sustained=batch_size * len(batched_runs) / sum(batched_runs),
        batch_method=method,
        copy_max_abs_diff=copy_diff,
        copy_note=note,
    )


def reference_classes(model_path: Path, images: np.ndarray) -> list[int]:
    """Classes of the original model, one image at a time: what every contender must answer."""
    scores = one_at_a_time(session(model_path), np.asarray(images, dtype=np.float32))
    return scores.argmax(axis=1).tolist()
