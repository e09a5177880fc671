"""Dynamic batching and the batch-capable copy: each caller gets its own rows, unchanged."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from falcon import testing

from pipeline.batchable import NotBatchable, batchable_copy, make_copy
from service.app import create_app
from service.batching import Batcher
from service.config import Settings
from service.loader import load_model
from service.model import ModelInfo, OnnxModel


@pytest.fixture(scope="module")
def images(mnist_test_set) -> np.ndarray:
    return mnist_test_set[0].astype(np.float32).reshape(-1, 1, 28, 28)


@pytest.fixture(scope="module")
def batched_copy(mnist8_path, images, tmp_path_factory):
    return batchable_copy(mnist8_path, images, tmp_path_factory.mktemp("copy") / "m.onnx")


def test_the_copy_agrees_with_the_original_on_the_test_set(batched_copy, images):
    assert batched_copy.images_checked == len(images) == 1000
    assert batched_copy.max_abs_difference == 0.0


def test_a_model_that_batches_already_is_not_copied(batched_copy, tmp_path):
    with pytest.raises(NotBatchable, match="not fixed at 1"):
        make_copy(batched_copy.path, tmp_path / "again.onnx")


def test_a_copy_that_answers_differently_is_refused(mnist8_path, reference_files, images, tmp_path):
    from pipeline.batchable import prove_equal

    other = tmp_path / "other.onnx"
    make_copy(mnist8_path, other)
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(other))
    for init in graph.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 4:
            weights = numpy_helper.to_array(init) * 0.5
            init.CopyFrom(numpy_helper.from_array(weights, init.name))
            break
    onnx.save(graph, str(other))
    with pytest.raises(NotBatchable, match="differ"):
        prove_equal(mnist8_path, other, images[:300])


async def _concurrently(batcher: Batcher, requests: list[np.ndarray]) -> list[np.ndarray]:
    results = await asyncio.gather(*(batcher.submit(rows) for rows in requests))
    await batcher.close()
    return [result["Plus214_Output_0"] for result in results]


@pytest.mark.parametrize("max_delay", [0.0, 0.002])
def test_concurrent_callers_each_get_their_own_rows(model, images, max_delay):
    sizes = [1, 3, 1, 7, 2, 1, 16, 5, 1, 1] * 5
    starts = np.cumsum([0, *sizes[:-1]])
    requests = [images[s : s + n] for s, n in zip(starts, sizes, strict=True)]
    seen: list[int] = []
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(
            lambda batch: model.run({"Input3": batch}),
            executor,
            max_batch_size=16,
            max_delay=max_delay,
            observe=lambda rows, _: seen.append(rows),
        )
        results = asyncio.run(_concurrently(batcher, requests))
    for rows, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result, model.scores(rows))
    assert sum(seen) == sum(sizes)
    assert max(seen) <= 16 and len(seen) < len(requests), "requests were merged"


@pytest.mark.parametrize("alone", [False, True], ids=["queued", "alone"])
@pytest.mark.parametrize("offload", [False, True], ids=["inline", "thread"])
def test_a_request_larger_than_a_batch_runs_in_calls_of_at_most_a_batch(
    mnist8_path, batched_copy, images, offload, alone
):
    """256 rows with max_batch_size 64: four model calls of 64, the answer the same scores
    in the same order as one call of 256 (what bounds the arena's memory), whether the
    drain task runs them or the request alone on the server does."""
    model = OnnxModel(mnist8_path, ModelInfo("m", "v", "0" * 64), batched_path=batched_copy.path)
    calls: list[int] = []

    def run(batch):
        calls.append(len(batch))
        return model.run({"Input3": batch})

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(run, executor if offload else None, max_batch_size=64, max_delay=0)
            answer = await batcher.submit(images[:256], alone=alone)
            await batcher.close()
            return answer["Plus214_Output_0"]

    scores = asyncio.run(scenario())
    assert calls == [64, 64, 64, 64]
    np.testing.assert_array_equal(scores, model.scores(images[:256]))


def test_a_failing_batch_fails_its_callers_only(model, images):
    calls = []

    def run(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return model.run({"Input3": batch})

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(run, executor, max_batch_size=1, max_delay=0)
            first = await asyncio.gather(batcher.submit(images[:1]), return_exceptions=True)
            second = await batcher.submit(images[1:2])
            await batcher.close()
            return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(first[0], RuntimeError)
    assert second["Plus214_Output_0"].shape == (1, 10)


def test_batched_copy_model_gives_identical_scores(mnist8_path, batched_copy, images):
    info = ModelInfo("mnist-8", "v", "0" * 64)
    plain = OnnxModel(mnist8_path, info)
    fast = OnnxModel(mnist8_path, info, batched_path=batched_copy.path)
    np.testing.assert_array_equal(fast.scores(images[:300]), plain.scores(images[:300]))


def test_responses_are_identical_with_batching_on_and_off(
    settings, mnist8_path, batched_copy, images
):
    variants = {
        "off": Settings(**{**settings.__dict__, "batch_max_size": 1}),
        "thread": Settings(**{**settings.__dict__, "inference_offload": "always"}),
        "on": settings,
        "on+copy": Settings(
            **{
                **settings.__dict__,
                "model_batched_url": str(batched_copy.path),
                "model_batched_sha256": batched_copy.sha256,
            }
        ),
    }
    body = {"data": images[:40].reshape(40, -1).tolist()}
    answers = {}
    for name, variant in variants.items():
        client = testing.TestClient(create_app(variant, model=load_model(variant)))
        answers[name] = client.simulate_post("/predict", json=body).json["predictions"]
    assert answers["off"] == answers["thread"] == answers["on"] == answers["on+copy"]


def test_auto_offload_keeps_a_fast_model_on_the_event_loop(model):
    from service.inference import Inference, probe_latency
    from service.metrics import Metrics

    assert probe_latency(model) < 0.001
    for policy, inline in (("auto", True), ("never", True), ("always", False)):
        inference = Inference(Metrics(), offload=policy)
        inference.attach(model)
        assert inference.inline is inline
        asyncio.run(inference.close())


def test_a_copy_of_another_model_is_refused(mnist8_path, tmp_path):
    from service.errors import ModelLoadError

    other = tmp_path / "other.onnx"
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(ModelLoadError, match="not a batch-capable copy"):
        OnnxModel(mnist8_path, ModelInfo("m", "v", "0" * 64), batched_path=Path(other))


@pytest.mark.parametrize("offload", [False, True], ids=["inline", "thread"])
def test_requests_one_at_a_time_each_wake_the_idle_batcher(model, images, offload):
    """A lone request after the batcher went idle is answered (the drain task sleeps
    between batches and each submit wakes it), in its own batch, with its own scores;
    and a batcher closed on one event loop serves again on the next."""
    seen: list[int] = []

    async def one_by_one(batcher: Batcher, count: int) -> list[np.ndarray]:
        answers = []
        for i in range(count):
            answers.append((await batcher.submit(images[i : i + 1]))["Plus214_Output_0"])
            await asyncio.sleep(0)  # the drain task goes idle again
        await batcher.close()
        return answers

    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(
            lambda batch: model.run({"Input3": batch}),
            executor if offload else None,
            max_batch_size=16,
            max_delay=0,
            observe=lambda rows, _: seen.append(rows),
        )
        first = asyncio.run(one_by_one(batcher, 20))
        second = asyncio.run(one_by_one(batcher, 5))
    for i, answer in enumerate(first + second):
        np.testing.assert_array_equal(answer, model.scores(images[i % 20 : i % 20 + 1]))
    assert seen == [1] * 25


def _lone_batcher(run, *, executor=None, max_delay=0.0, seen=None) -> Batcher:
    return Batcher(
        run,
        executor,
        max_batch_size=16,
        max_delay=max_delay,
        observe=lambda rows, _: seen.append(rows) if seen is not None else None,
    )


def test_a_lone_request_runs_at_once_without_waiting_a_loop_turn(model, images):
    """With no other request in progress, a model on the event loop runs the rows in the
    caller: before anything the loop was asked to do at its next turn, with the same
    scores, observed as a batch of its size."""
    order: list[str] = []
    seen: list[int] = []

    def run(batch):
        order.append("model")
        return model.run({"Input3": batch})

    async def scenario():
        batcher = _lone_batcher(run, seen=seen)
        answers = []
        for rows in (images[:1], images[1:4]):
            asyncio.get_running_loop().call_soon(order.append, "next turn")
            answers.append((await batcher.submit(rows, alone=True))["Plus214_Output_0"])
            order.append("answered")
            await asyncio.sleep(0)
        await batcher.close()
        return answers

    answers = asyncio.run(scenario())
    assert order == ["model", "answered", "next turn"] * 2
    assert seen == [1, 3]
    np.testing.assert_array_equal(answers[0], model.scores(images[:1]))
    np.testing.assert_array_equal(answers[1], model.scores(images[1:4]))


def test_a_lone_request_waits_its_turn_behind_queued_rows(model, images):
    """Rows queued before it (a request the server counted as not alone) go first, and
    the lone request joins their batch."""
    seen: list[int] = []

    async def scenario():
        batcher = _lone_batcher(lambda batch: model.run({"Input3": batch}), seen=seen)
        queued = asyncio.ensure_future(batcher.submit(images[:2]))
        await asyncio.sleep(0)  # the queued request submits; the drain task is woken
        lone = await batcher.submit(images[2:3], alone=True)
        first = await queued
        await batcher.close()
        return first["Plus214_Output_0"], lone["Plus214_Output_0"]

    first, lone = asyncio.run(scenario())
    assert seen == [3]
    np.testing.assert_array_equal(first, model.scores(images[:2]))
    np.testing.assert_array_equal(lone, model.scores(images[2:3]))


@pytest.mark.parametrize("mode", ["thread", "delay"])
def test_a_lone_request_is_batched_as_ever_in_a_thread_or_with_a_delay(model, images, mode):
    """A model in the worker thread, or a delay set to gather rows (BATCH_MAX_DELAY_MS),
    keeps the drain task's way: the model runs at a later turn, not in the caller."""
    order: list[str] = []

    def run(batch):
        order.append("model")
        return model.run({"Input3": batch})

    async def scenario(executor):
        batcher = _lone_batcher(run, executor=executor, max_delay=0.001 if mode == "delay" else 0.0)
        asyncio.get_running_loop().call_soon(order.append, "next turn")
        answer = await batcher.submit(images[:1], alone=True)
        await batcher.close()
        return answer["Plus214_Output_0"]

    with ThreadPoolExecutor(1) as executor:
        answer = asyncio.run(scenario(executor if mode == "thread" else None))
    assert order == ["next turn", "model"]
    np.testing.assert_array_equal(answer, model.scores(images[:1]))


def test_a_lone_request_whose_model_fails_gets_the_error_and_the_next_is_served(model, images):
    calls: list[int] = []

    def run(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return model.run({"Input3": batch})

    async def scenario():
        batcher = _lone_batcher(run)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(images[:1], alone=True)
        answer = await batcher.submit(images[1:2], alone=True)
        await batcher.close()
        return answer["Plus214_Output_0"]

    np.testing.assert_array_equal(asyncio.run(scenario()), model.scores(images[1:2]))
    assert calls == [1, 1]
