"""One stop timeout, split between uvicorn's drain and the capture flush, with a margin."""

from __future__ import annotations

import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from service.__main__ import server_options
from service.capture import build_recorder
from service.config import ConfigError, Settings
from service.shutdown import MARGIN_SECONDS, stop_budget


@pytest.mark.parametrize("stop_timeout", [10, 30, 120])
def test_drain_flush_and_margin_fill_the_stop_timeout_and_no_more(stop_timeout):
    budget = stop_budget(stop_timeout)
    assert budget.drain_seconds >= 1 and budget.flush_seconds >= 1
    assert budget.drain_seconds + budget.flush_seconds + MARGIN_SECONDS == stop_timeout


def test_fargates_longest_stop_timeout_gives_the_flush_most_of_it():
    budget = stop_budget(120)
    assert (budget.drain_seconds, budget.flush_seconds) == (28, 87)


def test_uvicorn_and_the_recorder_take_their_budgets_from_stop_timeout_seconds(tmp_path):
    settings = Settings.from_env(
        {
            "MODEL_URL": "m.onnx",
            "STOP_TIMEOUT_SECONDS": "120",
            "KEEP_ALIVE_TIMEOUT_SECONDS": "65",
            "PREDICTION_LOG_URL": str(tmp_path),
        }
    )
    options = server_options(settings, log_config={})
    assert options["timeout_graceful_shutdown"] == stop_budget(120).drain_seconds
    assert options["timeout_keep_alive"] == 65
    assert options["proxy_headers"] is False  # nothing reads the client address or scheme
    # a worker loading a large model answers its supervisor late; ECS's grace is 60 s
    assert options["timeout_worker_healthcheck"] == 60
    uvicorn.Config(app=None, **{**options, "log_config": None})  # options this uvicorn takes
    recorder = build_recorder(settings, CollectorRegistry())
    assert recorder.config.close_seconds == stop_budget(120).flush_seconds


def test_the_defaults_outlast_an_alb_and_fit_ecs_default_stop_timeout():
    settings = Settings.from_env({"MODEL_URL": "m.onnx"})
    assert settings.keep_alive_timeout_seconds > 60  # the ALB's default idle timeout
    assert settings.stop_timeout_seconds == 30  # ECS's default stopTimeout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STOP_TIMEOUT_SECONDS": "5"}, "STOP_TIMEOUT_SECONDS=5 leaves no time"),
        ({"STOP_TIMEOUT_SECONDS": "soon"}, "STOP_TIMEOUT_SECONDS='soon'"),
        ({"KEEP_ALIVE_TIMEOUT_SECONDS": "0"}, "KEEP_ALIVE_TIMEOUT_SECONDS must be at least 1"),
    ],
)
def test_bad_timeouts_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"MODEL_URL": "m.onnx", **env})
