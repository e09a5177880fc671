"""Ready only once a model is attached; the core keeps no state between apps."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.errors import NotReady
from service.inference import Inference
from service.metrics import Metrics


def test_not_ready_until_a_model_is_attached(model):
    inference = Inference(Metrics())
    assert not inference.ready
    with pytest.raises(NotReady):
        inference.model  # noqa: B018
    inference.attach(model)
    assert inference.ready

    async def use_then_close():
        scores = await inference.scores(np.zeros((2, 1, 28, 28), "float32"))
        await inference.close()
        return scores

    assert asyncio.run(use_then_close()).shape == (2, 10)
    assert not inference.ready


def test_two_apps_do_not_share_metrics(settings, model):
    from falcon import testing

    from service.app import create_app

    first = testing.TestClient(create_app(settings, model=model))
    second = testing.TestClient(create_app(settings, model=model))
    first.simulate_post("/predict", json={"data": [0] * 784})
    assert 'route="/predict"' not in second.simulate_get("/metrics").text
