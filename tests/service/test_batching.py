"""Dynamic batching and the batch-capable copy: each caller gets its own rows, unchanged."""

from __future__ import annotations

import asyncio
import threading
import time
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


@pytest.mark.parametrize("alone", [False, True], ids=["queued", "alone"])
def test_a_failing_batch_fails_its_callers_only(model, images, alone):
    """The model's error reaches the callers of its batch, and the next request is
    served: through the drain task, and for a request alone on the server."""
    calls = []

    def run(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return model.run({"Input3": batch})

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(run, None if alone else executor, max_batch_size=1, max_delay=0)
            first = await asyncio.gather(
                batcher.submit(images[:1], alone=alone), return_exceptions=True
            )
            second = await batcher.submit(images[1:2], alone=alone)
            await batcher.close()
            return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(first[0], RuntimeError) and calls == [1, 1]
    np.testing.assert_array_equal(second["Plus214_Output_0"], model.scores(images[1:2]))


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
        batcher = Batcher(
            run, None, max_batch_size=16, max_delay=0, observe=lambda r, t: seen.append((r, t))
        )
        answers = []
        for rows in (images[:1], images[1:4]):
            asyncio.get_running_loop().call_soon(order.append, "next turn")
            answers.append((await batcher.submit(rows, alone=True))["Plus214_Output_0"])
            order.append("answered")
            await asyncio.sleep(0)
        await batcher.close()
        return answers

    started = time.perf_counter()
    answers = asyncio.run(scenario())
    elapsed = time.perf_counter() - started
    assert order == ["model", "answered", "next turn"] * 2
    assert [rows for rows, _ in seen] == [1, 3]
    assert all(0 <= seconds <= elapsed for _, seconds in seen)
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


# -- how the drain task forms batches, with a model that doubles its input -----------


class Doubler:
    """A model whose output is its input doubled: records each call's rows and thread."""

    def __init__(self, block: threading.Event | None = None) -> None:
        self.calls: list[np.ndarray] = []
        self.threads: list[str] = []
        self._block = block

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._block is not None:
            assert self._block.wait(10), "the test never released the model"
        self.calls.append(batch)
        self.threads.append(threading.current_thread().name)
        return {"y": batch * 2}


def _rows(count: int, width: int = 3, dtype=np.float32, start: int = 0) -> np.ndarray:
    return np.arange(start, start + count * width, dtype=dtype).reshape(count, width)


async def _answers(batcher: Batcher, requests: list[np.ndarray]) -> list[np.ndarray]:
    answers = await asyncio.gather(*(batcher.submit(rows) for rows in requests))
    return [answer["y"] for answer in answers]


def test_requests_fill_a_batch_to_exactly_its_size_counted_in_rows():
    """Requests of 2, 1 and 1 rows read in one turn with BATCH_MAX_SIZE 4 make one batch
    of exactly 4 rows; the next request starts the next batch; every caller gets its
    own rows back, and the inference time observed is a duration of this run."""
    model, seen = Doubler(), []
    requests = [_rows(2), _rows(1, start=6), _rows(1, start=9), _rows(3, start=12)]

    async def scenario():
        batcher = Batcher(
            model, None, max_batch_size=4, max_delay=0, observe=lambda r, s: seen.append((r, s))
        )
        answers = await _answers(batcher, requests)
        await batcher.close()
        return answers

    started = time.perf_counter()
    answers = asyncio.run(scenario())
    elapsed = time.perf_counter() - started
    assert [len(call) for call in model.calls] == [4, 3]
    assert [rows for rows, _ in seen] == [4, 3]
    assert all(0 <= seconds <= elapsed for _, seconds in seen)
    for rows, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, rows * 2)


def test_requests_of_other_item_shapes_or_dtypes_never_share_a_batch():
    model = Doubler()
    requests = [_rows(1), _rows(1, width=5), _rows(1, dtype=np.float64), _rows(1, start=3)]

    async def scenario():
        batcher = Batcher(model, None, max_batch_size=16, max_delay=0)
        answers = await _answers(batcher, requests)
        await batcher.close()
        return answers

    answers = asyncio.run(scenario())
    assert [call.shape for call in model.calls] == [(1, 3), (1, 5), (1, 3), (1, 3)]
    assert [call.dtype for call in model.calls][2] == np.float64
    for rows, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, rows * 2)


def test_a_batch_size_of_one_runs_every_request_alone():
    model = Doubler()

    async def scenario():
        batcher = Batcher(model, None, max_batch_size=1, max_delay=0)
        await _answers(batcher, [_rows(1), _rows(1), _rows(1)])
        await batcher.close()

    asyncio.run(scenario())
    assert [len(call) for call in model.calls] == [1, 1, 1]


