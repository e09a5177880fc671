"""Runs the model off the event loop and keeps the ready state."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.errors import NotReady
from service.metrics import Metrics
from service.model import OnnxModel


class Inference:
    """The one door to the model for request handlers.

    onnxruntime releases the GIL, so one worker thread keeps the event loop
    free while the model runs on the core the process was given.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._executor: ThreadPoolExecutor | None = None
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
        self._model = model
        info = model.info
        self._metrics.model_info.labels(info.name, info.version, info.sha256).set(1)
        self._metrics.ready.set(1)

    async def scores(self, batch: np.ndarray) -> np.ndarray:
        model = self.model
        return await self._call(model.scores, batch, batch.shape[0])

    async def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.model
        rows = next(iter(feeds.values())).shape[0]
        return await self._call(model.run, feeds, rows)

    async def _call(self, function, argument, rows: int):
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        result = await loop.run_in_executor(self._executor, function, argument)
        self._metrics.inference_latency.observe(time.perf_counter() - started)
        self._metrics.inferred_examples.inc(rows)
        return result

    def close(self) -> None:
        """Stop serving: wait for running inferences, then release the thread."""
        self._model = None
        self._metrics.ready.set(0)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
