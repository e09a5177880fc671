"""The one door to the model for request handlers: off the event loop, batched, timed."""

from __future__ import annotations

import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.batching import Batcher, Outputs
from service.config import (
    DEFAULT_BATCH_MAX_DELAY_MS,
    DEFAULT_BATCH_MAX_SIZE,
    DEFAULT_INFERENCE_OFFLOAD,
    OFFLOAD_POLICIES,
)
from service.errors import NotReady
from service.metrics import Metrics
from service.model import OnnxModel

# Handing a call to a thread and back costs tens of microseconds plus GIL hand-offs
# (measured: 165 us in process per /predict inline against 270 us with the hop, for
# mnist-8's 33 us inference). Below this, "auto" runs the model on the event loop.
INLINE_BELOW_SECONDS = 0.001
PROBE_RUNS = 20


def probe_latency(model: OnnxModel, runs: int = PROBE_RUNS) -> float:
    """Median seconds of one single-row inference."""
    row = np.zeros((1, *model.input.item_shape), dtype=model.input.dtype)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        model.scores(row)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


class Inference:
    """Runs the model off the event loop, in one worker thread (onnxruntime releases
    the GIL); single-input models go through the dynamic batcher.

    `offload` "auto" keeps a model whose single-row inference takes under 1 ms on the
    event loop instead: for such a model the thread hop costs more than the work, and
    the loop is blocked no longer than a JSON parse would block it. "always" and
    "never" force either way.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        max_batch_size: int = DEFAULT_BATCH_MAX_SIZE,
        max_delay: float = DEFAULT_BATCH_MAX_DELAY_MS / 1000,
        offload: str = DEFAULT_INFERENCE_OFFLOAD,
    ) -> None:
        if offload not in OFFLOAD_POLICIES:
            raise ValueError(f"offload must be one of {OFFLOAD_POLICIES}, not {offload!r}")
        self._offload = offload
        self.inline = False
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_delay = max_delay
        self._executor: ThreadPoolExecutor | None = None
        self._batcher: Batcher | None = None
        self._model: OnnxModel | None = None

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> OnnxModel:
        if self._model is None:
            raise NotReady()
        return self._model

    def attach(self, model: OnnxModel) -> None:
        """Serve `model` from now on; it must already be warmed up."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.inline = self._offload == "never" or (
            self._offload == "auto" and probe_latency(model) < INLINE_BELOW_SECONDS
        )
        if len(model.inputs) == 1:
            name = model.input.name
            self._batcher = Batcher(
                lambda batch: model.run({name: batch}),
                None if self.inline else self._executor,
                max_batch_size=self._max_batch_size,
                max_delay=self._max_delay,
                observe=self._observe,
            )
        self._model = model
        info = model.info
        self._metrics.model_info.labels(info.name, info.version, info.sha256).set(1)
        self._metrics.ready.set(1)

    async def scores(self, batch: np.ndarray, alone: bool = False) -> np.ndarray:
        """The first output for a batch shaped [N, *item_shape]; `alone` as for `run`."""
        model = self.model
        if self._batcher is not None:  # the hot path, without run()'s feeds dict and await
            outputs = await self._batcher.submit(batch, alone)
        else:
            outputs = await self.run({model.input.name: batch})
        return outputs[model.outputs[0].name]

    async def run(self, feeds: dict[str, np.ndarray], alone: bool = False) -> Outputs:
        """Every output of the model for `feeds` (input name -> [N, *item_shape] array of
        the input's dtype), by output name, each [N, ...]. Through the dynamic batcher
        when batching is on (service.batching), else one call, on the event loop or in
        the worker thread as the offload policy decided; `alone` (no other request in
        progress) lets the batcher run the rows at once (Batcher.submit). Raises NotReady
        (503) before the model is attached."""
        model = self.model
        if self._batcher is not None:
            return await self._batcher.submit(feeds[model.input.name], alone)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        outputs = await loop.run_in_executor(self._executor, model.run, feeds)
        self._observe(next(iter(feeds.values())).shape[0], time.perf_counter() - started)
        return outputs

    def _observe(self, rows: int, seconds: float) -> None:
        self._metrics.inference_latency.observe(seconds)
        self._metrics.batch_size.observe(rows)
        self._metrics.inferred_examples.inc(rows)

    async def close(self) -> None:
        """Stop serving: fail queued requests, wait for running inferences, free the thread."""
        self._model = None
        self._metrics.ready.set(0)
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
