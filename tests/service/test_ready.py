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


def test_the_ready_route_answers_503_until_start_up_has_loaded_the_model(settings, model):
    """Requests that arrive before the lifespan start-up (which loads the model, none being
    given) ends: readiness refuses, liveness answers; after start-up, ready is 200."""
    from falcon import testing

    from service.app import create_app

    app = create_app(settings)

    async def get(path: str) -> tuple[int, bytes]:
        """One request straight to the ASGI app, no lifespan event sent first."""
        collector = testing.ASGIResponseEventCollector()
        scope = testing.create_scope(path=path, method="GET")
        await app(scope, testing.ASGIRequestEventEmitter(), collector)
        return collector.status, b"".join(collector.body_chunks)

    assert asyncio.run(get("/v2/health/live"))[0] == 200
    for path in ("/v2/health/ready", "/v2/models/mnist-8/ready"):
        status, body = asyncio.run(get(path))
        assert status == 503 and b'"error"' in body

    async def after_start_up() -> tuple[int, int]:
        async with testing.ASGIConductor(app) as conductor:
            ready = await conductor.simulate_get("/v2/health/ready")
            model_ready = await conductor.simulate_get("/v2/models/mnist-8/ready")
            return ready.status_code, model_ready.status_code

    assert asyncio.run(after_start_up()) == (200, 200)


def test_start_up_moves_what_it_made_out_of_the_collectors_reach(settings, model):
    """After start-up the heap the process will keep (model, app, libraries) is frozen,
    so a full garbage collection under load does not walk it (capture's p99)."""
    import gc

    from falcon import testing

    from service.app import create_app

    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    async def started() -> int:
        async with testing.ASGIConductor(create_app(settings, model=model)) as conductor:
            assert (await conductor.simulate_get("/v2/health/ready")).status_code == 200
            return gc.get_freeze_count()

    try:
        assert asyncio.run(started()) > 1000
    finally:
        gc.unfreeze()
