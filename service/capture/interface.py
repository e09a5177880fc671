"""What the request path hands each answered prediction to, and the recorder for "off"."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from service.model import ModelInfo


class PredictionRecorder(Protocol):
    """Where each answered prediction goes."""

    def record(
        self,
        *,
        route: str,
        request_id: str | None,
        model: ModelInfo,
        scores: np.ndarray,
        inputs: np.ndarray | None,
        latency_seconds: float,
        in_flight: int = 0,
    ) -> None:
        """Take one answered request; called on the event loop, so it must not block.

        `route` is "/predict" or "/v2/infer"; `scores` the model's first output for the
        whole request, [batch, classes]; `inputs` the request's input, [batch,
        *item_shape], or None when it is not kept; `latency_seconds` from the request's
        arrival to its answer; `in_flight` the requests the server had in progress as
        the model inputs were ready, this one included, 0 when the server does not say
        (service.http.requests_in_flight). One record per row of `scores`.
        """

    async def start(self) -> None:
        """Called once the model is loaded, before the first request."""

    async def close(self) -> None:
        """Called at shutdown: flush what is held, within the stop budget."""


class NullRecorder:
    """The recorder when capture is off (PREDICTION_LOG_URL=off): records nothing."""

    def record(self, **prediction: object) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