def test_the_delay_is_waited_only_while_a_batch_is_not_full(monkeypatch):
    """BATCH_MAX_DELAY_MS: a batch short of its size waits the delay once for more rows;
    a full one runs at once, and so does each batch after it (rows counted as they are
    queued and taken)."""
    waits: list[float] = []
    sleep = asyncio.sleep

    async def recorded_sleep(seconds, *args):
        waits.append(seconds)
        await sleep(0)

    monkeypatch.setattr("service.batching.asyncio.sleep", recorded_sleep)
    model = Doubler()

    async def scenario():
        batcher = Batcher(model, None, max_batch_size=4, max_delay=0.5)
        await _answers(batcher, [_rows(1), _rows(3)])  # full: no wait
        full = list(waits)
        await _answers(batcher, [_rows(2), _rows(2)])  # full again, after a batch
        again = list(waits)
        await _answers(batcher, [_rows(3)])  # short of 4: one wait
        await batcher.close()
        return full, again, list(waits)

    full, again, short = asyncio.run(scenario())
    assert (full, again, short) == ([], [], [0.5])
    assert [len(call) for call in model.calls] == [4, 4, 3]


@pytest.mark.parametrize("in_thread", [True, False], ids=["thread", "event-loop"])
def test_a_model_runs_in_the_worker_thread_or_on_the_event_loops(in_thread):
    model = Doubler()

    async def scenario(executor):
        batcher = Batcher(model, executor, max_batch_size=4, max_delay=0)
        await _answers(batcher, [_rows(1)])
        await batcher.close()

    if in_thread:
        with ThreadPoolExecutor(1, thread_name_prefix="inference") as executor:
            asyncio.run(scenario(executor))
        assert model.threads[0].startswith("inference")
    else:
        asyncio.run(scenario(None))
        assert model.threads == [threading.current_thread().name]


def test_requests_that_come_while_a_batch_runs_in_the_thread_make_the_next_batch():
    """The drain task stays the same task through idle spells and busy ones: a request
    submitted while the worker thread runs a batch is answered by the next batch."""
    release = threading.Event()
    model = Doubler(block=release)

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=4, max_delay=0)
            release.set()
            await batcher.submit(_rows(1, start=30))  # then the drain task goes idle
            await asyncio.sleep(0)
            release.clear()
            first = asyncio.ensure_future(batcher.submit(_rows(1)))
            await asyncio.sleep(0.05)  # the first batch is in the thread, blocked
            drain = batcher._task
            second = asyncio.ensure_future(batcher.submit(_rows(2, start=3)))
            await asyncio.sleep(0)
            release.set()
            answers = [(await first)["y"], (await second)["y"]]
            await asyncio.sleep(0)  # the drain task goes idle
            third = (await batcher.submit(_rows(1, start=9)))["y"]
            same_task = batcher._task is drain
            await batcher.close()
            return answers, third, same_task

    (first, second), third, same_task = asyncio.run(scenario())
    np.testing.assert_array_equal(first, _rows(1) * 2)
    np.testing.assert_array_equal(second, _rows(2, start=3) * 2)
    np.testing.assert_array_equal(third, _rows(1, start=9) * 2)
    assert same_task
    assert [len(call) for call in model.calls] == [1, 1, 2, 1]


def test_closing_fails_queued_callers_with_not_ready_and_the_batcher_serves_again():
    """close() while a batch runs in the thread: its caller and the callers still queued
    get NotReady (503), none is left waiting; a request after it, on the same event
    loop, is served by a new drain task."""
    from service.errors import NotReady

    release = threading.Event()
    model = Doubler(block=release)

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=1, max_delay=0)
            running = asyncio.ensure_future(batcher.submit(_rows(1)))
            await asyncio.sleep(0.05)  # the first batch is in the thread, blocked
            queued = [asyncio.ensure_future(batcher.submit(_rows(1))) for _ in range(2)]
            await asyncio.sleep(0)
            await batcher.close()
            outcomes = await asyncio.wait_for(
                asyncio.gather(running, *queued, return_exceptions=True), 5
            )
            release.set()
            again = await asyncio.wait_for(batcher.submit(_rows(1, start=6)), 5)
            await batcher.close()
            return outcomes, again["y"]

    outcomes, again = asyncio.run(scenario())
    assert [type(outcome) for outcome in outcomes] == [NotReady, NotReady, NotReady]
    np.testing.assert_array_equal(again, _rows(1, start=6) * 2)


def test_a_drain_task_that_ended_is_started_again_on_the_same_loop():
    """Whatever ends the drain task (a cancellation from outside), the next request on
    the same event loop starts a new one and is answered."""
    model = Doubler()

    async def scenario():
        batcher = Batcher(model, None, max_batch_size=4, max_delay=0)
        await batcher.submit(_rows(1))
        ended = batcher._task
        ended.cancel()
        await asyncio.sleep(0)
        answer = await asyncio.wait_for(batcher.submit(_rows(1, start=3)), 5)
        restarted = batcher._task is not ended
        await batcher.close()
        return answer["y"], ended.cancelled(), restarted

    answer, cancelled, restarted = asyncio.run(scenario())
    np.testing.assert_array_equal(answer, _rows(1, start=3) * 2)
    assert cancelled and restarted
